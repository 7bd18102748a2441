// Test vectors (.epv, PROTOCOL.md "Test vectors"): reading, writing, and comparing outputs against them.
#include "vectors.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

namespace edgeprobe {

namespace {
// The whole file, at most kMaxVectorsBytes, parsed by parsers.h (every count checked against the
// bytes the file really has).
constexpr uint64_t kMaxVectorsBytes = 1ull << 31;

double as_double(uint32_t dtype, const uint8_t* p) {
  switch (dtype) {
    case 0: return *p;
    case 1: return static_cast<int8_t>(*p);
    case 11: return *p ? 1 : 0;
    case 2: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case 3: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case 4: { int64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
    case 6: { float v; std::memcpy(&v, p, 4); return v; }
    case 7: { double v; std::memcpy(&v, p, 8); return v; }
    case 15: { uint16_t h; std::memcpy(&h, p, 2); uint32_t b = static_cast<uint32_t>(h) << 16; float v; std::memcpy(&v, &b, 4); return v; }
    case 5: {
      uint16_t h; std::memcpy(&h, p, 2);
      int e = (h >> 10) & 0x1f, m = h & 0x3ff; double s = (h & 0x8000) ? -1 : 1;
      if (e == 0) return s * std::ldexp(m, -24);
      if (e == 31) return m ? NAN : s * INFINITY;
      return s * std::ldexp(m + 1024, e - 25);
    }
    default: return NAN;
  }
}

}  // namespace

std::vector<TestSet> read_vectors(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw Failure{"bad_vectors", "cannot open vectors file " + path};
  std::streamoff size = f.tellg();
  if (size < 0) throw Failure{"bad_vectors", "cannot read the size of vectors file " + path};
  if (static_cast<uint64_t>(size) > kMaxVectorsBytes)
    throw Failure{"bad_vectors", "vectors file " + path + " is " + std::to_string(size) + " bytes, over the " +
                                     std::to_string(kMaxVectorsBytes) + "-byte limit"};
  std::vector<uint8_t> data(static_cast<size_t>(size));
  f.seekg(0);
  if (size > 0 && !f.read(reinterpret_cast<char*>(data.data()), size))
    throw Failure{"bad_vectors", "cannot read vectors file " + path};
  return edgeprobe::parse_vectors(data.data(), data.size());
}

void write_vectors(const std::string& path, const std::vector<RawTensor>& inputs, const std::vector<RawTensor>& outputs) {
  std::ofstream f(path, std::ios::binary);
  auto put = [&f](const void* p, size_t n) { f.write(static_cast<const char*>(p), static_cast<std::streamsize>(n)); };
  auto tensor = [&](const RawTensor& t) {
    uint32_t hdr[2] = {t.dtype, static_cast<uint32_t>(t.sizes.size())};
    put(hdr, sizeof hdr);
    put(t.sizes.data(), t.sizes.size() * sizeof(int64_t));
    uint64_t n = t.data.size();
    put(&n, sizeof n);
    put(t.data.data(), t.data.size());
  };
  put("EPVEC001", 8);
  uint32_t one = 1, n_in = static_cast<uint32_t>(inputs.size()), n_out = static_cast<uint32_t>(outputs.size());
  put(&one, 4);
  put(&n_in, 4);
  for (auto& t : inputs) tensor(t);
  put(&n_out, 4);
  for (auto& t : outputs) tensor(t);
  if (!f) throw Failure{"io_failed", "cannot write " + path};
}

std::string compare(const RawTensor& a, const RawTensor& e, double rtol, double atol, double& worst) {
  if (a.dtype != e.dtype) return "dtype code " + std::to_string(a.dtype) + ", expected " + std::to_string(e.dtype);
  if (a.sizes != e.sizes) return "shape differs from the expected output";
  size_t item = item_bytes(e.dtype), n = e.data.size() / item;
  bool bad = false;
  for (size_t i = 0; i < n; ++i) {
    double x = as_double(a.dtype, a.data.data() + i * item), y = as_double(e.dtype, e.data.data() + i * item);
    if (std::isnan(x) || std::isnan(y)) {
      if (std::isnan(x) != std::isnan(y)) bad = true;
      continue;
    }
    double d = std::fabs(x - y);
    worst = std::max(worst, d);
    if (d > atol + rtol * std::fabs(y)) bad = true;
  }
  if (!bad) return "";
  char b[160];
  std::snprintf(b, sizeof b, "differs from the expected output (max |a-e| = %.3g, atol=%.3g, rtol=%.3g)", worst, atol, rtol);
  return b;
}

}  // namespace edgeprobe
