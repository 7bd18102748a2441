// libFuzzer target: the codec frame decoder (parsers.h decode_frame) the runner runs on the server's
// reply payload.
#include "check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto ts = edgeprobe::decode_frame(data, size);
    for (auto& t : ts) {
      uint64_t numel = 1;
      for (auto d : t.sizes) numel *= static_cast<uint64_t>(d);
      if (numel * edgeprobe::item_bytes(t.dtype) != t.data.size()) std::abort();
    }
  } catch (const edgeprobe::Failure& f) {
    check_failure(f);
  }
  return 0;
}
