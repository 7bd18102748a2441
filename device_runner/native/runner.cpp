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

#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
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
  long long v = std::strtoll(t->c_str(), &end, 10);
  if (end == t->c_str()) return std::nullopt;
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

class Rapl : public EnergyMeter {  // Linux powercap energy counters (µJ), read at window edges
 public:
  explicit Rapl(std::vector<std::string> domains) : domains_(std::move(domains)) {}
  std::vector<long long> counters() {
    std::vector<long long> c;
    for (auto& d : domains_) c.push_back(read_ll(d + "/energy_uj").value_or(0));
    return c;
  }
  double delta_j(size_t i, long long a, long long b) {
    long long delta = b - a;
    if (delta < 0) delta += read_ll(domains_[i] + "/max_energy_range_uj").value_or(0);  // wrapped
    return delta / 1e6;
  }
  void begin(double idle_s, const Mark& mark) override {
    if (mark && idle_s > 0) mark("idle_start");
    idle0_ = Clock::now();
    if (idle_s > 0) {
      auto c0 = counters();
      std::this_thread::sleep_for(std::chrono::duration<double>(idle_s));
      auto c1 = counters();
      idle_j_ = 0;
      for (size_t i = 0; i < domains_.size(); ++i) idle_j_ += delta_j(i, c0[i], c1[i]);
      idle_dt_ = ms_since(idle0_) / 1000.0;
    }
    idle1_ = Clock::now();
    if (mark) mark("run_start");
    start_ = counters();
    t0_ = Clock::now();
  }
  std::string end(const Mark& mark) override {
    auto end = counters();
    auto t1 = Clock::now();
    if (mark) mark("run_end");
    double dt = std::chrono::duration<double>(t1 - t0_).count();
    Obj domains;
    double total = 0;
    for (size_t i = 0; i < domains_.size(); ++i) {
      double j = delta_j(i, start_[i], end[i]);
      std::string base = domains_[i].substr(domains_[i].rfind('/') + 1);
      auto name = read_text(domains_[i] + "/name");
      domains.add(base + ":" + (name ? *name : base), jnum(j));
      total += j;
    }
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
  std::string end(const Mark& mark) override {
    auto t1 = Clock::now();
    if (mark) mark("run_end");  // while the sampler runs on, like the Python runner's
    stop_ = true;
    if (thread_.joinable()) thread_.join();
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

struct RawTensor {
  uint32_t dtype;
  std::vector<int64_t> sizes;
  std::vector<uint8_t> data;
};
struct TestSet {
  std::vector<RawTensor> inputs, expected;
};

struct Failure {
  std::string code, message;
};

class Reader {
 public:
  explicit Reader(std::vector<uint8_t> d) : d_(std::move(d)) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, d_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::vector<uint8_t> bytes(uint64_t n) {
    need(n);
    std::vector<uint8_t> out(d_.begin() + pos_, d_.begin() + pos_ + n);
    pos_ += n;
    return out;
  }

 private:
  void need(uint64_t n) {
    if (n > d_.size() - pos_)
      throw Failure{"bad_vectors", "vectors file truncated at offset " + std::to_string(pos_)};
  }
  std::vector<uint8_t> d_;
  size_t pos_ = 0;
};

size_t item_bytes(uint32_t dtype) {
  switch (dtype) {
    case 0: case 1: case 11: return 1;
    case 2: case 5: case 15: return 2;
    case 3: case 6: return 4;
    case 4: case 7: return 8;
    default: return 0;
  }
}

std::vector<TestSet> read_vectors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Failure{"bad_vectors", "cannot open vectors file " + path};
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Reader r(std::move(data));
  auto magic = r.bytes(8);
  if (std::memcmp(magic.data(), "EPVEC001", 8) != 0) throw Failure{"bad_vectors", "not an edgeprobe vectors file (bad magic)"};
  auto tensor = [&r]() {
    RawTensor t;
    t.dtype = r.get<uint32_t>();
    uint32_t ndim = r.get<uint32_t>();
    if (item_bytes(t.dtype) == 0) throw Failure{"bad_vectors", "unsupported dtype code " + std::to_string(t.dtype)};
    if (ndim > 16) throw Failure{"bad_vectors", "implausible tensor rank " + std::to_string(ndim)};
    uint64_t numel = 1;
    for (uint32_t i = 0; i < ndim; ++i) {
      t.sizes.push_back(r.get<int64_t>());
      if (t.sizes.back() < 0) throw Failure{"bad_vectors", "negative tensor size"};
      numel *= static_cast<uint64_t>(t.sizes.back());
    }
    uint64_t nbytes = r.get<uint64_t>();
    if (nbytes != numel * item_bytes(t.dtype)) throw Failure{"bad_vectors", "tensor byte count does not match its shape"};
    t.data = r.bytes(nbytes);
    return t;
  };
  std::vector<TestSet> sets(r.get<uint32_t>());
  for (auto& s : sets) {
    for (uint32_t n = r.get<uint32_t>(); n; --n) s.inputs.push_back(tensor());
    for (uint32_t n = r.get<uint32_t>(); n; --n) s.expected.push_back(tensor());
  }
  return sets;
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

struct Args {
  std::string model, vectors, etdump, method = "forward", output, save_outputs;
  long warmup = 3, iterations = 20, threads = 0;
  double min_seconds = 0, idle_s = 0, rtol = 1e-3, atol = 1e-3;  // idle_s: energy baseline before the timed loop
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "edgeprobe_runner: %s\nusage: edgeprobe_runner --model PATH [--vectors PATH] [--warmup N] "
               "[--iterations N] [--min-seconds S] [--idle-s S] [--threads N] [--rtol X] [--atol X] [--etdump PATH] "
               "[--method NAME] [--save-outputs PATH] [--output PATH]\n",
               why.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  auto num = [](const std::string& flag, const char* v, bool integral) {
    char* end = nullptr;
    double d = std::strtod(v, &end);
    if (end == v || *end || d < 0 || (integral && d != std::floor(d))) usage("bad value for " + flag + ": " + v);
    return d;
  };
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (f == "--help" || f == "-h") usage("measure one .pte (see PROTOCOL.md)");
    if (i + 1 >= argc) usage("missing value for " + f);
    const char* v = argv[++i];
    if (f == "--model") a.model = v;
    else if (f == "--vectors") a.vectors = v;
    else if (f == "--etdump") a.etdump = v;
    else if (f == "--method") a.method = v;
    else if (f == "--output") a.output = v;
    else if (f == "--save-outputs") a.save_outputs = v;
    else if (f == "--warmup") a.warmup = static_cast<long>(num(f, v, true));
    else if (f == "--iterations") a.iterations = static_cast<long>(num(f, v, true));
    else if (f == "--threads") a.threads = static_cast<long>(num(f, v, true));
    else if (f == "--min-seconds") a.min_seconds = num(f, v, false);
    else if (f == "--idle-s") a.idle_s = num(f, v, false);
    else if (f == "--rtol") a.rtol = num(f, v, false);
    else if (f == "--atol") a.atol = num(f, v, false);
    else usage("unknown argument " + f);
  }
  if (a.model.empty()) usage("--model is required");
  if (a.iterations < 1) usage("--iterations must be >= 1");
  return a;
}

std::string error_name(Error e) {
  return "ExecuTorch error 0x" + [](int v) { char b[16]; std::snprintf(b, sizeof b, "%x", v); return std::string(b); }(static_cast<int>(e));
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse(argc, argv);
  executorch::runtime::runtime_init();

  // 1. baseline before anything is loaded
  auto base = proc_status();
  auto thermal_before = thermal_zones();

  std::optional<long long> size_bytes;
  if (auto f = std::ifstream(args.model, std::ios::binary | std::ios::ate)) size_bytes = static_cast<long long>(f.tellg());

  Obj config;
  std::string verification = "null", timing = "null", energy;
  std::string status = "ok", error = "null";
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
      timed_ns += ns;
    }
    energy = meter->end(mark);
    energy = energy.substr(0, energy.size() - 1) + ", " + jstr("odpm") + ": " + odpm.block() + "}";
    std::string arr = "[";
    for (size_t i = 0; i < samples.size(); ++i) arr += (i ? ", " : "") + jint(samples[i]);
    timing = Obj().add("load_ms", jnum(load_ms)).add("first_inference_ms", jnum(first_ms)).add("iteration_ns", arr + "]").str();

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
    error = Obj().add("code", jstr(f.code)).add("message", jstr(f.message)).str();
    timing = "null";
  }

  auto after = proc_status();
  memory.add("peak_rss_bytes", jopt_int(get(after, "VmHWM"))).add("swap_bytes", jopt_int(get(after, "VmSwap")))
      .add("source", jstr("/proc/self/status VmHWM"));
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

  if (args.output.empty()) {
    std::printf("%s\n", record.c_str());
  } else {
    std::string tmp = args.output + ".tmp";
    {
      std::ofstream f(tmp);
      f << record << "\n";
      if (!f) {
        std::fprintf(stderr, "edgeprobe_runner: cannot write %s\n", tmp.c_str());
        return 3;
      }
    }
    if (std::rename(tmp.c_str(), args.output.c_str()) != 0) {
      std::fprintf(stderr, "edgeprobe_runner: cannot rename %s\n", tmp.c_str());
      return 3;
    }
  }
  return 0;
}
