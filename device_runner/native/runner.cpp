// edgeprobe native runner: loads a .pte with the ExecuTorch runtime, checks the outputs against
// test vectors, times iterations, reads peak RSS, energy meters and thermal zones, and writes one
// JSON record. The contract (arguments, order of work, record) is ../PROTOCOL.md.
//
// Kept deliberately thin: no model logic, no statistics (the host derives them from the raw
// per-iteration samples written here).

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/platform/runtime.h>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "parsers.h"
#include "sha256.h"

#ifdef EDGEPROBE_HAS_THREADPOOL
// The executorch 1.5.1 wheel ships libexecutorch_threadpool.so but not threadpool.h; these are
// the two exported members the runner calls (signatures as `nm -DC` lists them).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

#ifndef EDGEPROBE_EXECUTORCH_VERSION
#define EDGEPROBE_EXECUTORCH_VERSION "unknown"
#endif

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using edgeprobe::Failure;
using edgeprobe::item_bytes;
using edgeprobe::JVal;
using edgeprobe::RawTensor;
using edgeprobe::TestSet;

namespace {

constexpr const char* kVersion = "0.1.0";
constexpr int kSchemaVersion = 1;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ------------------------------------------------------------------ tiny JSON writer

std::string jstr(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += static_cast<char>(c);
        }
    }
  }
  return o + "\"";
}

std::string jnum(double v) {
  if (!std::isfinite(v)) return "null";
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

std::string jint(long long v) { return std::to_string(v); }
std::string jopt_int(std::optional<long long> v) { return v ? jint(*v) : "null"; }

struct Obj {  // builds {"k": v, ...} from already-encoded values
  std::vector<std::pair<std::string, std::string>> kv;
  Obj& add(const std::string& k, const std::string& v) {
    kv.emplace_back(k, v);
    return *this;
  }
  std::string str() const {
    std::string o = "{";
    for (size_t i = 0; i < kv.size(); ++i) o += (i ? ", " : "") + jstr(kv[i].first) + ": " + kv[i].second;
    return o + "}";
  }
};

// ------------------------------------------------------------------ files & sysfs

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

std::map<std::string, long long> proc_status() {  // VmRSS/VmHWM/VmSwap in bytes
  std::map<std::string, long long> out;
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    for (const char* key : {"VmRSS", "VmHWM", "VmSwap"}) {
      std::string k = std::string(key) + ":";
      if (line.rfind(k, 0) == 0) out[key] = std::atoll(line.c_str() + k.size()) * 1024;
    }
  }
  return out;
}

std::optional<long long> get(const std::map<std::string, long long>& m, const char* k) {
  auto it = m.find(k);
  if (it == m.end()) return std::nullopt;
  return it->second;
}

std::map<std::string, double> thermal_zones() {
  std::map<std::string, double> out;
  std::string base = sysfs_root() + "/class/thermal";
  for (auto& z : list_dir(base, "thermal_zone")) {
    auto t = read_ll(base + "/" + z + "/temp");
    if (!t) continue;
    auto type = read_text(base + "/" + z + "/type");
    out[z + ":" + (type ? *type : "unknown")] = *t / 1000.0;
  }
  return out;
}

std::string thermal_block(const std::map<std::string, double>& before, const std::map<std::string, double>& after) {
  if (before.empty() && after.empty())
    return Obj().add("available", "false")
        .add("reason", jstr("no readable thermal zones under " + sysfs_root() + "/class/thermal")).str();
  auto m2j = [](const std::map<std::string, double>& m) {
    Obj o;
    for (auto& [k, v] : m) o.add(k, jnum(v));
    return o.str();
  };
  return Obj().add("available", "true").add("reason", "null").add("before_c", m2j(before)).add("after_c", m2j(after)).str();
}

// ------------------------------------------------------------------ energy meters

// Every meter first measures an idle baseline (`idle_s` seconds asleep, after warm-up) and then
// the timed loop. The windows are reported as CLOCK_MONOTONIC seconds so that samples, and any
// external meter, can be lined up with them. Battery samples are reported raw: the host
// calibrates sign and unit and derives power, energy per inference and its uncertainty.

double mono_s(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

// `mark` is called at the window edges ("idle_start", "run_start", "run_end") so that ODPM
// snapshots (below) are taken between the windows, counted in neither; null when there is none.
using Mark = std::function<void(const char*)>;

class EnergyMeter {
 public:
  virtual ~EnergyMeter() = default;
  virtual void begin(double idle_s, const Mark& mark) = 0;  // idle baseline, then the run window starts
  virtual std::string end(const Mark& mark) = 0;           // the JSON energy block
};

class Unavailable : public EnergyMeter {
 public:
  explicit Unavailable(std::string reason) : reason_(std::move(reason)) {}
  void begin(double idle_s, const Mark& mark) override {
    if (!mark) return;  // another meter (ODPM) measures: give it the same idle baseline
    if (idle_s > 0) {
      mark("idle_start");
      std::this_thread::sleep_for(std::chrono::duration<double>(idle_s));
    }
    mark("run_start");
  }
  std::string end(const Mark& mark) override {
    if (mark) mark("run_end");
    return Obj().add("available", "false").add("reason", jstr(reason_)).str();
  }

 private:
  std::string reason_;
};

// The idle window is [idle_start_s, idle_end_s); idle_end_s < run_start_s only when an ODPM
// snapshot ran between the two windows.
std::string window_json(Clock::time_point idle0, Clock::time_point idle1, Clock::time_point run0,
                        Clock::time_point run1) {
  return Obj().add("idle_start_s", jnum(mono_s(idle0))).add("idle_end_s", jnum(mono_s(idle1)))
      .add("run_start_s", jnum(mono_s(run0))).add("run_end_s", jnum(mono_s(run1))).str();
}

// Linux powercap energy counters (µJ), read at the window edges. A counter that cannot be read at an
// edge (vanished, unreadable, garbled), or one that wrapped without a readable max_energy_range_uj,
// makes the whole block unavailable with the reason: never a 0 read and "unwrapped" into a number.
class Rapl : public EnergyMeter {
 public:
  explicit Rapl(std::vector<std::string> domains) : domains_(std::move(domains)) {}
  std::vector<long long> counters(const char* edge) {
    std::vector<long long> c;
    for (auto& d : domains_) {
      auto v = read_ll(d + "/energy_uj");
      if (!v && reason_.empty()) reason_ = "RAPL counter " + d + "/energy_uj could not be read at " + edge;
      c.push_back(v.value_or(0));
    }
    return c;
  }
  double delta_j(size_t i, long long a, long long b) {
    long long delta = b - a;
    if (delta < 0) {  // wrapped
      auto range = read_ll(domains_[i] + "/max_energy_range_uj");
      if (!range || *range <= 0) {
        if (reason_.empty())
          reason_ = "RAPL counter " + domains_[i] + "/energy_uj went down and max_energy_range_uj is unreadable, so the wrap cannot be undone";
        return 0;
      }
      delta += *range;
      if (delta < 0 && reason_.empty()) reason_ = "RAPL counter " + domains_[i] + "/energy_uj went down by more than its range";
    }
    return delta / 1e6;
  }
  void begin(double idle_s, const Mark& mark) override {
    if (mark && idle_s > 0) mark("idle_start");
    idle0_ = Clock::now();
    if (idle_s > 0) {
      auto c0 = counters("idle_start");
      std::this_thread::sleep_for(std::chrono::duration<double>(idle_s));
      auto c1 = counters("idle_end");
      idle_j_ = 0;
      for (size_t i = 0; i < domains_.size(); ++i) idle_j_ += delta_j(i, c0[i], c1[i]);
      idle_dt_ = ms_since(idle0_) / 1000.0;
    }
    idle1_ = Clock::now();
    if (mark) mark("run_start");
    start_ = counters("run_start");
    t0_ = Clock::now();
  }
  std::string end(const Mark& mark) override {
    auto end = counters("run_end");
    auto t1 = Clock::now();
    if (mark) mark("run_end");
    double dt = std::chrono::duration<double>(t1 - t0_).count();
    Obj domains;
    double total = 0;
    for (size_t i = 0; i < domains_.size() && reason_.empty(); ++i) {
      double j = delta_j(i, start_[i], end[i]);
      std::string base = domains_[i].substr(domains_[i].rfind('/') + 1);
      auto name = read_text(domains_[i] + "/name");
      domains.add(base + ":" + (name ? *name : base), jnum(j));
      total += j;
    }
    if (!reason_.empty())
      return Obj().add("available", "false").add("reason", jstr(reason_)).add("meter", jstr("rapl")).str();
    return Obj().add("available", "true").add("reason", "null").add("meter", jstr("rapl"))
        .add("energy_j", jnum(total)).add("duration_s", jnum(dt)).add("samples", "2")
        .add("method", jstr("powercap energy counter delta")).add("domains", domains.str())
        .add("idle_energy_j", idle_dt_ > 0 ? jnum(idle_j_) : "null")
        .add("idle_duration_s", idle_dt_ > 0 ? jnum(idle_dt_) : "null")
        .add("window", window_json(idle0_, idle1_, t0_, t1)).str();
  }

 private:
  std::vector<std::string> domains_;
  std::vector<long long> start_;
  std::string reason_;  // set at the first counter that could not be read or unwrapped
  Clock::time_point idle0_, idle1_, t0_;
  double idle_j_ = 0, idle_dt_ = 0;
};

class Battery : public EnergyMeter {  // raw current_now / voltage_now, sampled every 10 ms
 public:
  explicit Battery(std::string supply) : supply_(std::move(supply)) {}
  void begin(double idle_s, const Mark& mark) override {
    stop_ = false;
    if (mark && idle_s > 0) mark("idle_start");
    idle0_ = Clock::now();
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        auto t0 = Clock::now();
        auto i = read_ll(supply_ + "/current_now");
        auto v = read_ll(supply_ + "/voltage_now");
        auto t1 = Clock::now();
        if (t1 - t0 > std::chrono::milliseconds(5)) ++dropped_;  // descheduled mid-read: time unknown
        else if (i && v) raw_.push_back("[" + jnum((mono_s(t0) + mono_s(t1)) / 2) + ", " + jint(*i) + ", " + jint(*v) + "]");
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
    if (idle_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(idle_s));
    idle1_ = Clock::now();
    if (mark) mark("run_start");
    t0_ = Clock::now();
  }
  // The sampler is stopped and joined here too: a run that ends in an exception between begin() and
  // end() destroys the meter during unwinding, and a joinable std::thread destroyed would terminate.
  ~Battery() override { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::string end(const Mark& mark) override {
    auto t1 = Clock::now();
    if (mark) mark("run_end");  // while the sampler runs on, like the Python runner's
    stop();
    std::string name = supply_.substr(supply_.rfind('/') + 1);
    std::string arr = "[";
    for (size_t k = 0; k < raw_.size(); ++k) arr += (k ? ", " : "") + raw_[k];
    auto status = read_text(supply_ + "/status");
    // A charger online (usb/ac/wireless supply with online = 1) feeds the battery current too.
    std::string charger = "null";
    std::string ps = supply_.substr(0, supply_.rfind('/'));
    for (auto& n : list_dir(ps, "")) {
      if (n == "." || n == ".." || ps + "/" + n == supply_) continue;
      auto online = read_ll(ps + "/" + n + "/online");
      if (!online) continue;
      if (*online) { charger = "true"; break; }
      charger = "false";
    }
    return Obj().add("available", "true").add("reason", "null").add("meter", jstr("battery"))
        .add("energy_j", "null").add("duration_s", jnum(std::chrono::duration<double>(t1 - t0_).count()))
        .add("samples", jint(static_cast<long long>(raw_.size()))).add("samples_dropped", jint(dropped_))
        .add("method", jstr("current_now x voltage_now sampled every 10 ms; raw, calibrated on the host"))
        .add("domains", Obj().str()).add("window", window_json(idle0_, idle1_, t0_, t1))
        .add("supply", jstr(name)).add("supply_status", status ? jstr(*status) : "null")
        .add("charger_online", charger).add("raw_samples", arr + "]").str();
  }

 private:
  std::string supply_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::vector<std::string> raw_;
  long long dropped_ = 0;
  Clock::time_point idle0_, idle1_, t0_;
};

std::unique_ptr<EnergyMeter> energy_meter() {
  std::string root = sysfs_root();
  std::string pc = root + "/class/powercap";
  std::vector<std::string> domains;
  for (auto& n : list_dir(pc, "intel-rapl:")) {
    if (std::count(n.begin(), n.end(), ':') != 1) continue;  // package domains only
    std::string d = pc + "/" + n;
    if (access((d + "/energy_uj").c_str(), F_OK) == 0) domains.push_back(d);
  }
  if (!domains.empty()) {
    for (auto& d : domains)
      if (!read_ll(d + "/energy_uj"))
        return std::make_unique<Unavailable>("RAPL energy_uj under " + pc + " is not readable (permission denied?)");
    return std::make_unique<Rapl>(domains);
  }
  std::string ps = root + "/class/power_supply";
  for (auto& n : list_dir(ps, "")) {
    if (n == "." || n == "..") continue;
    std::string s = ps + "/" + n;
    if (read_text(s + "/type") == std::optional<std::string>("Battery") && read_ll(s + "/current_now") &&
        read_ll(s + "/voltage_now"))
      return std::make_unique<Battery>(s);
  }
  return std::make_unique<Unavailable>("no powercap/RAPL counters and no battery current_now/voltage_now under " + root);
}

// ------------------------------------------------------------------ ODPM (Android power rails)

// Raw `dumpsys android.hardware.power.stats.IPowerStats/default` text at the window edges: the
// PowerStats HAL prints the On-Device Power Monitor rails' cumulative energy there (Pixel 6 and
// later). Not parsed here; the host parses it (edgeprobe/odpm.py documents the format). The
// first call doubles as the probe: no dumpsys on PATH, a non-zero exit, no output or "Can't find
// service" makes the block unavailable with the reason, and no further calls are made.
constexpr const char* kOdpmService = "android.hardware.power.stats.IPowerStats/default";
constexpr size_t kOdpmMaxBytes = 64 * 1024;  // per snapshot; the energy meter section is last: keep the tail

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

// Valid UTF-8 for the JSON record: a cut leading character is dropped (as the Python runner does),
// any other invalid byte becomes U+FFFD.
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

class Odpm {
 public:
  Odpm() : dumpsys_(find_on_path("dumpsys")) {
    if (dumpsys_.empty()) reason_ = "no dumpsys binary on PATH (not an Android device)";
  }
  bool active() const { return reason_.empty(); }
  void snapshot(const char* window) {
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
    snapshots_.push_back(Obj().add("window", jstr(window)).add("t_start_s", jnum(mono_s(t0)))
                             .add("t_end_s", jnum(mono_s(t1))).add("size_bytes", jint(static_cast<long long>(total)))
                             .add("truncated", total > kOdpmMaxBytes ? "true" : "false").add("text", jstr(text)).str());
  }
  std::string block() const {
    std::string reason = !reason_.empty() ? reason_ : snapshots_.empty() ? "no snapshot was taken" : "";
    std::string arr = "[";
    for (size_t k = 0; k < snapshots_.size(); ++k) arr += (k ? ", " : "") + snapshots_[k];
    return Obj().add("available", reason.empty() ? "true" : "false").add("reason", reason.empty() ? "null" : jstr(reason))
        .add("service", jstr(kOdpmService)).add("snapshots", arr + "]").str();
  }

 private:
  std::string dumpsys_, reason_;
  std::vector<std::string> snapshots_;
};

std::string environment_block() {
  utsname u{};
  uname(&u);
  std::string cpu;
  if (auto info = read_text("/proc/cpuinfo")) {
    for (const char* key : {"model name", "Hardware", "CPU part"}) {
      std::istringstream ss(*info);
      std::string line;
      while (std::getline(ss, line)) {
        if (line.rfind(key, 0) == 0 && line.find(':') != std::string::npos) {
          cpu = line.substr(line.find(':') + 1);
          cpu.erase(0, cpu.find_first_not_of(" \t"));
          break;
        }
      }
      if (!cpu.empty()) break;
    }
  }
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  return Obj().add("os", jstr(u.sysname)).add("kernel", jstr(u.release)).add("machine", jstr(u.machine))
      .add("cpu_model", cpu.empty() ? "null" : jstr(cpu))
      .add("cores", jint(std::thread::hardware_concurrency())).add("hostname", jstr(host)).str();
}

// ------------------------------------------------------------------ test vectors (.epv)

// The whole file, at most kMaxVectorsBytes, parsed by parsers.h (every count checked against the
// bytes the file really has).
constexpr uint64_t kMaxVectorsBytes = 1ull << 31;

std::vector<TestSet> read_vectors(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw Failure{"bad_vectors", "cannot open vectors file " + path};
  std::streamoff size = f.tellg();
  if (size < 0) throw Failure{"bad_vectors", "cannot read the size of vectors file " + path};
  if (static_cast<uint64_t>(size) > kMaxVectorsBytes)
    throw Failure{"bad_vectors", "vectors file " + path + " is " + std::to_string(size) + " bytes, over the " +
                                     std::to_string(kMaxVectorsBytes) + "-byte limit"};
  std::vector<uint8_t> data(static_cast<size_t>(size));
  f.seekg(0);
  if (size > 0 && !f.read(reinterpret_cast<char*>(data.data()), size))
    throw Failure{"bad_vectors", "cannot read vectors file " + path};
  return edgeprobe::parse_vectors(data.data(), data.size());
}

void write_vectors(const std::string& path, const std::vector<RawTensor>& inputs, const std::vector<RawTensor>& outputs) {
  std::ofstream f(path, std::ios::binary);
  auto put = [&f](const void* p, size_t n) { f.write(static_cast<const char*>(p), static_cast<std::streamsize>(n)); };
  auto tensor = [&](const RawTensor& t) {
    uint32_t hdr[2] = {t.dtype, static_cast<uint32_t>(t.sizes.size())};
    put(hdr, sizeof hdr);
    put(t.sizes.data(), t.sizes.size() * sizeof(int64_t));
    uint64_t n = t.data.size();
    put(&n, sizeof n);
    put(t.data.data(), t.data.size());
  };
  put("EPVEC001", 8);
  uint32_t one = 1, n_in = static_cast<uint32_t>(inputs.size()), n_out = static_cast<uint32_t>(outputs.size());
  put(&one, 4);
  put(&n_in, 4);
  for (auto& t : inputs) tensor(t);
  put(&n_out, 4);
  for (auto& t : outputs) tensor(t);
  if (!f) throw Failure{"io_failed", "cannot write " + path};
}

TensorPtr to_tensor(RawTensor& t) {
  std::vector<executorch::aten::SizesType> sizes(t.sizes.begin(), t.sizes.end());
  return executorch::extension::make_tensor_ptr(sizes, t.data.data(), static_cast<ScalarType>(t.dtype));
}

RawTensor from_tensor(const executorch::aten::Tensor& t) {
  RawTensor r;
  r.dtype = static_cast<uint32_t>(t.scalar_type());
  for (auto s : t.sizes()) r.sizes.push_back(s);
  const uint8_t* p = static_cast<const uint8_t*>(t.const_data_ptr());
  r.data.assign(p, p + t.nbytes());
  return r;
}

double as_double(uint32_t dtype, const uint8_t* p) {
  switch (dtype) {
    case 0: return *p;
    case 1: return static_cast<int8_t>(*p);
    case 11: return *p ? 1 : 0;
    case 2: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case 3: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case 4: { int64_t v; std::memcpy(&v, p, 8); return static_cast<double>(v); }
    case 6: { float v; std::memcpy(&v, p, 4); return v; }
    case 7: { double v; std::memcpy(&v, p, 8); return v; }
    case 15: { uint16_t h; std::memcpy(&h, p, 2); uint32_t b = static_cast<uint32_t>(h) << 16; float v; std::memcpy(&v, &b, 4); return v; }
    case 5: {
      uint16_t h; std::memcpy(&h, p, 2);
      int e = (h >> 10) & 0x1f, m = h & 0x3ff; double s = (h & 0x8000) ? -1 : 1;
      if (e == 0) return s * std::ldexp(m, -24);
      if (e == 31) return m ? NAN : s * INFINITY;
      return s * std::ldexp(m + 1024, e - 25);
    }
    default: return NAN;
  }
}

// Returns an empty string when every element is within atol + rtol*|e|; else what differs.
std::string compare(const RawTensor& a, const RawTensor& e, double rtol, double atol, double& worst) {
  if (a.dtype != e.dtype) return "dtype code " + std::to_string(a.dtype) + ", expected " + std::to_string(e.dtype);
  if (a.sizes != e.sizes) return "shape differs from the expected output";
  size_t item = item_bytes(e.dtype), n = e.data.size() / item;
  bool bad = false;
  for (size_t i = 0; i < n; ++i) {
    double x = as_double(a.dtype, a.data.data() + i * item), y = as_double(e.dtype, e.data.data() + i * item);
    if (std::isnan(x) || std::isnan(y)) {
      if (std::isnan(x) != std::isnan(y)) bad = true;
      continue;
    }
    double d = std::fabs(x - y);
    worst = std::max(worst, d);
    if (d > atol + rtol * std::fabs(y)) bad = true;
  }
  if (!bad) return "";
  char b[160];
  std::snprintf(b, sizeof b, "differs from the expected output (max |a-e| = %.3g, atol=%.3g, rtol=%.3g)", worst, atol, rtol);
  return b;
}

// ------------------------------------------------------------------ arguments

// ------------------------------------------------------------------ split mode (PROTOCOL.md, "Split mode")
// The device half of a split: the head runs here, its first --split-send outputs go to `edgeprobe
// serve` (the tail) as one codec frame, the tail's outputs come back. Written by hand: the wire codec
// (edgeprobe_runner/codec.py) and the framing (edgeprobe_runner/server.py) are edgeprobe's own.

class Conn {  // one TCP connection to `edgeprobe serve`, with the runner framing
 public:
  Conn(const std::string& hostport, double timeout_s) {
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
  ~Conn() { if (fd_ >= 0) ::close(fd_); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // header JSON + payload; returns the bytes put on the connection
  size_t send(const std::string& header, const uint8_t* payload, size_t n) {
    uint8_t len[4] = {static_cast<uint8_t>(header.size() >> 24), static_cast<uint8_t>(header.size() >> 16),
                      static_cast<uint8_t>(header.size() >> 8), static_cast<uint8_t>(header.size())};
    std::string head(reinterpret_cast<char*>(len), 4);
    head += header;
    write_all(reinterpret_cast<const uint8_t*>(head.data()), head.size());
    write_all(payload, n);
    return head.size() + n;
  }
  // a reply: its header (parsed, and its raw size with the length prefix) and payload ("size" bytes when
  // ok); `max_header` is 4096 before authentication (the server's own limit), 1 MiB after
  JVal recv(std::vector<uint8_t>& payload, size_t& wire_bytes, size_t max_header = edgeprobe::kMaxReplyHeader) {
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

 private:
  void write_all(const uint8_t* p, size_t n) {
    while (n) {
      ssize_t k = ::send(fd_, p, n, MSG_NOSIGNAL);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) throw Failure{"connection_lost", std::string("connection to the server lost while sending: ") + std::strerror(errno)};
      p += k;
      n -= static_cast<size_t>(k);
    }
  }
  void read_all(uint8_t* p, size_t n) {
    while (n) {
      ssize_t k = ::recv(fd_, p, n, 0);
      if (k < 0 && errno == EINTR) continue;
      if (k == 0) throw Failure{"connection_lost", "the server closed the connection"};
      if (k < 0) throw Failure{"connection_lost", std::string("connection to the server lost while receiving: ") + std::strerror(errno)};
      p += k;
      n -= static_cast<size_t>(k);
    }
  }
  int fd_ = -1;
};

const char* codec_dtype(uint32_t code) {
  switch (code) {
    case 0: return "uint8";
    case 1: return "int8";
    case 2: return "int16";
    case 3: return "int32";
    case 4: return "int64";
    case 5: return "float16";
    case 6: return "float32";
    case 7: return "float64";
    case 11: return "bool";
    case 15: return "bfloat16";
    default: throw Failure{"unsupported", "the wire codec has no dtype for ScalarType " + std::to_string(code)};
  }
}

uint16_t to_half(float f) {  // IEEE binary16, round to nearest even (after clamping to +-65504)
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u, mant = x & 0x7fffffu;
  int exp = static_cast<int>((x >> 23) & 0xff);
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
  int e = exp - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    int shift = 14 - e;
    uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13), rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// codec.encode(tensors, encoding): "EPW1", u32 header length, JSON header padded to the width it has
// with the widest scale/zero-point texts (so the frame size depends on shapes alone), payloads.
std::vector<uint8_t> encode_frame(const std::vector<RawTensor>& ts, const std::string& enc) {
  std::string entries, widest;
  std::vector<std::vector<uint8_t>> payloads;
  for (size_t i = 0; i < ts.size(); ++i) {
    const RawTensor& t = ts[i];
    const char* dtype = codec_dtype(t.dtype);
    bool floating = t.dtype == 5 || t.dtype == 6 || t.dtype == 7 || t.dtype == 15;
    std::string eff = (enc == "fp16" && t.dtype == 6) ? "fp16" : (enc == "int8" && floating) ? "int8" : "raw";
    size_t numel = t.data.size() / item_bytes(t.dtype);
    std::vector<uint8_t> data;
    std::string scale_text = "null", zp_text = "null";
    if (eff == "fp16") {
      data.resize(numel * 2);
      for (size_t k = 0; k < numel; ++k) {
        float v;
        std::memcpy(&v, t.data.data() + 4 * k, 4);
        v = std::isnan(v) ? v : std::min(65504.0f, std::max(-65504.0f, v));
        uint16_t h = to_half(v);
        std::memcpy(data.data() + 2 * k, &h, 2);
      }
    } else if (eff == "int8") {
      if (t.dtype != 6 && t.dtype != 7) throw Failure{"unsupported", std::string("int8 encoding of ") + dtype + " is not built in the native runner"};
      std::vector<float> x(numel);
      for (size_t k = 0; k < numel; ++k) {
        if (t.dtype == 6) std::memcpy(&x[k], t.data.data() + 4 * k, 4);
        else { double d; std::memcpy(&d, t.data.data() + 8 * k, 8); x[k] = static_cast<float>(d); }
      }
      float lo = 0, hi = 0;
      for (float v : x) {
        if (!std::isfinite(v)) throw Failure{"encode_failed", "int8 encoding needs finite values (the tensor holds inf or nan)"};
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      float scale = static_cast<float>((static_cast<double>(hi) - lo) / 255.0);
      if (scale == 0.0f) scale = 1.0f;
      long zp = std::lrint(-128.0 - static_cast<double>(lo) / static_cast<double>(scale));
      zp = std::max(-128L, std::min(127L, zp));
      data.resize(numel);
      for (size_t k = 0; k < numel; ++k) {
        float q = std::nearbyint(x[k] / scale) + static_cast<float>(zp);
        data[k] = static_cast<uint8_t>(static_cast<int8_t>(std::max(-128.0f, std::min(127.0f, q))));
      }
      scale_text = jnum(static_cast<double>(scale));
      zp_text = std::to_string(zp);
    } else {
      data = t.data;
    }
    std::string shape = "[";
    for (size_t d = 0; d < t.sizes.size(); ++d) shape += (d ? "," : "") + std::to_string(t.sizes[d]);
    shape += "]";
    auto entry = [&](const std::string& sc, const std::string& z) {
      return std::string("{\"dtype\":\"") + dtype + "\",\"shape\":" + shape + ",\"encoding\":\"" + eff +
             "\",\"scale\":" + sc + ",\"zero_point\":" + z + ",\"nbytes\":" + std::to_string(data.size()) + "}";
    };
    entries += (i ? "," : "") + entry(scale_text, zp_text);
    widest += (i ? "," : "") + (eff == "int8" ? entry("-2.2250738585072014e-308", "-128") : entry("null", "null"));
    payloads.push_back(std::move(data));
  }
  std::string header = "{\"tensors\":[" + entries + "]}", cap = "{\"tensors\":[" + widest + "]}";
  if (header.size() > cap.size()) throw Failure{"encode_failed", "codec header wider than its capacity"};
  header.append(cap.size() - header.size(), ' ');
  std::vector<uint8_t> out = {'E', 'P', 'W', '1'};
  uint32_t hl = static_cast<uint32_t>(header.size());
  for (int k = 0; k < 4; ++k) out.push_back(static_cast<uint8_t>(hl >> (8 * k)));
  out.insert(out.end(), header.begin(), header.end());
  for (auto& p : payloads) out.insert(out.end(), p.begin(), p.end());
  return out;
}

void write_file(const std::string& path, const uint8_t* p, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(p), static_cast<std::streamsize>(n));
  if (!f) throw Failure{"io_failed", "cannot write " + path};
}

struct SplitArgs {
  std::string server, token, name, encoding = "fp32", outputs;
  long send = -1;  // -1: send every head output
  bool send_inputs = false;  // cloud only: send the inputs themselves, the program is not run in the loop
  double timeout_s = 60;
};

// A message from outside, fit for a one-line error: newlines folded, at most `max` bytes.
std::string one_line(const std::string& s, size_t max = 200) {
  std::string o = s.substr(0, max);
  for (char& c : o)
    if (c == '\n' || c == '\r') c = ' ';
  return o;
}

std::string random_hex32() {  // the client nonce CN: 32 random bytes, 64 lowercase hex
  uint8_t b[32];
  std::ifstream f("/dev/urandom", std::ios::binary);
  if (!f.read(reinterpret_cast<char*>(b), sizeof b)) throw Failure{"split_protocol", "cannot read 32 random bytes from /dev/urandom"};
  return edgeprobe::to_hex(b, sizeof b);
}

// The v2 handshake (PROTOCOL.md, "Split mode"): the server's challenge, our MAC over both nonces, then
// the server's MAC, checked in constant time before anything else is sent. The token never leaves.
void authenticate(Conn& conn, const std::string& server, const std::string& token) {
  constexpr const char* kService = "split";
  std::vector<uint8_t> none;
  size_t wire = 0;
  JVal challenge = conn.recv(none, wire, 4096);
  std::string sn = edgeprobe::parse_challenge(challenge, kService, server);
  std::string cn = random_hex32();
  std::string both = std::string("|") + kService + "|" + sn + "|" + cn;
  std::string mac_c = edgeprobe::to_hex(edgeprobe::hmac_sha256(token, "edgeprobe-auth-v1|client" + both));
  conn.send("{\"op\": \"hello\", \"nonce\": " + jstr(cn) + ", \"mac\": " + jstr(mac_c) + "}", nullptr, 0);
  JVal reply = conn.recv(none, wire);
  if (!edgeprobe::jget_true(reply, "ok"))
    throw Failure{"refused", server + " refused the connection: " + one_line(edgeprobe::jget_str(reply, "error", "no reason given"))};
  std::string mac_s = edgeprobe::to_hex(edgeprobe::hmac_sha256(token, "edgeprobe-auth-v1|server" + both));
  if (!edgeprobe::constant_time_equal(edgeprobe::jget_str(reply, "mac"), mac_s))
    throw Failure{"unauthenticated_server", "the server at " + server + " did not prove it holds the token; not talking to it"};
}

// warmup + iterations of head -> encode -> run request -> reply -> decode; writes the per-iteration split
// times to <outputs>.json, the head's outputs (codec fp32) to <outputs> and the tail's reply frame (as it
// came) to <outputs>.tail. Returns the e2e nanoseconds per timed iteration.
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
  std::string iters = "[";
  std::vector<RawTensor> outs;
  std::vector<uint8_t> reply_payload;
  size_t bytes_up = 0, bytes_down = 0, payload_up = 0;
  for (long i = 0; i < warmup + iterations; ++i) {
    auto t0 = Clock::now();
    outs = head();
    auto t1 = Clock::now();
    // device only: no encode, request, server or decode happened; those fields are null, not 0
    std::string enc_ms = "null", rt_ms = "null", server_ms = "null", sdec = "null", senc = "null", handle = "null",
                net_ms = "null", dec_ms = "null";
    if (!device_only) {
      size_t k = sa.send < 0 ? outs.size() : std::min(outs.size(), static_cast<size_t>(sa.send));
      std::vector<RawTensor> acts(outs.begin(), outs.begin() + static_cast<long>(k));
      auto frame = encode_frame(acts, sa.encoding);
      auto t2 = Clock::now();
      std::string header = "{\"op\": \"run\", \"name\": " + jstr(sa.name) + ", \"encoding\": " + jstr(sa.encoding) +
                           ", \"reply_encoding\": \"fp32\", \"size\": " + std::to_string(frame.size()) + "}";
      bytes_up = conn->send(header, frame.data(), frame.size());
      payload_up = frame.size();
      auto reply = conn->recv(reply_payload, bytes_down);
      auto t3 = Clock::now();
      if (!edgeprobe::jget_true(reply, "ok"))
        throw Failure{"server_error", "the server refused run '" + sa.name + "': " +
                                          one_line(edgeprobe::jget_str(reply, "error", "no reason given"))};
      auto tail = edgeprobe::decode_frame(reply_payload.data(), reply_payload.size());  // checked, as an app would
      auto t4 = Clock::now();
      (void)tail;
      // the server's own parts: required (a missing one is an error, never read as 0), handle_ms optional
      auto srv = edgeprobe::jget_num(reply, "server_ms"), d = edgeprobe::jget_num(reply, "decode_ms"),
           e = edgeprobe::jget_num(reply, "encode_ms"), h = edgeprobe::jget_num(reply, "handle_ms");
      for (auto [key, v] : {std::pair<const char*, const std::optional<double>*>{"server_ms", &srv}, {"decode_ms", &d}, {"encode_ms", &e}})
        if (!*v) throw Failure{"split_protocol", std::string("the server's run reply has no number '") + key + "' (an older or foreign server?)"};
      double rt = std::chrono::duration<double, std::milli>(t3 - t2).count();
      enc_ms = jnum(std::chrono::duration<double, std::milli>(t2 - t1).count());
      rt_ms = jnum(rt);
      server_ms = jnum(*srv);
      sdec = jnum(*d);
      senc = jnum(*e);
      handle = h ? jnum(*h) : "null";
      net_ms = jnum(rt - *srv - *d - *e);
      dec_ms = jnum(std::chrono::duration<double, std::milli>(t4 - t3).count());
    }
    auto t5 = Clock::now();
    if (i < warmup) continue;
    e2e.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(t5 - t0).count());
    double head_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    iters += (iters.size() > 1 ? ", " : "") +
             Obj().add("head_ms", jnum(head_ms)).add("encode_ms", enc_ms).add("round_trip_ms", rt_ms)
                 .add("server_ms", server_ms).add("server_decode_ms", sdec).add("server_encode_ms", senc)
                 .add("server_handle_ms", handle).add("network_ms", net_ms)
                 .add("decode_ms", dec_ms).add("e2e_ms", jnum(static_cast<double>(e2e.back()) / 1e6))
                 .add("bytes_up", jint(static_cast<long long>(bytes_up)))
                 .add("bytes_down", jint(static_cast<long long>(bytes_down))).str();
  }
  auto head_frame = encode_frame(outs, "fp32");
  write_file(sa.outputs, head_frame.data(), head_frame.size());
  if (!device_only) write_file(sa.outputs + ".tail", reply_payload.data(), reply_payload.size());
  std::string block = Obj().add("schema_version", "1").add("server", jstr(sa.server)).add("name", jstr(sa.name))
      .add("encoding", jstr(sa.encoding)).add("reply_encoding", jstr("fp32")).add("warmup", jint(warmup))
      .add("iterations", iters + "]").add("bytes_up", jint(static_cast<long long>(bytes_up)))
      .add("bytes_down", jint(static_cast<long long>(bytes_down)))
      .add("payload_bytes_up", jint(static_cast<long long>(payload_up)))
      .add("payload_bytes_down", jint(static_cast<long long>(reply_payload.size())))
      .add("head_outputs_count", jint(static_cast<long long>(outs.size())))
      .add("outputs_file", jstr(sa.outputs)).add("tail_outputs_file", device_only ? "null" : jstr(sa.outputs + ".tail")).str();
  std::string jpath = sa.outputs + ".json";
  write_file(jpath, reinterpret_cast<const uint8_t*>(block.data()), block.size());
  return e2e;
}

struct Args {
  std::string model, vectors, etdump, method = "forward", output, save_outputs;
  long warmup = 3, iterations = 20, threads = 0;
  double min_seconds = 0, idle_s = 0, rtol = 1e-3, atol = 1e-3;  // idle_s: energy baseline before the timed loop
  SplitArgs split;  // split.server set: split mode
};

struct UsageError {
  std::string message;
  bool help = false;
};

const char* kUsage =
    "usage: edgeprobe_runner --model PATH [--vectors PATH] [--warmup N] [--iterations N] [--min-seconds S]\n"
    "                        [--idle-s S] [--threads N] [--rtol X] [--atol X] [--etdump PATH] [--method NAME]\n"
    "                        [--save-outputs PATH] [--output PATH]\n"
    "       split mode: --split-server HOST:PORT|none --split-outputs PATH [--split-token-file PATH] [--split-name N]\n"
    "                   [--split-send K] [--split-encoding fp32|fp16|int8] [--split-timeout-s S] [--split-send-inputs 1]\n"
    "       the split token: --split-token-file PATH, else $EDGEPROBE_SPLIT_TOKEN (never on the command line)\n"
    "       see device_runner/PROTOCOL.md\n";

// The split token from a file (the host pushes it with the run's files and deletes it after): its
// first line, whitespace stripped (edgeprobe_runner/wire.py read_token_file).
std::string read_token_file(const std::string& path) {
  auto t = read_text(path);
  if (!t) throw UsageError{"cannot read --split-token-file " + path};
  std::string tok = t->substr(0, t->find('\n'));
  const char* ws = " \t\r\n\v\f";
  size_t a = tok.find_first_not_of(ws), b = tok.find_last_not_of(ws);
  tok = a == std::string::npos ? "" : tok.substr(a, b - a + 1);
  if (tok.empty()) throw UsageError{"--split-token-file " + path + " is empty"};
  return tok;
}

Args parse(int argc, char** argv) {
  Args a;
  // every number is checked: finite, not negative, integral where it counts, and within a cap (a cast of
  // 1e18 or NaN to long would be undefined or a silent nonsense run)
  auto num = [](const std::string& flag, const char* v, bool integral, double max) {
    char* end = nullptr;
    errno = 0;
    double d = std::strtod(v, &end);
    if (end == v || *end || errno == ERANGE || !std::isfinite(d) || d < 0 || (integral && d != std::floor(d)) || d > max) {
      char b[64];
      std::snprintf(b, sizeof b, "%g", max);
      throw UsageError{"bad value for " + flag + ": '" + one_line(v, 40) + "' (want a " + (integral ? "whole " : "") +
                       "number in [0, " + b + "])"};
    }
    return d;
  };
  std::string token_file;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (f == "--help" || f == "-h") throw UsageError{"measure one .pte (see PROTOCOL.md)", true};
    if (f == "--split-token")
      throw UsageError{"--split-token was removed: a token on the command line is visible to every user (ps); "
                       "pass --split-token-file PATH or set EDGEPROBE_SPLIT_TOKEN"};
    if (i + 1 >= argc) throw UsageError{"missing value for " + one_line(f, 60)};
    const char* v = argv[++i];
    if (f == "--model") a.model = v;
    else if (f == "--vectors") a.vectors = v;
    else if (f == "--etdump") a.etdump = v;
    else if (f == "--method") a.method = v;
    else if (f == "--output") a.output = v;
    else if (f == "--save-outputs") a.save_outputs = v;
    else if (f == "--warmup") a.warmup = static_cast<long>(num(f, v, true, 1e7));
    else if (f == "--iterations") a.iterations = static_cast<long>(num(f, v, true, 1e7));
    else if (f == "--threads") a.threads = static_cast<long>(num(f, v, true, 4096));
    else if (f == "--min-seconds") a.min_seconds = num(f, v, false, 86400);
    else if (f == "--idle-s") a.idle_s = num(f, v, false, 3600);
    else if (f == "--rtol") a.rtol = num(f, v, false, 1e300);
    else if (f == "--atol") a.atol = num(f, v, false, 1e300);
    else if (f == "--split-server") a.split.server = v;
    else if (f == "--split-token-file") token_file = v;
    else if (f == "--split-name") a.split.name = v;
    else if (f == "--split-encoding") a.split.encoding = v;
    else if (f == "--split-outputs") a.split.outputs = v;
    else if (f == "--split-send") a.split.send = static_cast<long>(num(f, v, true, 1e6));
    else if (f == "--split-timeout-s") a.split.timeout_s = num(f, v, false, 86400);
    else if (f == "--split-send-inputs") a.split.send_inputs = num(f, v, true, 1) != 0;
    else throw UsageError{"unknown argument " + one_line(f, 60)};
  }
  if (!a.split.server.empty() && a.split.outputs.empty()) throw UsageError{"--split-server needs --split-outputs"};
  if (!a.split.server.empty() && a.split.timeout_s <= 0) throw UsageError{"--split-timeout-s must be > 0"};
  if (!token_file.empty()) a.split.token = read_token_file(token_file);
  else if (const char* t = std::getenv("EDGEPROBE_SPLIT_TOKEN")) a.split.token = t;
  if (a.model.empty()) throw UsageError{"--model is required"};
  if (a.iterations < 1) throw UsageError{"--iterations must be >= 1"};
  return a;
}

// Test-only fault injection (tests/test_native_runner.py): EDGEPROBE_RUNNER_FAULT=timed_loop throws a
// std::runtime_error in the timed loop after its first iteration, where a meter's thread is running.
bool fault(const char* where) {
  const char* f = std::getenv("EDGEPROBE_RUNNER_FAULT");
  return f != nullptr && std::strcmp(f, where) == 0;
}

// Resets this process's VmHWM to its VmRSS (Linux >= 4.0); "" on success, else why not.
std::string reset_hwm() {
  FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (f == nullptr) return std::string("cannot open /proc/self/clear_refs: ") + std::strerror(errno);
  bool ok = std::fputs("5", f) >= 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return std::string("writing 5 to /proc/self/clear_refs failed: ") + std::strerror(errno);
  return "";
}

std::string peak_rss_definition(const std::string& reset_failed) {
  if (reset_failed.empty())
    return "peak_rss_bytes - baseline_hwm_bytes: VmHWM after the run minus VmHWM before the model was loaded, "
           "the mark first reset to VmRSS (/proc/self/clear_refs 5), so it is the run's own peak above the runner's baseline";
  return "peak_rss_bytes - baseline_hwm_bytes: VmHWM after the run minus VmHWM before the model was loaded (the mark "
         "could not be reset: " + reset_failed + "), a lower bound of the run's peak above the runner's baseline "
         "when baseline_hwm_bytes > baseline_rss_bytes";
}

// A record for a run that ended before the measurement could say more (bad arguments, an internal
// error): the same top-level keys, status error, one-line message.
std::string error_record(const std::string& model, const std::string& code, const std::string& message) {
  return Obj().add("schema_version", jint(kSchemaVersion)).add("status", jstr("error"))
      .add("error", Obj().add("code", jstr(code)).add("message", jstr(one_line(message, 500))).str())
      .add("runner", Obj().add("flavor", jstr("native")).add("version", jstr(kVersion))
                         .add("runtime", jstr("executorch")).add("runtime_version", jstr(EDGEPROBE_EXECUTORCH_VERSION)).str())
      .add("artifact", Obj().add("path", model.empty() ? "null" : jstr(model)).add("size_bytes", "null").str())
      .add("config", "null").add("verification", "null").add("timing", "null").add("memory", "null")
      .add("energy", "null").add("thermal", "null").add("environment", "null").str();
}

// Writes the record to `output` (atomically: tmp + rename) or stdout; false when it could not.
bool write_record(const std::string& output, const std::string& record) {
  if (output.empty()) {
    std::printf("%s\n", record.c_str());
    return std::fflush(stdout) == 0;
  }
  std::string tmp = output + ".tmp";
  {
    std::ofstream f(tmp);
    f << record << "\n";
    f.flush();
    if (!f) {
      std::fprintf(stderr, "edgeprobe_runner: cannot write %s\n", tmp.c_str());
      return false;
    }
  }
  if (std::rename(tmp.c_str(), output.c_str()) != 0) {
    std::fprintf(stderr, "edgeprobe_runner: cannot rename %s to %s: %s\n", tmp.c_str(), output.c_str(), std::strerror(errno));
    return false;
  }
  return true;
}

// The value of the last --output on the command line, found before parsing so that even bad arguments
// get their error record there.
std::string scan_output(int argc, char** argv) {
  std::string out;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--output") == 0) out = argv[++i];
  return out;
}

std::string error_name(Error e) {
  return "ExecuTorch error 0x" + [](int v) { char b[16]; std::snprintf(b, sizeof b, "%x", v); return std::string(b); }(static_cast<int>(e));
}

// The measurement (PROTOCOL.md, "Order of work"); returns the exit code.
int measure(const Args& args) {
  executorch::runtime::runtime_init();

  // 1. baseline before anything is loaded: the high-water mark reset to the current RSS first, so the
  // baseline HWM is the runner's own and not a transient from before
  std::string hwm_reset_failed = reset_hwm();
  auto base = proc_status();
  auto thermal_before = thermal_zones();

  std::optional<long long> size_bytes;
  if (auto f = std::ifstream(args.model, std::ios::binary | std::ios::ate)) size_bytes = static_cast<long long>(f.tellg());

  Obj config;
  std::string verification = "null", timing = "null", energy;
  std::string status = "ok", error = "null";
  bool internal = false;  // an unexpected exception (a runner bug): the record is written, the exit is 1
  std::optional<long long> threads_used;
  Obj memory;
  memory.add("baseline_rss_bytes", jopt_int(get(base, "VmRSS"))).add("baseline_hwm_bytes", jopt_int(get(base, "VmHWM")));
  energy = Obj().add("available", "false").add("reason", jstr("run ended before the timed loop")).str();

  try {
    if (args.threads > 0) {
#ifdef EDGEPROBE_HAS_THREADPOOL
      executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(static_cast<uint32_t>(args.threads));
#endif
    }
#ifdef EDGEPROBE_HAS_THREADPOOL
    threads_used = static_cast<long long>(executorch::extension::threadpool::get_threadpool()->get_thread_count());
#endif
    if (access(args.model.c_str(), R_OK) != 0) throw Failure{"load_failed", "model file " + args.model + " does not exist or is unreadable"};
    std::vector<TestSet> sets;
    if (!args.vectors.empty()) sets = read_vectors(args.vectors);

    // ETDump: no debug buffer (a small one aborts the process); only profiling events.
    std::unique_ptr<executorch::etdump::ETDumpGen> etdump_owner;
    executorch::etdump::ETDumpGen* etdump = nullptr;
    if (!args.etdump.empty()) {
#ifdef EDGEPROBE_HAS_ETDUMP
      etdump_owner = std::make_unique<executorch::etdump::ETDumpGen>();
      etdump = etdump_owner.get();
#else
      throw Failure{"unsupported", "this build has no ETDump support"};
#endif
    }

    // 2. load program + method
    auto t0 = Clock::now();
    Module module(args.model, Module::LoadMode::Mmap, std::move(etdump_owner));
    Error err = module.load();
    if (err != Error::Ok) throw Failure{"load_failed", "cannot load program " + args.model + ": " + error_name(err)};
    err = module.load_method(args.method);
    if (err != Error::Ok) throw Failure{"load_failed", "cannot load method '" + args.method + "': " + error_name(err)};
    double load_ms = ms_since(t0);
    (void)etdump;

    auto meta = module.method_meta(args.method);
    if (!meta.ok()) throw Failure{"load_failed", "no metadata for method '" + args.method + "'"};

    // inputs: the first test set, or ones
    std::vector<RawTensor> input_raw;
    if (!sets.empty()) {
      input_raw = sets[0].inputs;
    } else {
      for (size_t i = 0; i < meta->num_inputs(); ++i) {
        auto tm = meta->input_tensor_meta(i);
        if (!tm.ok()) throw Failure{"bad_vectors", "input " + std::to_string(i) + " is not a tensor; pass --vectors"};
        RawTensor t;
        t.dtype = static_cast<uint32_t>(tm->scalar_type());
        for (auto s : tm->sizes()) t.sizes.push_back(s);
        size_t item = item_bytes(t.dtype);
        if (!item) throw Failure{"bad_vectors", "input dtype not supported without --vectors"};
        t.data.resize(tm->nbytes());
        for (size_t k = 0; k < t.data.size() / item; ++k) {
          uint8_t* p = t.data.data() + k * item;
          switch (t.dtype) {
            case 6: { float v = 1; std::memcpy(p, &v, 4); break; }
            case 7: { double v = 1; std::memcpy(p, &v, 8); break; }
            case 3: { int32_t v = 1; std::memcpy(p, &v, 4); break; }
            case 4: { int64_t v = 1; std::memcpy(p, &v, 8); break; }
            default: p[0] = 1;
          }
        }
        input_raw.push_back(std::move(t));
      }
    }
    auto make_inputs = [](std::vector<RawTensor>& raw, std::vector<TensorPtr>& keep) {
      std::vector<EValue> in;
      keep.clear();
      for (auto& t : raw) {
        keep.push_back(to_tensor(t));
        in.emplace_back(*keep.back());
      }
      return in;
    };
    std::vector<TensorPtr> keep;
    std::vector<EValue> inputs = make_inputs(input_raw, keep);
    auto run_once = [&](const std::vector<EValue>& in) {
      auto res = module.execute(args.method, in);
      if (!res.ok()) throw Failure{"execute_failed", "execute failed: " + error_name(res.error())};
      return std::move(res.get());
    };
    auto outputs_raw = [](const std::vector<EValue>& outs) {
      std::vector<RawTensor> r;
      for (auto& o : outs)
        if (o.isTensor()) r.push_back(from_tensor(o.toTensor()));
      return r;
    };

    // 3. first inference
    t0 = Clock::now();
    auto first = outputs_raw(run_once(inputs));
    double first_ms = ms_since(t0);
    if (!args.save_outputs.empty()) write_vectors(args.save_outputs, input_raw, first);

    // 4. check every test set
    if (!sets.empty()) {
      double worst = 0;
      for (size_t s = 0; s < sets.size(); ++s) {
        std::vector<RawTensor> actual;
        if (s == 0) {
          actual = first;
        } else {
          std::vector<TensorPtr> k2;
          actual = outputs_raw(run_once(make_inputs(sets[s].inputs, k2)));
        }
        std::string problem;
        if (actual.size() != sets[s].expected.size())
          problem = "runtime returned " + std::to_string(actual.size()) + " outputs, vectors expect " +
                    std::to_string(sets[s].expected.size());
        for (size_t o = 0; problem.empty() && o < actual.size(); ++o) {
          std::string p = compare(actual[o], sets[s].expected[o], args.rtol, args.atol, worst);
          if (!p.empty()) problem = "output " + std::to_string(o) + " " + p;
        }
        if (!problem.empty()) {
          std::string msg = "testset " + std::to_string(s) + ": " + problem;
          verification = Obj().add("checked", "true").add("passed", "false").add("testsets", jint(sets.size()))
              .add("rtol", jnum(args.rtol)).add("atol", jnum(args.atol)).add("max_abs_error", jnum(worst))
              .add("reason", jstr(msg)).str();
          throw Failure{"output_mismatch", msg};
        }
      }
      verification = Obj().add("checked", "true").add("passed", "true").add("testsets", jint(sets.size()))
          .add("rtol", jnum(args.rtol)).add("atol", jnum(args.atol)).add("max_abs_error", jnum(worst))
          .add("reason", "null").str();
    } else {
      verification = Obj().add("checked", "false").add("passed", "null").add("testsets", "0").add("rtol", "null")
          .add("atol", "null").add("max_abs_error", "null")
          .add("reason", jstr("no test vectors given; inputs are ones")).str();
    }

    // 5'. split mode: the timed loop is the split (head, network, tail), e2e per iteration; no meters
    if (!args.split.server.empty()) {
      auto samples = run_split(args.split, args.warmup, args.iterations, [&]() {
        return args.split.send_inputs ? input_raw : outputs_raw(run_once(inputs));
      });
      std::string arr = "[";
      for (size_t i = 0; i < samples.size(); ++i) arr += (i ? ", " : "") + jint(samples[i]);
      timing = Obj().add("load_ms", jnum(load_ms)).add("first_inference_ms", jnum(first_ms)).add("iteration_ns", arr + "]").str();
      energy = Obj().add("available", "false")
          .add("reason", jstr("split mode: iteration_ns are end-to-end split times (head, network, tail); no energy window"))
          .str();
    } else {
    // 5. warm-up, then the timed loop with meters running
    for (long i = 0; i < args.warmup; ++i) run_once(inputs);
    auto meter = energy_meter();
    Odpm odpm;
    Mark mark;  // ODPM snapshots at the window edges, when dumpsys is there
    if (odpm.active()) mark = [&odpm](const char* window) { odpm.snapshot(window); };
    std::vector<long long> samples;
    samples.reserve(static_cast<size_t>(args.iterations));
    long long timed_ns = 0;
    meter->begin(args.idle_s, mark);
    while (static_cast<long>(samples.size()) < args.iterations || timed_ns < args.min_seconds * 1e9) {
      auto s0 = Clock::now();
      auto res = module.execute(args.method, inputs);
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - s0).count();
      if (!res.ok()) throw Failure{"execute_failed", "execute failed in the timed loop: " + error_name(res.error())};
      samples.push_back(ns);
      if (fault("timed_loop")) throw std::runtime_error("injected fault (EDGEPROBE_RUNNER_FAULT=timed_loop)");
      timed_ns += ns;
    }
    energy = meter->end(mark);
    energy = energy.substr(0, energy.size() - 1) + ", " + jstr("odpm") + ": " + odpm.block() + "}";
    std::string arr = "[";
    for (size_t i = 0; i < samples.size(); ++i) arr += (i ? ", " : "") + jint(samples[i]);
    timing = Obj().add("load_ms", jnum(load_ms)).add("first_inference_ms", jnum(first_ms)).add("iteration_ns", arr + "]").str();
    }

    // 6. ETDump
    if (etdump != nullptr) {
      auto res = etdump->get_etdump_data();
      std::ofstream f(args.etdump, std::ios::binary);
      if (res.buf == nullptr || res.size == 0 || !f) throw Failure{"io_failed", "cannot write ETDump to " + args.etdump};
      f.write(static_cast<const char*>(res.buf), static_cast<std::streamsize>(res.size));
      free(res.buf);
    }
  } catch (const Failure& f) {
    status = "error";
    error = Obj().add("code", jstr(f.code)).add("message", jstr(one_line(f.message, 500))).str();
    timing = "null";
  } catch (const std::exception& e) {
    status = "error";
    internal = true;
    error = Obj().add("code", jstr("internal_error")).add("message", jstr(one_line(std::string("runner error: ") + e.what(), 500))).str();
    timing = "null";
  } catch (...) {
    status = "error";
    internal = true;
    error = Obj().add("code", jstr("internal_error")).add("message", jstr("runner error: an unknown exception")).str();
    timing = "null";
  }

  auto after = proc_status();
  memory.add("peak_rss_bytes", jopt_int(get(after, "VmHWM"))).add("swap_bytes", jopt_int(get(after, "VmSwap")))
      .add("source", jstr("/proc/self/status VmHWM")).add("hwm_reset", hwm_reset_failed.empty() ? "true" : "false")
      .add("peak_rss_definition", jstr(peak_rss_definition(hwm_reset_failed)));
  config.add("method", jstr(args.method)).add("warmup", jint(args.warmup)).add("iterations", jint(args.iterations))
      .add("min_seconds", jnum(args.min_seconds)).add("threads_requested", jint(args.threads))
      .add("threads_used", jopt_int(threads_used)).add("loader", jstr("mmap"))
      .add("etdump", args.etdump.empty() ? "false" : "true");

  std::string record =
      Obj().add("schema_version", jint(kSchemaVersion)).add("status", jstr(status)).add("error", error)
          .add("runner", Obj().add("flavor", jstr("native")).add("version", jstr(kVersion))
                             .add("runtime", jstr("executorch")).add("runtime_version", jstr(EDGEPROBE_EXECUTORCH_VERSION)).str())
          .add("artifact", Obj().add("path", jstr(args.model)).add("size_bytes", jopt_int(size_bytes)).str())
          .add("config", config.str()).add("verification", verification).add("timing", timing)
          .add("memory", memory.str()).add("energy", energy).add("thermal", thermal_block(thermal_before, thermal_zones()))
          .add("environment", environment_block()).str();

  if (internal) std::fprintf(stderr, "edgeprobe_runner: %s\n", error.c_str());
  if (!write_record(args.output, record)) return 3;
  return internal ? 1 : 0;
}

}  // namespace

// Exit codes (PROTOCOL.md): 0 a record was written (status ok, or error for a failed measurement);
// 1 an internal error, its record written where possible; 2 bad arguments (a record too, when --output
// was given); 3 the record could not be written.
int main(int argc, char** argv) {
  std::string output = scan_output(argc, argv), model;
  auto fail = [&](const std::string& code, const std::string& message, int rc) {
    std::fprintf(stderr, "edgeprobe_runner: %s\n", one_line(message, 500).c_str());
    if (!output.empty() || rc != 2) write_record(output, error_record(model, code, message));
    return rc;
  };
  try {
    Args args;
    try {
      args = parse(argc, argv);
    } catch (const UsageError& u) {
      if (u.help) {
        std::printf("edgeprobe_runner %s: %s\n%s", kVersion, u.message.c_str(), kUsage);
        return 0;
      }
      std::fprintf(stderr, "%s", kUsage);
      return fail("usage", u.message, 2);
    }
    model = args.model;
    return measure(args);
  } catch (const Failure& f) {
    return fail(f.code, f.message, 1);
  } catch (const std::exception& e) {
    return fail("internal_error", std::string("runner error: ") + e.what(), 1);
  } catch (...) {
    return fail("internal_error", "runner error: an unknown exception", 1);
  }
}
