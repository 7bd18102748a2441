// libFuzzer target: the ELF .comment reader (elf_comment.h elf_comment_strings), reading the input as the runner
// reads a library file: through bounded reads at offsets.
#include "check.h"

#include "../elf_comment.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  edgeprobe::ElfRead read = [&](uint64_t offset, uint64_t n) {
    if (offset >= size) return std::string();
    return std::string(reinterpret_cast<const char*>(data) + offset, std::min<uint64_t>(n, size - offset));
  };
  try {
    for (const auto& s : edgeprobe::elf_comment_strings(read))  // what the record gets: short printable lines
      for (char c : s)
        if (s.size() > edgeprobe::kElfMaxStringChars || static_cast<unsigned char>(c) < 0x20 || c == 0x7f) std::abort();
  } catch (const edgeprobe::Failure& f) {
    check_failure(f);
  }
  return 0;
}
