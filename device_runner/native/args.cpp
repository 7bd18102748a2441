// The runner's command line (PROTOCOL.md, "Arguments"): every flag, checked, and the usage text.
#include "args.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "util.h"

namespace edgeprobe {

const char* const kUsage =
    "usage: edgeprobe_runner --model PATH [--vectors PATH] [--warmup N] [--iterations N] [--min-seconds S]\n"
    "                        [--max-iterations N] [--idle-s S] [--threads N] [--rtol X] [--atol X] [--etdump PATH] [--method NAME]\n"
    "                        [--save-outputs PATH] [--output PATH]\n"
    "       split mode: --split-server HOST:PORT|none --split-outputs PATH [--split-token-file PATH] [--split-name N]\n"
    "                   [--split-send K] [--split-encoding fp32|fp16|int8] [--split-timeout-s S] [--split-send-inputs 1]\n"
    "       the split token: --split-token-file PATH, else $EDGEPROBE_SPLIT_TOKEN (never on the command line)\n"
    "       see device_runner/PROTOCOL.md\n";

namespace {

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

}  // namespace

Args parse_args(int argc, char** argv) {
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
    else if (f == "--max-iterations") a.max_iterations = static_cast<long>(num(f, v, true, 1e9));
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
  if (a.max_iterations != 0 && a.max_iterations < a.iterations)
    throw UsageError{"--max-iterations must be 0 (no cap) or >= --iterations"};
  return a;
}

std::string scan_output(int argc, char** argv) {
  std::string out;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--output") == 0) out = argv[++i];
  return out;
}

}  // namespace edgeprobe
