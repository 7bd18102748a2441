// Meters the runner reads around a measurement: memory high-water marks, thermal zones, energy (RAPL, battery), the environment.
#include "meters.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "util.h"

namespace edgeprobe {

// ------------------------------------------------------------------ memory

std::map<std::string, long long> proc_status() {
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

// ------------------------------------------------------------------ thermal

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

Json thermal_block(const std::map<std::string, double>& before, const std::map<std::string, double>& after) {
  if (before.empty() && after.empty())
    return Json{{"available", false}, {"reason", "no readable thermal zones under " + sysfs_root() + "/class/thermal"}};
  auto m2j = [](const std::map<std::string, double>& m) {
    Json o = Json::object();
    for (auto& [k, v] : m) o[k] = v;
    return o;
  };
  return Json{{"available", true}, {"reason", nullptr}, {"before_c", m2j(before)}, {"after_c", m2j(after)}};
}

// ------------------------------------------------------------------ energy meters

// Every meter first measures an idle baseline (`idle_s` seconds asleep, after warm-up) and then
// the timed loop. The windows are reported as CLOCK_MONOTONIC seconds so that samples, and any
// external meter, can be lined up with them. Battery samples are reported raw: the host
// calibrates sign and unit and derives power, energy per inference and its uncertainty.

namespace {

Json unavailable(const std::string& reason) { return Json{{"available", false}, {"reason", reason}}; }

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
  Json end(const Mark& mark) override {
    if (mark) mark("run_end");
    return unavailable(reason_);
  }

 private:
  std::string reason_;
};

// The idle window is [idle_start_s, idle_end_s); idle_end_s < run_start_s only when an ODPM
// snapshot ran between the two windows.
Json window_json(Clock::time_point idle0, Clock::time_point idle1, Clock::time_point run0, Clock::time_point run1) {
  return Json{{"idle_start_s", mono_s(idle0)}, {"idle_end_s", mono_s(idle1)}, {"run_start_s", mono_s(run0)},
              {"run_end_s", mono_s(run1)}};
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
  Json end(const Mark& mark) override {
    auto end = counters("run_end");
    auto t1 = Clock::now();
    if (mark) mark("run_end");
    double dt = std::chrono::duration<double>(t1 - t0_).count();
    Json domains = Json::object();
    double total = 0;
    for (size_t i = 0; i < domains_.size() && reason_.empty(); ++i) {
      double j = delta_j(i, start_[i], end[i]);
      std::string base = domains_[i].substr(domains_[i].rfind('/') + 1);
      auto name = read_text(domains_[i] + "/name");
      domains[base + ":" + (name ? *name : base)] = j;
      total += j;
    }
    if (!reason_.empty()) {
      Json r = unavailable(reason_);
      r["meter"] = "rapl";
      return r;
    }
    return Json{{"available", true}, {"reason", nullptr}, {"meter", "rapl"}, {"energy_j", total}, {"duration_s", dt},
                {"samples", 2}, {"method", "powercap energy counter delta"}, {"domains", domains},
                {"idle_energy_j", idle_dt_ > 0 ? Json(idle_j_) : Json(nullptr)},
                {"idle_duration_s", idle_dt_ > 0 ? Json(idle_dt_) : Json(nullptr)},
                {"window", window_json(idle0_, idle1_, t0_, t1)}};
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
        else if (i && v) raw_.push_back(Sample{(mono_s(t0) + mono_s(t1)) / 2, *i, *v});
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
  Json end(const Mark& mark) override {
    auto t1 = Clock::now();
    if (mark) mark("run_end");  // while the sampler runs on, like the Python runner's
    stop();
    std::string name = supply_.substr(supply_.rfind('/') + 1);
    Json arr = Json::array();
    for (auto& s : raw_) arr.push_back(Json::array({s.t, s.current, s.voltage}));
    auto status = read_text(supply_ + "/status");
    // A charger online (usb/ac/wireless supply with online = 1) feeds the battery current too.
    Json charger = nullptr;
    std::string ps = supply_.substr(0, supply_.rfind('/'));
    for (auto& n : list_dir(ps, "")) {
      if (n == "." || n == ".." || ps + "/" + n == supply_) continue;
      auto online = read_ll(ps + "/" + n + "/online");
      if (!online) continue;
      if (*online) { charger = true; break; }
      charger = false;
    }
    return Json{{"available", true}, {"reason", nullptr}, {"meter", "battery"}, {"energy_j", nullptr},
                {"duration_s", std::chrono::duration<double>(t1 - t0_).count()},
                {"samples", static_cast<long long>(raw_.size())}, {"samples_dropped", dropped_},
                {"method", "current_now x voltage_now sampled every 10 ms; raw, calibrated on the host"},
                {"domains", Json::object()}, {"window", window_json(idle0_, idle1_, t0_, t1)},
                {"supply", name}, {"supply_status", opt(status)}, {"charger_online", charger}, {"raw_samples", arr}};
  }

 private:
  struct Sample {
    double t;
    long long current, voltage;
  };
  std::string supply_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::vector<Sample> raw_;
  long long dropped_ = 0;
  Clock::time_point idle0_, idle1_, t0_;
};

}  // namespace

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

// ------------------------------------------------------------------ environment

Json environment_block() {
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
  return Json{{"os", u.sysname}, {"kernel", u.release}, {"machine", u.machine},
              {"cpu_model", cpu.empty() ? Json(nullptr) : Json(cpu)},
              {"cores", std::thread::hardware_concurrency()}, {"hostname", host}};
}

}  // namespace edgeprobe
