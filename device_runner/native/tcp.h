// The split client's connection to `edgeprobe serve`: TCP, the runner framing, the v2 authentication handshake.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parsers.h"

namespace edgeprobe {

class Conn {  // one TCP connection to `edgeprobe serve`, with the runner framing
 public:
  Conn(const std::string& hostport, double timeout_s);  // Failure{"usage"|"connect_failed"}
  ~Conn();
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // u32 big-endian length, header JSON, payload; returns the bytes put on the connection
  size_t send(const std::string& header, const uint8_t* payload, size_t n);
  // a reply: its header (parsed, and its raw size with the length prefix) and payload ("size" bytes when
  // ok); `max_header` is 4096 before authentication (the server's own limit), 1 MiB after
  JVal recv(std::vector<uint8_t>& payload, size_t& wire_bytes, size_t max_header = kMaxReplyHeader);

 private:
  void write_all(const uint8_t* p, size_t n);
  void read_all(uint8_t* p, size_t n);
  int fd_ = -1;
};

// The v2 handshake (PROTOCOL.md, "Split mode"): the server's challenge, our MAC over both nonces, then
// the server's MAC, checked in constant time before anything else is sent. The token never leaves.
void authenticate(Conn& conn, const std::string& server, const std::string& token);

}  // namespace edgeprobe
