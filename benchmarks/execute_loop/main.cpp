// execute_loop MODEL THREADS WARMUP ITERATIONS: load MODEL (mmap), make inputs of ones from the method's
// metadata, reset the thread pool to THREADS, run WARMUP untimed and ITERATIONS timed Method::execute
// calls, print {"iteration_ns": [...], "threads": N} on one line. Nothing else: no verification, no
// meters, no record; the baseline the native runner's overhead is measured against.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/platform/runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

// The wheel ships libexecutorch_threadpool.so but not threadpool.h (as in device_runner/native/main.cpp).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::extension::Module;
using executorch::runtime::EValue;

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: execute_loop MODEL THREADS WARMUP ITERATIONS\n");
    return 2;
  }
  const int threads = std::atoi(argv[2]), warmup = std::atoi(argv[3]), iterations = std::atoi(argv[4]);
  executorch::runtime::runtime_init();
  if (threads > 0) executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(threads);
  Module module(argv[1], Module::LoadMode::Mmap);
  if (module.load_method("forward") != executorch::runtime::Error::Ok) {
    std::fprintf(stderr, "cannot load %s\n", argv[1]);
    return 1;
  }
  auto meta = module.method_meta("forward");
  std::vector<std::vector<float>> data;
  std::vector<executorch::extension::TensorPtr> owned;
  std::vector<EValue> inputs;
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto tm = meta->input_tensor_meta(i);
    if (tm->scalar_type() != executorch::aten::ScalarType::Float) {
      std::fprintf(stderr, "input %zu is not float32; this baseline makes float32 ones only\n", i);
      return 1;
    }
    std::vector<executorch::aten::SizesType> sizes(tm->sizes().begin(), tm->sizes().end());
    size_t n = 1;
    for (auto s : sizes) n *= static_cast<size_t>(s);
    data.emplace_back(n, 1.0f);
    owned.push_back(executorch::extension::make_tensor_ptr(sizes, data.back().data()));
    inputs.emplace_back(owned.back());
  }
  using Clock = std::chrono::steady_clock;
  std::vector<long long> ns;
  for (int i = 0; i < warmup + iterations; ++i) {
    auto t0 = Clock::now();
    auto out = module.execute("forward", inputs);
    auto t1 = Clock::now();
    if (!out.ok()) {
      std::fprintf(stderr, "execute failed\n");
      return 1;
    }
    if (i >= warmup) ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
  }
  std::printf("{\"threads\": %zu, \"iteration_ns\": [",
              executorch::extension::threadpool::get_threadpool()->get_thread_count());
  for (size_t i = 0; i < ns.size(); ++i) std::printf("%s%lld", i ? ", " : "", ns[i]);
  std::printf("]}\n");
  return 0;
}
