// The split client's connection to `edgeprobe serve`: TCP, the runner framing, the v2 authentication handshake.
#include "tcp.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>

#include "record.h"
#include "sha256.h"
#include "util.h"

namespace edgeprobe {

Conn::Conn(const std::string& hostport, double timeout_s) {
  auto colon = hostport.rfind(':');
  if (colon == std::string::npos || colon == 0) throw Failure{"usage", "--split-server must be HOST:PORT, not " + hostport};
  std::string host = hostport.substr(0, colon), port = hostport.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0)
    throw Failure{"connect_failed", "cannot resolve " + hostport + ": " + gai_strerror(rc)};
  std::string why = "no address";
  for (addrinfo* a = res; a && fd_ < 0; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    timeval tv{static_cast<time_t>(timeout_s), static_cast<suseconds_t>((timeout_s - std::floor(timeout_s)) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) fd_ = fd;
    else { why = std::strerror(errno); ::close(fd); }
  }
  freeaddrinfo(res);
  if (fd_ < 0) throw Failure{"connect_failed", "cannot connect to " + hostport + ": " + why};
}

Conn::~Conn() {
  if (fd_ >= 0) ::close(fd_);
}

size_t Conn::send(const std::string& header, const uint8_t* payload, size_t n) {
  uint8_t len[4] = {static_cast<uint8_t>(header.size() >> 24), static_cast<uint8_t>(header.size() >> 16),
                    static_cast<uint8_t>(header.size() >> 8), static_cast<uint8_t>(header.size())};
  std::string head(reinterpret_cast<char*>(len), 4);
  head += header;
  write_all(reinterpret_cast<const uint8_t*>(head.data()), head.size());
  write_all(payload, n);
  return head.size() + n;
}

JVal Conn::recv(std::vector<uint8_t>& payload, size_t& wire_bytes, size_t max_header) {
  uint8_t len[4];
  read_all(len, 4);
  size_t n = (size_t(len[0]) << 24) | (size_t(len[1]) << 16) | (size_t(len[2]) << 8) | size_t(len[3]);
  if (n > max_header)
    throw Failure{"split_protocol", "the server's message header of " + std::to_string(n) + " bytes is over the " +
                                        std::to_string(max_header) + "-byte limit"};
  std::string text(n, '\0');
  read_all(reinterpret_cast<uint8_t*>(text.data()), n);
  auto reply = edgeprobe::parse_reply(text);
  // read in chunks as they arrive: a lying "size" costs what the server really sends, not a 2 GiB buffer
  payload.clear();
  for (uint64_t left = reply.payload_size; left > 0;) {
    size_t k = static_cast<size_t>(std::min<uint64_t>(left, 1u << 20));
    size_t at = payload.size();
    payload.resize(at + k);
    read_all(payload.data() + at, k);
    left -= k;
  }
  wire_bytes = 4 + n + static_cast<size_t>(reply.payload_size);
  return reply.header;
}

void Conn::write_all(const uint8_t* p, size_t n) {
  while (n) {
    ssize_t k = ::send(fd_, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) throw Failure{"connection_lost", std::string("connection to the server lost while sending: ") + std::strerror(errno)};
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void Conn::read_all(uint8_t* p, size_t n) {
  while (n) {
    ssize_t k = ::recv(fd_, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) throw Failure{"connection_lost", "the server closed the connection"};
    if (k < 0) throw Failure{"connection_lost", std::string("connection to the server lost while receiving: ") + std::strerror(errno)};
    p += k;
    n -= static_cast<size_t>(k);
  }
}

namespace {

std::string random_hex32() {  // the client nonce CN: 32 random bytes, 64 lowercase hex
  uint8_t b[32];
  std::ifstream f("/dev/urandom", std::ios::binary);
  if (!f.read(reinterpret_cast<char*>(b), sizeof b)) throw Failure{"split_protocol", "cannot read 32 random bytes from /dev/urandom"};
  return edgeprobe::to_hex(b, sizeof b);
}

}  // namespace

void authenticate(Conn& conn, const std::string& server, const std::string& token) {
  constexpr const char* kService = "split";
  std::vector<uint8_t> none;
  size_t wire = 0;
  JVal challenge = conn.recv(none, wire, 4096);
  std::string sn = edgeprobe::parse_challenge(challenge, kService, server);
  std::string cn = random_hex32();
  std::string both = std::string("|") + kService + "|" + sn + "|" + cn;
  std::string mac_c = edgeprobe::to_hex(edgeprobe::hmac_sha256(token, "edgeprobe-auth-v1|client" + both));
  conn.send(dump(Json{{"op", "hello"}, {"nonce", cn}, {"mac", mac_c}}), nullptr, 0);
  JVal reply = conn.recv(none, wire);
  if (!edgeprobe::jget_true(reply, "ok"))
    throw Failure{"refused", server + " refused the connection: " + one_line(edgeprobe::jget_str(reply, "error", "no reason given"))};
  std::string mac_s = edgeprobe::to_hex(edgeprobe::hmac_sha256(token, "edgeprobe-auth-v1|server" + both));
  if (!edgeprobe::constant_time_equal(edgeprobe::jget_str(reply, "mac"), mac_s))
    throw Failure{"unauthenticated_server", "the server at " + server + " did not prove it holds the token; not talking to it"};
}

}  // namespace edgeprobe
