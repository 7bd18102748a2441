// Reads lines "KEYHEX MSGHEX" on stdin and prints "SHA256(MSG) HMAC-SHA256(KEY, MSG)" in hex, one line
// each, so that tests can compare sha256.cpp with Python's hashlib/hmac. An empty field is "-".
#include <iostream>
#include <string>

#include "../sha256.h"

static std::string unhex(const std::string& h) {
  if (h == "-") return "";
  std::string o;
  for (size_t i = 0; i + 1 < h.size(); i += 2) o += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return o;
}

int main() {
  std::string k, m;
  while (std::cin >> k >> m) {
    std::string key = unhex(k), msg = unhex(m);
    std::cout << edgeprobe::to_hex(edgeprobe::sha256(msg)) << " " << edgeprobe::to_hex(edgeprobe::hmac_sha256(key, msg)) << "\n";
  }
  return 0;
}
