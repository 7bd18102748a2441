// The compiler identification strings in an ELF file's `.comment` section ("GCC: (GNU) 13.3.1 ...",
// "clang version 18.1.8 ..."): which build of the runtime ran (PROTOCOL.md, runner.build). The same
// bounded reader as edgeprobe_runner/build_info.py, written by hand because a device has no libelf or
// readelf to lean on and all it takes is the section header table and two sections.
//
// Header-only and free of ExecuTorch so that the fuzz target (fuzz/fuzz_elf.cpp) compiles exactly this
// code. Reads go through a callback, so a 500 MB library is never read whole; every count, size and
// offset is capped before anything is read or allocated; a malformed or truncated file ends in a
// `Failure` with a one-line message.

#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "parsers.h"

namespace edgeprobe {

// read(offset, size) -> exactly `size` bytes at `offset`, or a Failure when the file is shorter
using ElfRead = std::function<std::string(uint64_t, uint64_t)>;

constexpr uint64_t kElfMaxSections = 1u << 16;
constexpr uint64_t kElfMaxNameTable = 1u << 20;
constexpr uint64_t kElfMaxComment = 1u << 16;
constexpr uint64_t kElfMaxOffset = uint64_t{1} << 40;
constexpr size_t kElfMaxStrings = 32, kElfMaxStringChars = 200;

inline Failure elf_failure(const std::string& message) { return Failure{"bad_elf", message}; }

inline uint64_t elf_uint(const std::string& b, size_t at, size_t width, bool little) {
  uint64_t v = 0;
  for (size_t i = 0; i < width; ++i) {
    uint64_t byte = static_cast<unsigned char>(b[at + i]);
    v |= byte << (8 * (little ? i : width - 1 - i));
  }
  return v;
}

inline std::string elf_read(const ElfRead& read, uint64_t offset, uint64_t size, const char* what) {
  if (offset > kElfMaxOffset || size > kElfMaxOffset - offset)
    throw elf_failure(std::string(what) + ": offset " + std::to_string(offset) + " or size " + std::to_string(size) +
                      " out of range");
  std::string b = read(offset, size);
  if (b.size() != size) throw elf_failure(std::string(what) + ": the file ends before it (truncated)");
  return b;
}

// The distinct .comment strings in file order ([] when the file has no .comment: stripped).
inline std::vector<std::string> elf_comment_strings(const ElfRead& read) {
  std::string ident = elf_read(read, 0, 16, "ELF identification");
  if (ident.compare(0, 4, "\x7f" "ELF") != 0) throw elf_failure("not an ELF file (no \\x7fELF magic)");
  const int cls = static_cast<unsigned char>(ident[4]), enc = static_cast<unsigned char>(ident[5]);
  if ((cls != 1 && cls != 2) || (enc != 1 && enc != 2))
    throw elf_failure("unknown ELF class " + std::to_string(cls) + " or data encoding " + std::to_string(enc));
  const bool le = enc == 1, b64 = cls == 2;
  // ELF64: e_shoff @0x28 (8), e_shentsize/e_shnum/e_shstrndx @0x3A; ELF32: e_shoff @0x20 (4), @0x2E
  std::string hdr = elf_read(read, 0, b64 ? 0x40 : 0x34, "ELF header");
  const uint64_t shoff = elf_uint(hdr, b64 ? 0x28 : 0x20, b64 ? 8 : 4, le);
  const size_t at = b64 ? 0x3A : 0x2E;
  const uint64_t shentsize = elf_uint(hdr, at, 2, le);
  uint64_t shnum = elf_uint(hdr, at + 2, 2, le), shstrndx = elf_uint(hdr, at + 4, 2, le);
  const uint64_t want = b64 ? 64 : 40;  // bytes of a section header this reader uses
  if (shoff == 0) throw elf_failure("no section header table (e_shoff 0)");
  if (shentsize < want)
    throw elf_failure("section header entries of " + std::to_string(shentsize) + " bytes, at least " +
                      std::to_string(want) + " expected");
  struct Section {
    uint64_t name, type, offset, size, link;
  };
  auto header = [&](uint64_t i) {
    if (i > kElfMaxSections) throw elf_failure("section index out of range");
    std::string s = elf_read(read, shoff + i * shentsize, want, "section header");
    // sh_name @0, sh_type @4; ELF64: sh_offset @24, sh_size @32, sh_link @40; ELF32: @16, @20, @24
    return Section{elf_uint(s, 0, 4, le), elf_uint(s, 4, 4, le), elf_uint(s, b64 ? 24 : 16, b64 ? 8 : 4, le),
                   elf_uint(s, b64 ? 32 : 20, b64 ? 8 : 4, le), elf_uint(s, b64 ? 40 : 24, 4, le)};
  };
  if (shnum == 0 || shstrndx == 0xFFFF) {  // extended numbering: the real values live in section 0
    Section s0 = header(0);
    if (shnum == 0) shnum = s0.size;
    if (shstrndx == 0xFFFF) shstrndx = s0.link;
  }
  if (shnum == 0 || shnum > kElfMaxSections)
    throw elf_failure(std::to_string(shnum) + " section headers (at most " + std::to_string(kElfMaxSections) + " read)");
  if (shstrndx >= shnum)
    throw elf_failure("section name table index " + std::to_string(shstrndx) + " is past the " +
                      std::to_string(shnum) + " sections");
  Section names_hdr = header(shstrndx);
  if (names_hdr.size > kElfMaxNameTable)
    throw elf_failure("section name table of " + std::to_string(names_hdr.size) + " bytes (at most " +
                      std::to_string(kElfMaxNameTable) + " read)");
  std::string names = elf_read(read, names_hdr.offset, names_hdr.size, "section name table");
  for (uint64_t i = 0; i < shnum; ++i) {
    Section s = header(i);
    if (s.name >= names.size()) continue;
    size_t end = names.find('\0', s.name);
    if (names.compare(s.name, (end == std::string::npos ? names.size() : end) - s.name, ".comment") != 0) continue;
    if (s.type == 8) return {};  // SHT_NOBITS: no bytes in the file
    if (s.size > kElfMaxComment)
      throw elf_failure(".comment of " + std::to_string(s.size) + " bytes (at most " + std::to_string(kElfMaxComment) +
                        " read)");
    std::string raw = elf_read(read, s.offset, s.size, ".comment");
    std::vector<std::string> seen;
    size_t start = 0;
    while (start <= raw.size()) {
      size_t stop = raw.find('\0', start);
      if (stop == std::string::npos) stop = raw.size();
      std::string text;  // whitespace runs collapsed, control and non-ASCII bytes as '?': one record line
      for (size_t k = start; k < stop && text.size() < kElfMaxStringChars; ++k) {
        unsigned char c = static_cast<unsigned char>(raw[k]);
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
          if (!text.empty() && text.back() != ' ') text += ' ';
        } else {
          text += (c < 0x20 || c >= 0x7f) ? '?' : static_cast<char>(c);
        }
      }
      while (!text.empty() && text.back() == ' ') text.pop_back();
      bool dup = false;
      for (const auto& t : seen) dup = dup || t == text;
      if (!text.empty() && !dup && seen.size() < kElfMaxStrings) seen.push_back(text);
      start = stop + 1;
    }
    return seen;
  }
  return {};
}

}  // namespace edgeprobe
