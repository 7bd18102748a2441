// The runner's command line (PROTOCOL.md, "Arguments"): every flag, checked, and the usage text.
#pragma once

#include <string>

#include "split.h"

namespace edgeprobe {

struct Args {
  std::string model, vectors, etdump, method = "forward", output, save_outputs;
  long warmup = 3, iterations = 20, threads = 0;
  long max_iterations = 0;  // 0: no cap; else the timed loop stops there even before --min-seconds
  double min_seconds = 0, idle_s = 0, rtol = 1e-3, atol = 1e-3;  // idle_s: energy baseline before the timed loop
  SplitArgs split;  // split.server set: split mode
};

struct UsageError {
  std::string message;
  bool help = false;  // --help: print the usage and exit 0
};

extern const char* const kUsage;

Args parse_args(int argc, char** argv);  // UsageError on a bad command line

// The value of the last --output on the command line, found before parsing so that even bad arguments
// get their error record there.
std::string scan_output(int argc, char** argv);

}  // namespace edgeprobe
