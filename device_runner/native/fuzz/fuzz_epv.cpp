// libFuzzer target: the .epv test-vector parser (parsers.h parse_vectors), as the runner calls it on
// a file's bytes.
#include "check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto sets = edgeprobe::parse_vectors(data, size);
    for (auto& s : sets)
      for (auto* list : {&s.inputs, &s.expected})
        for (auto& t : *list) {  // what the parser promises the runner: data matches shape x dtype
          uint64_t numel = 1;
          for (auto d : t.sizes) numel *= static_cast<uint64_t>(d);
          if (numel * edgeprobe::item_bytes(t.dtype) != t.data.size()) std::abort();
        }
  } catch (const edgeprobe::Failure& f) {
    check_failure(f);
  }
  return 0;
}
