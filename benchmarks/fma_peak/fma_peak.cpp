// fma_peak THREADS: this CPU's fp32 FMA throughput, the physics bound no direct-arithmetic kernel can pass.
// Each thread runs 12 independent FMA chains on the widest vectors the compiler was told this CPU has
// (-march=native: AVX-512, else AVX2/FMA, else SSE multiply-add), enough chains to cover the FMA latency
// on two pipes; prints {"threads": N, "gflops": G, "vector_bits": B} (best of 5 runs).
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {
constexpr long kIters = 50'000'000;

#if defined(__AVX512F__)
using V = __m512;
constexpr int kLanes = 16;
inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V set1(float x) { return _mm512_set1_ps(x); }
inline float sum(V v) { return _mm512_reduce_add_ps(v); }
#elif defined(__FMA__)
using V = __m256;
constexpr int kLanes = 8;
inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V set1(float x) { return _mm256_set1_ps(x); }
inline float sum(V v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  float s = 0;
  for (float x : t) s += x;
  return s;
}
#else
#error "needs FMA (x86-64 with -march=native on an FMA CPU)"
#endif

float run(float seed) {
  V a = set1(0.999999f), b = set1(1e-7f);
  V c0 = set1(seed), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0, c10 = c0, c11 = c0;
  for (long i = 0; i < kIters; ++i) {
    c0 = fma(c0, a, b); c1 = fma(c1, a, b); c2 = fma(c2, a, b); c3 = fma(c3, a, b);
    c4 = fma(c4, a, b); c5 = fma(c5, a, b); c6 = fma(c6, a, b); c7 = fma(c7, a, b);
    c8 = fma(c8, a, b); c9 = fma(c9, a, b); c10 = fma(c10, a, b); c11 = fma(c11, a, b);
  }
  return sum(c0) + sum(c1) + sum(c2) + sum(c3) + sum(c4) + sum(c5) + sum(c6) + sum(c7) + sum(c8) + sum(c9) +
         sum(c10) + sum(c11);
}
}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<std::thread> pool;
    std::vector<float> out(threads);
    auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { out[t] = run(1.0f + t); });
    for (auto& th : pool) th.join();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (float x : out) sink = sink + x;
    double gflops = 2.0 * 12 * kLanes * static_cast<double>(kIters) * threads / s / 1e9;
    if (gflops > best) best = gflops;
  }
  std::printf("{\"threads\": %d, \"gflops\": %.1f, \"vector_bits\": %d}\n", threads, best, kLanes * 32);
  return 0;
}
