// Meters the runner reads around a measurement: memory high-water marks, thermal zones, energy (RAPL, battery), the environment.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "record.h"

namespace edgeprobe {

// ---- memory

std::map<std::string, long long> proc_status();  // VmRSS/VmHWM/VmSwap of this process, in bytes
std::optional<long long> get(const std::map<std::string, long long>& m, const char* k);
// Resets this process's VmHWM to its VmRSS (Linux >= 4.0); "" on success, else why not.
std::string reset_hwm();
std::string peak_rss_definition(const std::string& reset_failed);

// ---- thermal

std::map<std::string, double> thermal_zones();  // "thermal_zoneN:type" -> degrees C
Json thermal_block(const std::map<std::string, double>& before, const std::map<std::string, double>& after);

// ---- energy

// `mark` is called at the window edges ("idle_start", "run_start", "run_end") so that ODPM
// snapshots (odpm.h) are taken between the windows, counted in neither; null when there is none.
using Mark = std::function<void(const char*)>;

class EnergyMeter {
 public:
  virtual ~EnergyMeter() = default;
  virtual void begin(double idle_s, const Mark& mark) = 0;  // idle baseline, then the run window starts
  virtual Json end(const Mark& mark) = 0;                  // the energy block
};

// RAPL package domains under powercap, else a battery with current_now/voltage_now, else unavailable
// with the reason.
std::unique_ptr<EnergyMeter> energy_meter();

// ---- environment

Json environment_block();  // os, kernel, machine, cpu_model, cores, hostname

}  // namespace edgeprobe
