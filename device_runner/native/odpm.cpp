// ODPM (Android power rails): raw `dumpsys` PowerStats text snapshots at the energy window edges.
#include "odpm.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "util.h"

namespace edgeprobe {

namespace {
constexpr const char* kOdpmService = "android.hardware.power.stats.IPowerStats/default";
constexpr size_t kOdpmMaxBytes = 64 * 1024;  // per snapshot; the energy meter section is last: keep the tail
}  // namespace

std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/system/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t colon = p.find(':', start);
    std::string dir = p.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    if (!dir.empty()) {
      std::string cand = dir + "/" + name;
      if (access(cand.c_str(), X_OK) == 0) return cand;
    }
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return "";
}

std::string utf8_clean(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && i < 3 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
  std::string o;
  o.reserve(s.size() - i);
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (ok) {
      o.append(s, i, n);
      i += n;
    } else {
      o += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return o;
}

Odpm::Odpm() : dumpsys_(find_on_path("dumpsys")) {
  if (dumpsys_.empty()) reason_ = "no dumpsys binary on PATH (not an Android device)";
}

void Odpm::snapshot(const char* window) {
  if (!active()) return;
  std::string cmd = "'" + dumpsys_ + "' " + kOdpmService + " 2>&1 </dev/null";
  auto t0 = Clock::now();
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) {
    reason_ = std::string(window) + ": cannot start dumpsys: " + std::strerror(errno);
    return;
  }
  std::string raw;
  size_t total = 0;
  char buf[8192];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) {
    raw.append(buf, n);
    total += n;
    if (raw.size() > 2 * kOdpmMaxBytes) raw.erase(0, raw.size() - kOdpmMaxBytes);
  }
  int st = pclose(p);
  auto t1 = Clock::now();
  if (raw.size() > kOdpmMaxBytes) raw.erase(0, raw.size() - kOdpmMaxBytes);
  std::string text = utf8_clean(raw);
  size_t lead = text.find_first_not_of(" \t\r\n");
  int rc = st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  if (rc != 0 || lead == std::string::npos || text.substr(0, 4096).find("Can't find service") != std::string::npos) {
    std::string first = lead == std::string::npos ? "" : text.substr(lead, std::min(text.find('\n', lead) - lead, size_t{200}));
    reason_ = std::string(window) + ": dumpsys " + kOdpmService + " exited " + std::to_string(rc) +
              (first.empty() ? " with no output" : ": " + first);
    return;
  }
  snapshots_.push_back(Json{{"window", window}, {"t_start_s", mono_s(t0)}, {"t_end_s", mono_s(t1)},
                            {"size_bytes", static_cast<long long>(total)}, {"truncated", total > kOdpmMaxBytes},
                            {"text", text}});
}

Json Odpm::block() const {
  std::string reason = !reason_.empty() ? reason_ : snapshots_.empty() ? "no snapshot was taken" : "";
  return Json{{"available", reason.empty()}, {"reason", reason.empty() ? Json(nullptr) : Json(reason)},
              {"service", kOdpmService}, {"snapshots", Json(snapshots_)}};
}

}  // namespace edgeprobe
