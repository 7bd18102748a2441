// Small shared helpers of the native runner: clocks, text files and sysfs, one-line messages, fault injection.
#include "util.h"

#include <dirent.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace edgeprobe {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

double mono_s(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

std::optional<std::string> read_text(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return std::nullopt;
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::optional<long long> read_ll(const std::string& path) {
  auto t = read_text(path);
  if (!t || t->empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(t->c_str(), &end, 10);
  if (end == t->c_str() || *end != '\0' || errno == ERANGE) return std::nullopt;  // garbled: not a reading
  return v;
}

std::vector<std::string> list_dir(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.rfind(prefix, 0) == 0) out.push_back(n);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::string sysfs_root() {
  const char* r = std::getenv("EDGEPROBE_SYSFS_ROOT");
  return r && *r ? r : "/sys";
}

std::string one_line(const std::string& s, size_t max) {
  std::string o = s.substr(0, max);
  for (char& c : o)
    if (c == '\n' || c == '\r') c = ' ';
  return o;
}

// EDGEPROBE_RUNNER_FAULT=timed_loop throws a std::runtime_error in the timed loop after its first
// iteration, where a meter's thread is running.
bool fault(const char* where) {
  const char* f = std::getenv("EDGEPROBE_RUNNER_FAULT");
  return f != nullptr && std::strcmp(f, where) == 0;
}

}  // namespace edgeprobe
