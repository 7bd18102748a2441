// Small shared helpers of the native runner: clocks, text files and sysfs, one-line messages, fault injection.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace edgeprobe {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0);
double mono_s(Clock::time_point t);  // CLOCK_MONOTONIC seconds (steady_clock's epoch on Linux)

// A text file without its trailing newlines/spaces; nullopt when it cannot be read.
std::optional<std::string> read_text(const std::string& path);
// A file holding one decimal integer; nullopt when unreadable or garbled (never read as 0).
std::optional<long long> read_ll(const std::string& path);
// The names in `dir` that start with `prefix`, sorted.
std::vector<std::string> list_dir(const std::string& dir, const std::string& prefix);
// $EDGEPROBE_SYSFS_ROOT (tests), else /sys.
std::string sysfs_root();

// A message from outside, fit for a one-line error: newlines folded, at most `max` bytes.
std::string one_line(const std::string& s, size_t max = 200);

// Test-only fault injection (tests/test_native_runner.py): true when EDGEPROBE_RUNNER_FAULT == where.
bool fault(const char* where);

}  // namespace edgeprobe
