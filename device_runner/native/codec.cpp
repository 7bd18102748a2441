// The wire codec's encoder (edgeprobe_runner/codec.py, "EPW1" frames); its decoder is parsers.h decode_frame.
#include "codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "record.h"

namespace edgeprobe {

namespace {

const char* codec_dtype(uint32_t code) {
  switch (code) {
    case 0: return "uint8";
    case 1: return "int8";
    case 2: return "int16";
    case 3: return "int32";
    case 4: return "int64";
    case 5: return "float16";
    case 6: return "float32";
    case 7: return "float64";
    case 11: return "bool";
    case 15: return "bfloat16";
    default: throw Failure{"unsupported", "the wire codec has no dtype for ScalarType " + std::to_string(code)};
  }
}

uint16_t to_half(float f) {  // IEEE binary16, round to nearest even (after clamping to +-65504)
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
  int exp = static_cast<int>((x >> 23) & 0xff);
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
  int e = exp - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    int shift = 14 - e;
    uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13), rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// The widest text a double takes in nlohmann's shortest round-trip form (17 digits, a 3-digit exponent).
constexpr double kWidestDouble = -2.2250738585072014e-308;

}  // namespace

std::vector<uint8_t> encode_frame(const std::vector<RawTensor>& ts, const std::string& enc) {
  Json entries = Json::array(), widest = Json::array();
  std::vector<std::vector<uint8_t>> payloads;
  for (const RawTensor& t : ts) {
    const char* dtype = codec_dtype(t.dtype);
    bool floating = t.dtype == 5 || t.dtype == 6 || t.dtype == 7 || t.dtype == 15;
    std::string eff = (enc == "fp16" && t.dtype == 6) ? "fp16" : (enc == "int8" && floating) ? "int8" : "raw";
    size_t numel = t.data.size() / item_bytes(t.dtype);
    std::vector<uint8_t> data;
    Json scale = nullptr, zero_point = nullptr;
    if (eff == "fp16") {
      data.resize(numel * 2);
      for (size_t k = 0; k < numel; ++k) {
        float v;
        std::memcpy(&v, t.data.data() + 4 * k, 4);
        v = std::isnan(v) ? v : std::min(65504.0f, std::max(-65504.0f, v));
        uint16_t h = to_half(v);
        std::memcpy(data.data() + 2 * k, &h, 2);
      }
    } else if (eff == "int8") {
      if (t.dtype != 6 && t.dtype != 7) throw Failure{"unsupported", std::string("int8 encoding of ") + dtype + " is not built in the native runner"};
      std::vector<float> x(numel);
      for (size_t k = 0; k < numel; ++k) {
        if (t.dtype == 6) std::memcpy(&x[k], t.data.data() + 4 * k, 4);
        else { double d; std::memcpy(&d, t.data.data() + 8 * k, 8); x[k] = static_cast<float>(d); }
      }
      float lo = 0, hi = 0;
      for (float v : x) {
        if (!std::isfinite(v)) throw Failure{"encode_failed", "int8 encoding needs finite values (the tensor holds inf or nan)"};
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      float s = static_cast<float>((static_cast<double>(hi) - lo) / 255.0);
      if (s == 0.0f) s = 1.0f;
      long zp = std::lrint(-128.0 - static_cast<double>(lo) / static_cast<double>(s));
      zp = std::max(-128L, std::min(127L, zp));
      data.resize(numel);
      for (size_t k = 0; k < numel; ++k) {
        float q = std::nearbyint(x[k] / s) + static_cast<float>(zp);
        data[k] = static_cast<uint8_t>(static_cast<int8_t>(std::max(-128.0f, std::min(127.0f, q))));
      }
      scale = static_cast<double>(s);
      zero_point = zp;
    } else {
      data = t.data;
    }
    auto entry = [&](const Json& sc, const Json& z) {
      return Json{{"dtype", dtype}, {"shape", Json(t.sizes)}, {"encoding", eff}, {"scale", sc}, {"zero_point", z},
                  {"nbytes", data.size()}};
    };
    entries.push_back(entry(scale, zero_point));
    widest.push_back(eff == "int8" ? entry(kWidestDouble, -128) : entry(nullptr, nullptr));
    payloads.push_back(std::move(data));
  }
  std::string header = dump(Json{{"tensors", entries}}), cap = dump(Json{{"tensors", widest}});
  if (header.size() > cap.size()) throw Failure{"encode_failed", "codec header wider than its capacity"};
  header.append(cap.size() - header.size(), ' ');
  std::vector<uint8_t> out = {'E', 'P', 'W', '1'};
  uint32_t hl = static_cast<uint32_t>(header.size());
  for (int k = 0; k < 4; ++k) out.push_back(static_cast<uint8_t>(hl >> (8 * k)));
  out.insert(out.end(), header.begin(), header.end());
  for (auto& p : payloads) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace edgeprobe
