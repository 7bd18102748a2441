// What every fuzz target asserts about a rejected input: a Failure with a code and a one-line message
// (the runner puts it in the record as is). Anything else that escapes (std::bad_alloc, length_error,
// a sanitizer report) is a crash libFuzzer reports.
#pragma once
#include <cstdlib>
#include <string>

#include "../parsers.h"

inline void check_failure(const edgeprobe::Failure& f) {
  if (f.code.empty() || f.message.empty() || f.message.find('\n') != std::string::npos || f.message.size() > 2000)
    std::abort();
}
