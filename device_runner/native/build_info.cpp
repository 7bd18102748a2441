// Which build of the runtime ran (PROTOCOL.md, runner.build). The runner links the executorch wheel's
// shared libraries (bundle lib/); XNNPACK's micro-kernels live in libexecutorch_backend_xnnpack.so, so
// that file, found among the objects this process has loaded (dl_iterate_phdr: the one the loader really
// chose, wherever it found it), is the one whose compilers the record names. A runner linked statically
// has no such object: then its own executable holds those objects' .comment strings and is read instead.
#include "build_info.h"

#include <link.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "elf_comment.h"
#include "util.h"

namespace edgeprobe {

namespace {

constexpr const char* kLibrary = "libexecutorch_backend_xnnpack";

std::string basename_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

int find_library(struct dl_phdr_info* info, size_t, void* data) {
  const char* name = info->dlpi_name;
  if (name && *name && basename_of(name).rfind(kLibrary, 0) == 0) {
    *static_cast<std::string*>(data) = name;
    return 1;
  }
  return 0;
}

}  // namespace

void add_build(Json& runner) {
  std::string path;
  dl_iterate_phdr(find_library, &path);
  std::string shown_name = basename_of(path);
  if (path.empty()) {
    path = "/proc/self/exe";  // linked statically: the executable carries the linked objects' .comment
    shown_name = "edgeprobe_runner";
  }
  runner["build"] = nullptr;
  runner["build_reason"] = nullptr;
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    runner["build_reason"] = one_line(shown_name + ": cannot open " + path, 300);
    return;
  }
  ElfRead read = [&f](uint64_t offset, uint64_t size) {
    std::string b(static_cast<size_t>(size), '\0');
    f.clear();
    f.seekg(static_cast<std::streamoff>(offset));
    f.read(&b[0], static_cast<std::streamsize>(size));
    b.resize(f ? static_cast<size_t>(size) : static_cast<size_t>(std::max<std::streamsize>(f.gcount(), 0)));
    return b;
  };
  try {
    std::vector<std::string> compilers = elf_comment_strings(read);
    if (compilers.empty()) {
      runner["build_reason"] = shown_name + " has no .comment section (stripped), so its compilers are unknown";
      return;
    }
    runner["build"] = Json{{"library", shown_name}, {"compilers", compilers}, {"source", ".comment"}};
  } catch (const Failure& e) {
    runner["build_reason"] = one_line(shown_name + ": " + e.message, 300);
  }
}

}  // namespace edgeprobe
