// ODPM (Android power rails): raw `dumpsys` PowerStats text snapshots at the energy window edges.
#pragma once

#include <string>
#include <vector>

#include "record.h"

namespace edgeprobe {

// Raw `dumpsys android.hardware.power.stats.IPowerStats/default` text at the window edges: the
// PowerStats HAL prints the On-Device Power Monitor rails' cumulative energy there (Pixel 6 and
// later). Not parsed here; the host parses it (edgeprobe/odpm.py documents the format). The
// first call doubles as the probe: no dumpsys on PATH, a non-zero exit, no output or "Can't find
// service" makes the block unavailable with the reason, and no further calls are made.
class Odpm {
 public:
  Odpm();
  bool active() const { return reason_.empty(); }
  void snapshot(const char* window);
  Json block() const;  // {"available", "reason", "service", "snapshots": [...]}

 private:
  std::string dumpsys_, reason_;
  std::vector<Json> snapshots_;
};

// The first executable `name` on $PATH, or "".
std::string find_on_path(const std::string& name);

// Valid UTF-8 for the JSON record: a cut leading character is dropped (as the Python runner does),
// any other invalid byte becomes U+FFFD.
std::string utf8_clean(const std::string& s);

}  // namespace edgeprobe
