// Split mode (PROTOCOL.md, "Split mode"): the timed loop of head -> encode -> the tail on `edgeprobe serve` -> decode.
//
// The device half of a split: the head runs here, its first --split-send outputs go to `edgeprobe
// serve` (the tail) as one codec frame, the tail's outputs come back.
#include "split.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <optional>

#include "codec.h"
#include "record.h"
#include "tcp.h"
#include "util.h"

namespace edgeprobe {

namespace {

void write_file(const std::string& path, const uint8_t* p, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n));
  if (!f) throw Failure{"io_failed", "cannot write " + path};
}

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

std::vector<long long> run_split(const SplitArgs& sa, long warmup, long iterations,
                                 const std::function<std::vector<RawTensor>()>& head) {
  bool device_only = sa.server == "none";
  std::unique_ptr<Conn> conn;
  if (!device_only) {
    if (sa.token.empty())
      throw Failure{"usage", "split mode with a server needs its token: pass --split-token-file PATH or set EDGEPROBE_SPLIT_TOKEN"};
    if (sa.name.empty()) throw Failure{"usage", "--split-name is required with --split-server HOST:PORT"};
    if (sa.encoding != "fp32" && sa.encoding != "fp16" && sa.encoding != "int8")
      throw Failure{"usage", "--split-encoding must be fp32, fp16 or int8, not " + one_line(sa.encoding, 40)};
    conn = std::make_unique<Conn>(sa.server, sa.timeout_s);
    authenticate(*conn, sa.server, sa.token);
  }
  std::vector<long long> e2e;
  Json iters = Json::array();
  std::vector<RawTensor> outs;
  std::vector<uint8_t> reply_payload;
  size_t bytes_up = 0, bytes_down = 0, payload_up = 0;
  for (long i = 0; i < warmup + iterations; ++i) {
    auto t0 = Clock::now();
    outs = head();
    auto t1 = Clock::now();
    // device only: no encode, request, server or decode happened; those fields are null, not 0
    Json enc_ms, rt_ms, server_ms, sdec, senc, handle, net_ms, dec_ms;
    if (!device_only) {
      size_t k = sa.send < 0 ? outs.size() : std::min(outs.size(), static_cast<size_t>(sa.send));
      std::vector<RawTensor> acts(outs.begin(), outs.begin() + static_cast<long>(k));
      auto frame = encode_frame(acts, sa.encoding);
      auto t2 = Clock::now();
      std::string header = dump(Json{{"op", "run"}, {"name", sa.name}, {"encoding", sa.encoding},
                                     {"reply_encoding", "fp32"}, {"size", frame.size()}});
      bytes_up = conn->send(header, frame.data(), frame.size());
      payload_up = frame.size();
      auto reply = conn->recv(reply_payload, bytes_down);
      auto t3 = Clock::now();
      if (!jget_true(reply, "ok"))
        throw Failure{"server_error", "the server refused run '" + sa.name + "': " +
                                          one_line(jget_str(reply, "error", "no reason given"))};
      auto tail = decode_frame(reply_payload.data(), reply_payload.size());  // checked, as an app would
      auto t4 = Clock::now();
      (void)tail;
      // the server's own parts: required (a missing one is an error, never read as 0), handle_ms optional
      auto srv = jget_num(reply, "server_ms"), d = jget_num(reply, "decode_ms"), e = jget_num(reply, "encode_ms"),
           h = jget_num(reply, "handle_ms");
      for (auto [key, v] : {std::pair<const char*, const std::optional<double>*>{"server_ms", &srv}, {"decode_ms", &d}, {"encode_ms", &e}})
        if (!*v) throw Failure{"split_protocol", std::string("the server's run reply has no number '") + key + "' (an older or foreign server?)"};
      double rt = ms(t3 - t2);
      enc_ms = ms(t2 - t1);
      rt_ms = rt;
      server_ms = *srv;
      sdec = *d;
      senc = *e;
      handle = opt(h);
      net_ms = rt - *srv - *d - *e;
      dec_ms = ms(t4 - t3);
    }
    auto t5 = Clock::now();
    if (i < warmup) continue;
    e2e.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(t5 - t0).count());
    iters.push_back(Json{{"head_ms", ms(t1 - t0)}, {"encode_ms", enc_ms}, {"round_trip_ms", rt_ms},
                         {"server_ms", server_ms}, {"server_decode_ms", sdec}, {"server_encode_ms", senc},
                         {"server_handle_ms", handle}, {"network_ms", net_ms}, {"decode_ms", dec_ms},
                         {"e2e_ms", static_cast<double>(e2e.back()) / 1e6}, {"bytes_up", bytes_up},
                         {"bytes_down", bytes_down}});
  }
  auto head_frame = encode_frame(outs, "fp32");
  write_file(sa.outputs, head_frame.data(), head_frame.size());
  if (!device_only) write_file(sa.outputs + ".tail", reply_payload.data(), reply_payload.size());
  Json block = {{"schema_version", 1}, {"server", sa.server}, {"name", sa.name}, {"encoding", sa.encoding},
                {"reply_encoding", "fp32"}, {"warmup", warmup}, {"iterations", iters}, {"bytes_up", bytes_up},
                {"bytes_down", bytes_down}, {"payload_bytes_up", payload_up},
                {"payload_bytes_down", reply_payload.size()}, {"head_outputs_count", outs.size()},
                {"outputs_file", sa.outputs},
                {"tail_outputs_file", device_only ? Json(nullptr) : Json(sa.outputs + ".tail")}};
  std::string text = dump(block);
  write_file(sa.outputs + ".json", reinterpret_cast<const uint8_t*>(text.data()), text.size());
  return e2e;
}

}  // namespace edgeprobe
