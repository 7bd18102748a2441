// Split mode (PROTOCOL.md, "Split mode"): the timed loop of head -> encode -> the tail on `edgeprobe serve` -> decode.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "parsers.h"

namespace edgeprobe {

struct SplitArgs {
  std::string server, token, name, encoding = "fp32", outputs;
  long send = -1;  // -1: send every head output
  bool send_inputs = false;  // cloud only: send the inputs themselves, the program is not run in the loop
  double timeout_s = 60;
};

// warmup + iterations of head -> encode -> run request -> reply -> decode; writes the per-iteration split
// times to <outputs>.json, the head's outputs (codec fp32) to <outputs> and the tail's reply frame (as it
// came) to <outputs>.tail. Returns the e2e nanoseconds per timed iteration. Server "none": device only.
std::vector<long long> run_split(const SplitArgs& sa, long warmup, long iterations,
                                 const std::function<std::vector<RawTensor>()>& head);

}  // namespace edgeprobe
