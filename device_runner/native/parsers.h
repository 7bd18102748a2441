// The native runner's parsers of bytes that come from outside: test vectors (.epv), the split
// server's JSON replies and challenge, and codec frames (edgeprobe_runner/codec.py). Header-only and
// free of ExecuTorch so that the fuzz targets (fuzz/) compile exactly this code with libFuzzer.
//
// Every bad input ends in a `Failure` with a one-line message; nothing here allocates more than the
// input can justify (counts are checked against the bytes left before anything is reserved), and all
// size arithmetic is checked.

#pragma once

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

struct JVal {
  enum Kind { Null, Bool, Num, Str, Arr, Obj } kind = Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<JVal> arr;
  std::vector<std::pair<std::string, JVal>> obj;  // in order; a repeated key: the last one wins in get()
  const JVal* get(const std::string& k) const {
    const JVal* found = nullptr;
    for (auto& kv : obj)
      if (kv.first == k) found = &kv.second;
    return found;
  }
};

class JsonParser {  // RFC 8259, with a depth limit; errors are Failure{code, "<what>: ..."}
 public:
  JsonParser(const std::string& s, std::string code, std::string what) : s_(s), code_(std::move(code)), what_(std::move(what)) {}
  JVal parse() {
    ws();
    JVal v = value(0);
    ws();
    if (i_ != s_.size()) fail("trailing characters after the JSON value");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 32;
  [[noreturn]] void fail(const std::string& why) const {
    throw Failure{code_, "bad JSON in " + what_ + " at byte " + std::to_string(i_) + ": " + why};
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  bool at_end() const { return i_ >= s_.size(); }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    if (at_end() || s_[i_] != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  unsigned hex4() {
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      char h = peek();
      int d = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
      if (at_end() || d < 0) fail("bad \\u escape");
      v = v * 16 + static_cast<unsigned>(d);
      ++i_;
    }
    return v;
  }
  static void utf8(std::string& o, uint32_t cp) {
    if (cp < 0x80) {
      o += static_cast<char>(cp);
    } else if (cp < 0x800) {
      o += static_cast<char>(0xC0 | (cp >> 6));
      o += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      o += static_cast<char>(0xE0 | (cp >> 12));
      o += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      o += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      o += static_cast<char>(0xF0 | (cp >> 18));
      o += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      o += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      o += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  std::string string() {
    expect('"');
    std::string o;
    while (true) {
      if (at_end()) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[i_++]);
      if (c == '"') return o;
      if (c < 0x20) fail("control character in a string");
      if (c != '\\') {
        o += static_cast<char>(c);
        continue;
      }
      if (at_end()) fail("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"': o += '"'; break;
        case '\\': o += '\\'; break;
        case '/': o += '/'; break;
        case 'b': o += '\b'; break;
        case 'f': o += '\f'; break;
        case 'n': o += '\n'; break;
        case 'r': o += '\r'; break;
        case 't': o += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // a high surrogate: its low half must follow
            if (s_.compare(i_, 2, "\\u") != 0) fail("lone high surrogate");
            i_ += 2;
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("lone low surrogate");
          }
          utf8(o, cp);
          break;
        }
        default: fail("bad escape '\\" + shown(std::string(1, e)) + "'");
      }
    }
  }
  double number() {  // the JSON grammar, checked before strtod (which would take "inf", "0x1p3", ...)
    size_t start = i_;
    if (peek() == '-') ++i_;
    if (peek() == '0') {
      ++i_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++i_;
    } else {
      fail("bad value");
    }
    if (peek() == '.') {
      ++i_;
      if (!(peek() >= '0' && peek() <= '9')) fail("bad number");
      while (peek() >= '0' && peek() <= '9') ++i_;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (!(peek() >= '0' && peek() <= '9')) fail("bad number");
      while (peek() >= '0' && peek() <= '9') ++i_;
    }
    std::string text = s_.substr(start, i_ - start);
    return std::strtod(text.c_str(), nullptr);  // out of range: +-inf, which callers reject
  }
  JVal value(int depth) {
    if (depth > kMaxDepth) fail("nested deeper than " + std::to_string(kMaxDepth));
    JVal v;
    char c = peek();
    if (at_end()) fail("unexpected end");
    if (c == '"') {
      v.kind = JVal::Str;
      v.str = string();
    } else if (c == '{') {
      ++i_;
      v.kind = JVal::Obj;
      ws();
      if (peek() == '}') return ++i_, v;
      while (true) {
        ws();
        std::string k = string();
        ws();
        expect(':');
        ws();
        JVal item = value(depth + 1);
        v.obj.emplace_back(std::move(k), std::move(item));
        ws();
        if (peek() == ',') { ++i_; continue; }
        expect('}');
        break;
      }
    } else if (c == '[') {
      ++i_;
      v.kind = JVal::Arr;
      ws();
      if (peek() == ']') return ++i_, v;
      while (true) {
        ws();
        v.arr.push_back(value(depth + 1));
        ws();
        if (peek() == ',') { ++i_; continue; }
        expect(']');
        break;
      }
    } else if (s_.compare(i_, 4, "true") == 0) {
      i_ += 4;
      v.kind = JVal::Bool;
      v.b = true;
    } else if (s_.compare(i_, 5, "false") == 0) {
      i_ += 5;
      v.kind = JVal::Bool;
    } else if (s_.compare(i_, 4, "null") == 0) {
      i_ += 4;
    } else {
      v.kind = JVal::Num;
      v.num = number();
    }
    return v;
  }
  const std::string& s_;
  std::string code_, what_;
  size_t i_ = 0;
};

inline JVal parse_json(const std::string& s, const std::string& code, const std::string& what) {
  return JsonParser(s, code, what).parse();
}

// A number field: nullopt when absent, null or not a finite number (the caller says what that means;
// never read as 0).
inline std::optional<double> jget_num(const JVal& o, const char* k) {
  const JVal* v = o.get(k);
  if (v == nullptr || v->kind != JVal::Num || !std::isfinite(v->num)) return std::nullopt;
  return v->num;
}

inline bool jget_true(const JVal& o, const char* k) {
  const JVal* v = o.get(k);
  return v != nullptr && v->kind == JVal::Bool && v->b;
}

inline std::string jget_str(const JVal& o, const char* k, const std::string& fallback = "") {
  const JVal* v = o.get(k);
  return v != nullptr && v->kind == JVal::Str ? v->str : fallback;
}

// A byte count or dimension: a JSON integer in [0, max]; anything else (1e18 over max, -1, 2.5, a
// string, NaN written as a huge exponent) is an error, never a wrapped size_t.
inline uint64_t jget_count(const JVal& o, const char* k, uint64_t max, const std::string& code, const std::string& what) {
  const JVal* v = o.get(k);
  if (v == nullptr) throw Failure{code, what + " has no '" + k + "'"};
  if (v->kind != JVal::Num || !std::isfinite(v->num) || v->num < 0 || v->num != std::floor(v->num) ||
      v->num > static_cast<double>(max))
    throw Failure{code, what + ": '" + k + "' must be an integer in [0, " + std::to_string(max) + "]"};
  return static_cast<uint64_t>(v->num);
}

inline uint64_t jcount_value(const JVal& v, uint64_t max, const std::string& code, const std::string& what) {
  if (v.kind != JVal::Num || !std::isfinite(v.num) || v.num < 0 || v.num != std::floor(v.num) || v.num > static_cast<double>(max))
    throw Failure{code, what + " must be an integer in [0, " + std::to_string(max) + "]"};
  return static_cast<uint64_t>(v.num);
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
  if (r.header.kind != JVal::Obj) throw Failure{"split_protocol", "the server's reply is not a JSON object"};
  if (jget_true(r.header, "ok") && r.header.get("size") != nullptr)
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
  if (m.kind != JVal::Obj) throw Failure{"split_protocol", server + " sent no challenge object"};
  const JVal* ok = m.get("op") == nullptr ? m.get("ok") : nullptr;
  if (ok != nullptr && ok->kind == JVal::Bool && !ok->b)  // refused before the handshake (e.g. too many connections)
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
  const JVal* entries = h.kind == JVal::Obj ? h.get("tensors") : nullptr;
  if (entries == nullptr || entries->kind != JVal::Arr) throw Failure{code, "the reply frame's header has no 'tensors' list"};
  if (entries->arr.size() > kMaxTensorsPerSet) throw Failure{code, "the reply frame holds over " + std::to_string(kMaxTensorsPerSet) + " tensors"};
  std::vector<RawTensor> out;
  uint64_t pos = 8 + static_cast<uint64_t>(hlen);
  for (size_t i = 0; i < entries->arr.size(); ++i) {
    const JVal& e = entries->arr[i];
    std::string where = "reply frame tensor " + std::to_string(i);
    if (e.kind != JVal::Obj) throw Failure{code, where + " is not an object"};
    auto dt = codec_dtype_code(jget_str(e, "dtype"));
    if (!dt) throw Failure{code, where + ": unsupported dtype '" + shown(jget_str(e, "dtype", "?")) + "'"};
    const JVal* shape = e.get("shape");
    if (shape == nullptr || shape->kind != JVal::Arr) throw Failure{code, where + " has no shape list"};
    if (shape->arr.size() > kMaxRank) throw Failure{code, where + ": rank over " + std::to_string(kMaxRank)};
    RawTensor t;
    t.dtype = *dt;
    uint64_t numel = 1;
    for (auto& d : shape->arr) {
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
      const JVal* zpv = e.get("zero_point");
      if (!scale || !(*scale > 0) || zpv == nullptr || zpv->kind != JVal::Num || zpv->num != std::floor(zpv->num) ||
          zpv->num < -128 || zpv->num > 127)
        throw Failure{code, where + ": bad int8 scale/zero_point"};
      if (*dt != 6 && *dt != 7) throw Failure{code, where + ": int8 decoding to this dtype is not built in the native runner"};
      float s = static_cast<float>(*scale), zp = static_cast<float>(zpv->num);
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
