// libFuzzer target: a split server message header as the runner reads it (parsers.h parse_reply, then
// the challenge check and the number fields of a run reply), on the header's bytes.
#include "check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > edgeprobe::kMaxReplyHeader) return 0;  // the runner refuses longer headers before parsing
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto r = edgeprobe::parse_reply(text);
    if (r.payload_size > edgeprobe::kMaxReplyPayload) std::abort();
    for (const char* k : {"server_ms", "decode_ms", "encode_ms", "handle_ms"}) {
      auto v = edgeprobe::jget_num(r.header, k);
      if (v && !std::isfinite(*v)) std::abort();
    }
    (void)edgeprobe::jget_str(r.header, "error");
    std::string sn = edgeprobe::parse_challenge(r.header, "split", "127.0.0.1:1");
    if (!edgeprobe::is_hex64(sn)) std::abort();
  } catch (const edgeprobe::Failure& f) {
    check_failure(f);
  }
  return 0;
}
