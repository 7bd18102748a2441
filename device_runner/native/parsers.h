// The native runner's parsers of bytes that come from outside: test vectors (.epv), the split
// server's JSON replies and challenge, and codec frames (edgeprobe_runner/codec.py). Header-only and
// free of ExecuTorch so that the fuzz targets (fuzz/) compile exactly this code with libFuzzer; JSON is
// parsed by nlohmann/json (header-only too), without exceptions, through a SAX wrapper (JsonSax).
//
// Every bad input ends in a `Failure` with a one-line message; nothing here allocates more than the
// input can justify (counts are checked against the bytes left before anything is reserved), and all
// size arithmetic is checked.

#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace edgeprobe {

struct Failure {
  std::string code, message;
};

// Text from outside shown in a message: at most `max` bytes, control characters as '?', so the
// message stays one line.
inline std::string shown(const std::string& s, size_t max = 40) {
  std::string o = s.substr(0, max);
  for (char& c : o)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return o;
}

// ------------------------------------------------------------------ checked arithmetic

inline uint64_t checked_mul(uint64_t a, uint64_t b, const char* code, const std::string& what) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) throw Failure{code, what + " overflows 64 bits"};
  return r;
}

inline uint64_t checked_add(uint64_t a, uint64_t b, const char* code, const std::string& what) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) throw Failure{code, what + " overflows 64 bits"};
  return r;
}

// ------------------------------------------------------------------ tensors

struct RawTensor {
  uint32_t dtype = 0;
  std::vector<int64_t> sizes;
  std::vector<uint8_t> data;
};
struct TestSet {
  std::vector<RawTensor> inputs, expected;
};

inline size_t item_bytes(uint32_t dtype) {  // ExecuTorch ScalarType codes
  switch (dtype) {
    case 0: case 1: case 11: return 1;
    case 2: case 5: case 15: return 2;
    case 3: case 6: return 4;
    case 4: case 7: return 8;
    default: return 0;
  }
}

constexpr uint32_t kMaxRank = 16;
constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();  // ExecuTorch SizesType is int32
constexpr uint32_t kMaxTestSets = 65536;
constexpr uint32_t kMaxTensorsPerSet = 4096;

// ------------------------------------------------------------------ .epv (PROTOCOL.md, "Test vectors")

class Reader {  // bounds-checked little-endian reads over bytes it does not own
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::vector<uint8_t> bytes(uint64_t n) {
    need(n);
    std::vector<uint8_t> out(p_ + pos_, p_ + pos_ + n);
    pos_ += n;
    return out;
  }
  size_t left() const { return n_ - pos_; }
  size_t pos() const { return pos_; }

 private:
  void need(uint64_t n) {
    if (n > n_ - pos_)
      throw Failure{"bad_vectors", "vectors file truncated at offset " + std::to_string(pos_) + " (needs " +
                                       std::to_string(n) + " more bytes, " + std::to_string(n_ - pos_) + " left)"};
  }
  const uint8_t* p_;
  size_t n_, pos_ = 0;
};

inline RawTensor read_epv_tensor(Reader& r) {
  RawTensor t;
  size_t at = r.pos();
  t.dtype = r.get<uint32_t>();
  uint32_t ndim = r.get<uint32_t>();
  std::string where = "tensor at offset " + std::to_string(at);
  if (item_bytes(t.dtype) == 0) throw Failure{"bad_vectors", where + ": unsupported dtype code " + std::to_string(t.dtype)};
  if (ndim > kMaxRank)
    throw Failure{"bad_vectors", where + ": rank " + std::to_string(ndim) + " is over " + std::to_string(kMaxRank)};
  uint64_t numel = 1;
  for (uint32_t i = 0; i < ndim; ++i) {
    int64_t s = r.get<int64_t>();
    if (s < 0 || s > kMaxDim)
      throw Failure{"bad_vectors", where + ": size " + std::to_string(s) + " of dim " + std::to_string(i) +
                                       " is outside [0, " + std::to_string(kMaxDim) + "]"};
    t.sizes.push_back(s);
    numel = checked_mul(numel, static_cast<uint64_t>(s), "bad_vectors", where + ": element count");
  }
  uint64_t want = checked_mul(numel, item_bytes(t.dtype), "bad_vectors", where + ": byte count");
  uint64_t nbytes = r.get<uint64_t>();
  if (nbytes != want)
    throw Failure{"bad_vectors", where + ": " + std::to_string(nbytes) + " data bytes, its shape and dtype need " +
                                     std::to_string(want)};
  t.data = r.bytes(nbytes);
  return t;
}

// A count read from the file, checked against an absolute cap and against what the bytes left can
// hold (`min_each` bytes per item) before anything is reserved for it.
inline uint32_t read_count(Reader& r, uint32_t cap, size_t min_each, const char* what) {
  uint32_t n = r.get<uint32_t>();
  if (n > cap) throw Failure{"bad_vectors", std::string(what) + " count " + std::to_string(n) + " is over " + std::to_string(cap)};
  if (static_cast<uint64_t>(n) * min_each > r.left())
    throw Failure{"bad_vectors", std::string(what) + " count " + std::to_string(n) + " needs at least " +
                                     std::to_string(static_cast<uint64_t>(n) * min_each) + " bytes, the file has " +
                                     std::to_string(r.left()) + " left"};
  return n;
}

inline std::vector<TestSet> parse_vectors(const uint8_t* p, size_t n) {
  Reader r(p, n);
  auto magic = r.bytes(8);
  if (std::memcmp(magic.data(), "EPVEC001", 8) != 0) throw Failure{"bad_vectors", "not an edgeprobe vectors file (bad magic)"};
  constexpr size_t kMinTensor = 16, kMinSet = 8;  // dtype + ndim + nbytes; two counts
  std::vector<TestSet> sets(read_count(r, kMaxTestSets, kMinSet, "test set"));
  for (auto& s : sets) {
    for (uint32_t k = read_count(r, kMaxTensorsPerSet, kMinTensor, "input tensor"); k; --k) s.inputs.push_back(read_epv_tensor(r));
    for (uint32_t k = read_count(r, kMaxTensorsPerSet, kMinTensor, "output tensor"); k; --k) s.expected.push_back(read_epv_tensor(r));
  }
  if (r.left() != 0) throw Failure{"bad_vectors", std::to_string(r.left()) + " trailing bytes after the last test set"};
  return sets;
}

// ------------------------------------------------------------------ JSON (the server's replies, codec headers)

// A JSON value from outside, parsed by nlohmann/json. Objects are maps: a repeated key, the last one wins.
using JVal = nlohmann::json;

// nlohmann's DOM builder with a nesting limit, keeping what a message needs to say where parsing
// stopped: the byte, nlohmann's reason, and the object key last read.
class JsonSax {
 public:
  static constexpr int kMaxDepth = 32;
  explicit JsonSax(JVal& root) : dom_(root, false) {}
  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(JVal::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(JVal::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(JVal::number_float_t v, const std::string& s) { return dom_.number_float(v, s); }
  bool string(std::string& v) { return dom_.string(v); }
  bool binary(JVal::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) { return deeper() && dom_.start_object(n); }
  bool key(std::string& k) {
    key_ = k;
    return dom_.key(k);
  }
  bool end_object() {
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) { return deeper() && dom_.start_array(n); }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  bool parse_error(std::size_t pos, const std::string& /*token*/, const nlohmann::detail::exception& ex) {
    pos_ = pos;
    // "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error ...": the reason alone
    std::string w = ex.what();
    if (w.rfind("[json.exception.", 0) == 0 && w.find("] ") != std::string::npos) w.erase(0, w.find("] ") + 2);
    if (w.rfind("parse error", 0) == 0 && w.find(": ") != std::string::npos) w.erase(0, w.find(": ") + 2);
    if (!w.empty()) reason_ = w;
    return dom_.parse_error(pos, "", ex);
  }
  // Why the parse failed, for "bad JSON in <what>...": " at byte N, after key 'k': reason".
  std::string why() const {
    std::string at = too_deep_ ? "" : " at byte " + std::to_string(pos_);
    if (!key_.empty()) at += ", after key '" + shown(key_) + "'";
    return at + ": " + (too_deep_ ? "nested deeper than " + std::to_string(kMaxDepth) : shown(reason_, 300));
  }

 private:
  bool deeper() {
    if (++depth_ <= kMaxDepth) return true;
    too_deep_ = true;
    return false;
  }
  nlohmann::detail::json_sax_dom_parser<JVal> dom_;
  int depth_ = 0;
  bool too_deep_ = false;
  std::size_t pos_ = 0;
  std::string key_, reason_ = "rejected by the parser";
};

// RFC 8259 JSON (nlohmann/json, strict: one value, nothing after it, UTF-8), nested at most
// JsonSax::kMaxDepth deep; anything else is Failure{code, "bad JSON in <what> at byte N...: why"}.
// Never throws anything but Failure: nlohmann runs without exceptions here.
inline JVal parse_json(const std::string& s, const std::string& code, const std::string& what) {
  JVal root;
  JsonSax sax(root);
  bool ok = JVal::sax_parse(s, &sax, JVal::input_format_t::json, true, false);
  if (!ok || root.is_discarded()) throw Failure{code, "bad JSON in " + what + sax.why()};
  return root;
}

inline const JVal* jfind(const JVal& o, const char* k) {  // o[k] when o is an object that has k
  if (!o.is_object()) return nullptr;
  auto it = o.find(k);
  return it == o.end() ? nullptr : &*it;
}

// A number as a double: nullopt when it is not a finite number.
inline std::optional<double> jnumber(const JVal& v) {
  if (!v.is_number()) return std::nullopt;
  double d = v.get<double>();
  if (!std::isfinite(d)) return std::nullopt;
  return d;
}

// A number field: nullopt when absent, null or not a finite number (the caller says what that means;
// never read as 0).
inline std::optional<double> jget_num(const JVal& o, const char* k) {
  const JVal* v = jfind(o, k);
  return v == nullptr ? std::nullopt : jnumber(*v);
}

inline bool jget_true(const JVal& o, const char* k) {
  const JVal* v = jfind(o, k);
  return v != nullptr && v->is_boolean() && v->get<bool>();
}

inline std::string jget_str(const JVal& o, const char* k, const std::string& fallback = "") {
  const JVal* v = jfind(o, k);
  return v != nullptr && v->is_string() ? v->get<std::string>() : fallback;
}

// A byte count or dimension: a JSON integer in [0, max] (2.0 counts as 2); anything else (1e18 over
// max, -1, 2.5, a string) is an error, never a wrapped size_t.
inline uint64_t jcount_value(const JVal& v, uint64_t max, const std::string& code, const std::string& what) {
  bool ok = false;
  uint64_t n = 0;
  if (v.is_number_unsigned()) {
    n = v.get<uint64_t>();
    ok = n <= max;
  } else if (v.is_number_integer()) {  // signed: a negative one (or -0)
    int64_t i = v.get<int64_t>();
    ok = i >= 0 && static_cast<uint64_t>(i) <= max;
    n = ok ? static_cast<uint64_t>(i) : 0;
  } else if (v.is_number_float()) {
    double d = v.get<double>();
    ok = std::isfinite(d) && d >= 0 && d == std::floor(d) && d <= static_cast<double>(max);
    if (ok) n = static_cast<uint64_t>(d);
  }  // not a number: not a count
  if (!ok) throw Failure{code, what + " must be an integer in [0, " + std::to_string(max) + "]"};
  return n;
}

inline uint64_t jget_count(const JVal& o, const char* k, uint64_t max, const std::string& code, const std::string& what) {
  const JVal* v = jfind(o, k);
  if (v == nullptr) throw Failure{code, what + " has no '" + k + "'"};
  return jcount_value(*v, max, code, what + ": '" + k + "'");
}

// ------------------------------------------------------------------ split server messages (PROTOCOL.md, "Split mode")

constexpr size_t kMaxReplyHeader = 1u << 20;          // bytes of one reply's JSON header
constexpr uint64_t kMaxReplyPayload = 1ull << 31;     // bytes of one reply's payload (2 GiB)

// The header of one reply (already read: its length was checked against kMaxReplyHeader): the object
// and how many payload bytes follow it (a success reply's "size"; absent: none).
struct Reply {
  JVal header;
  uint64_t payload_size = 0;
};

inline Reply parse_reply(const std::string& text) {
  Reply r;
  r.header = parse_json(text, "split_protocol", "the server's reply");
  if (!r.header.is_object()) throw Failure{"split_protocol", "the server's reply is not a JSON object"};
  if (jget_true(r.header, "ok") && jfind(r.header, "size") != nullptr)
    r.payload_size = jget_count(r.header, "size", kMaxReplyPayload, "split_protocol", "the server's reply");
  return r;
}

inline bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// The server's first message (/tmp auth protocol v2): returns its nonce SN.
inline std::string parse_challenge(const JVal& m, const std::string& service, const std::string& server) {
  if (!m.is_object()) throw Failure{"split_protocol", server + " sent no challenge object"};
  const JVal* ok = jfind(m, "op") == nullptr ? jfind(m, "ok") : nullptr;
  if (ok != nullptr && ok->is_boolean() && !ok->get<bool>())  // refused before the handshake (e.g. too many connections)
    throw Failure{"refused", server + " refused the connection: " + shown(jget_str(m, "error", "no reason given"), 300)};
  if (jget_str(m, "op") != "challenge")
    throw Failure{"split_protocol", server + " did not open with a challenge (an edgeprobe server older than auth v2?)"};
  if (jget_str(m, "auth") != "hmac-sha256")
    throw Failure{"split_protocol", server + " asks for auth '" + shown(jget_str(m, "auth", "?")) + "', not hmac-sha256; not talking to it"};
  if (jget_str(m, "service") != service)
    throw Failure{"split_protocol", server + " is a '" + shown(jget_str(m, "service", "?")) + "' server, not '" + service +
                                        "' (is the port the runner server's?)"};
  std::string sn = jget_str(m, "nonce");
  if (!is_hex64(sn)) throw Failure{"split_protocol", server + " sent a nonce that is not 64 lowercase hex characters"};
  return sn;
}

// ------------------------------------------------------------------ codec frames (edgeprobe_runner/codec.py)

inline std::optional<uint32_t> codec_dtype_code(const std::string& name) {
  static const std::map<std::string, uint32_t> codes = {
      {"uint8", 0}, {"int8", 1}, {"int16", 2}, {"int32", 3}, {"int64", 4}, {"float16", 5},
      {"float32", 6}, {"float64", 7}, {"bool", 11}, {"bfloat16", 15}};
  auto it = codes.find(name);
  if (it == codes.end()) return std::nullopt;
  return it->second;
}

inline float half_to_float(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float s = (h & 0x8000) ? -1.0f : 1.0f;
  if (e == 0) return s * std::ldexp(static_cast<float>(m), -24);
  if (e == 31) return m ? std::numeric_limits<float>::quiet_NaN() : s * std::numeric_limits<float>::infinity();
  return s * std::ldexp(static_cast<float>(m + 1024), e - 25);
}

// The tensors of one frame in their own dtypes (fp16 and int8 payloads decoded to float32/float64),
// with the checks of codec.decode: magic, header bounds, per-tensor nbytes, no trailing bytes.
inline std::vector<RawTensor> decode_frame(const uint8_t* p, size_t n) {
  const std::string code = "split_protocol";
  if (n < 8 || std::memcmp(p, "EPW1", 4) != 0) throw Failure{code, "the reply is not an edgeprobe tensor frame (bad magic)"};
  uint32_t hlen = static_cast<uint32_t>(p[4]) | (static_cast<uint32_t>(p[5]) << 8) | (static_cast<uint32_t>(p[6]) << 16) |
                  (static_cast<uint32_t>(p[7]) << 24);
  if (hlen > n - 8)
    throw Failure{code, "reply frame truncated: header of " + std::to_string(hlen) + " bytes, " + std::to_string(n - 8) + " available"};
  JVal h = parse_json(std::string(reinterpret_cast<const char*>(p + 8), hlen), code, "the reply frame's header");
  const JVal* entries = jfind(h, "tensors");
  if (entries == nullptr || !entries->is_array()) throw Failure{code, "the reply frame's header has no 'tensors' list"};
  if (entries->size() > kMaxTensorsPerSet) throw Failure{code, "the reply frame holds over " + std::to_string(kMaxTensorsPerSet) + " tensors"};
  std::vector<RawTensor> out;
  uint64_t pos = 8 + static_cast<uint64_t>(hlen);
  for (size_t i = 0; i < entries->size(); ++i) {
    const JVal& e = (*entries)[i];
    std::string where = "reply frame tensor " + std::to_string(i);
    if (!e.is_object()) throw Failure{code, where + " is not an object"};
    auto dt = codec_dtype_code(jget_str(e, "dtype"));
    if (!dt) throw Failure{code, where + ": unsupported dtype '" + shown(jget_str(e, "dtype", "?")) + "'"};
    const JVal* shape = jfind(e, "shape");
    if (shape == nullptr || !shape->is_array()) throw Failure{code, where + " has no shape list"};
    if (shape->size() > kMaxRank) throw Failure{code, where + ": rank over " + std::to_string(kMaxRank)};
    RawTensor t;
    t.dtype = *dt;
    uint64_t numel = 1;
    for (auto& d : *shape) {
      t.sizes.push_back(static_cast<int64_t>(jcount_value(d, static_cast<uint64_t>(kMaxDim), code, where + ": a dimension")));
      numel = checked_mul(numel, static_cast<uint64_t>(t.sizes.back()), code.c_str(), where + ": element count");
    }
    std::string enc = jget_str(e, "encoding");
    bool floating = *dt == 5 || *dt == 6 || *dt == 7 || *dt == 15;
    size_t item = enc == "raw" ? item_bytes(*dt) : enc == "fp16" ? 2 : enc == "int8" ? 1 : 0;
    if (item == 0 || (enc == "fp16" && *dt != 6) || (enc == "int8" && !floating))
      throw Failure{code, where + ": encoding '" + shown(enc) + "' does not apply to " + shown(jget_str(e, "dtype"))};
    uint64_t nbytes = jget_count(e, "nbytes", kMaxReplyPayload, code, where);
    uint64_t want = checked_mul(numel, item, code.c_str(), where + ": byte count");
    if (nbytes != want) throw Failure{code, where + ": nbytes " + std::to_string(nbytes) + " does not match its shape (" + std::to_string(want) + ")"};
    if (nbytes > n - pos)
      throw Failure{code, "reply frame truncated in tensor " + std::to_string(i) + ": needs " + std::to_string(nbytes) +
                              " bytes, " + std::to_string(n - pos) + " left"};
    const uint8_t* src = p + pos;
    pos += nbytes;
    uint64_t out_bytes = checked_mul(numel, item_bytes(*dt), code.c_str(), where + ": decoded byte count");
    if (enc == "raw") {
      t.data.assign(src, src + nbytes);
    } else if (enc == "fp16") {
      t.data.resize(out_bytes);
      for (uint64_t k = 0; k < numel; ++k) {
        uint16_t hv;
        std::memcpy(&hv, src + 2 * k, 2);
        float f = half_to_float(hv);
        std::memcpy(t.data.data() + 4 * k, &f, 4);
      }
    } else {  // int8: x = (q - zero_point) * scale, float32 arithmetic as codec.dequantize_int8
      auto scale = jget_num(e, "scale");
      const JVal* zpv = jfind(e, "zero_point");
      auto zpn = zpv == nullptr ? std::nullopt : jnumber(*zpv);
      if (!scale || !(*scale > 0) || !zpn || *zpn != std::floor(*zpn) || *zpn < -128 || *zpn > 127)
        throw Failure{code, where + ": bad int8 scale/zero_point"};
      if (*dt != 6 && *dt != 7) throw Failure{code, where + ": int8 decoding to this dtype is not built in the native runner"};
      float s = static_cast<float>(*scale), zp = static_cast<float>(*zpn);
      t.data.resize(out_bytes);
      for (uint64_t k = 0; k < numel; ++k) {
        float x = (static_cast<float>(static_cast<int8_t>(src[k])) - zp) * s;
        if (*dt == 6) std::memcpy(t.data.data() + 4 * k, &x, 4);
        else { double d = x; std::memcpy(t.data.data() + 8 * k, &d, 8); }
      }
    }
    out.push_back(std::move(t));
  }
  if (pos != n) throw Failure{code, std::to_string(n - pos) + " trailing bytes after the reply frame's last tensor"};
  return out;
}

}  // namespace edgeprobe
