// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) for the split client's authentication
// (PROTOCOL.md, "Split mode": the v2 challenge-response handshake).
//
// Written by hand, not taken from OpenSSL: the runner is cross-built for aarch64 Linux and Android
// (NDK) where no OpenSSL is at hand, and it must stay thin (it links nothing but ExecuTorch). Checked
// against Python's hashlib/hmac with the FIPS vectors and random inputs (tests/test_native_runner.py,
// through tools/sha256_check.cpp).

#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace edgeprobe {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  void update(const uint8_t* p, size_t n);
  void update(const std::string& s) { update(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }
  Digest finish();

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

Digest sha256(const std::string& msg);
Digest hmac_sha256(const std::string& key, const std::string& msg);
std::string to_hex(const uint8_t* p, size_t n);
inline std::string to_hex(const Digest& d) { return to_hex(d.data(), d.size()); }
// Equal length and bytes, in time that depends on the length only.
bool constant_time_equal(const std::string& a, const std::string& b);

}  // namespace edgeprobe
