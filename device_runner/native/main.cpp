// edgeprobe native runner, main: the arguments, then the measurement in the order PROTOCOL.md gives
// (load the .pte with the ExecuTorch runtime, check outputs against test vectors, time iterations
// with the meters running, or the split loop) and the one JSON record it writes.
//
// Kept deliberately thin: no model logic, no statistics (the host derives them from the raw
// per-iteration samples written here). This is the only file that uses ExecuTorch.

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/platform/runtime.h>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "args.h"
#include "meters.h"
#include "odpm.h"
#include "parsers.h"
#include "record.h"
#include "split.h"
#include "util.h"
#include "vectors.h"

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

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using namespace edgeprobe;

namespace {

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

std::string error_name(Error e) {
  char b[16];
  std::snprintf(b, sizeof b, "%x", static_cast<int>(e));
  return std::string("ExecuTorch error 0x") + b;
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

  Json config, verification, timing, energy, error;
  std::string status = "ok";
  bool internal = false;  // an unexpected exception (a runner bug): the record is written, the exit is 1
  std::optional<long long> threads_used;
  Json memory = {{"baseline_rss_bytes", opt(get(base, "VmRSS"))}, {"baseline_hwm_bytes", opt(get(base, "VmHWM"))}};
  energy = {{"available", false}, {"reason", "run ended before the timed loop"}};

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
          verification = {{"checked", true}, {"passed", false}, {"testsets", sets.size()}, {"rtol", args.rtol},
                          {"atol", args.atol}, {"max_abs_error", worst}, {"reason", msg}};
          throw Failure{"output_mismatch", msg};
        }
      }
      verification = {{"checked", true}, {"passed", true}, {"testsets", sets.size()}, {"rtol", args.rtol},
                      {"atol", args.atol}, {"max_abs_error", worst}, {"reason", nullptr}};
    } else {
      verification = {{"checked", false}, {"passed", nullptr}, {"testsets", 0}, {"rtol", nullptr}, {"atol", nullptr},
                      {"max_abs_error", nullptr}, {"reason", "no test vectors given; inputs are ones"}};
    }

    // 5'. split mode: the timed loop is the split (head, network, tail), e2e per iteration; no meters
    if (!args.split.server.empty()) {
      auto samples = run_split(args.split, args.warmup, args.iterations, [&]() {
        return args.split.send_inputs ? input_raw : outputs_raw(run_once(inputs));
      });
      timing = {{"load_ms", load_ms}, {"first_inference_ms", first_ms}, {"iteration_ns", samples}};
      energy = {{"available", false},
                {"reason", "split mode: iteration_ns are end-to-end split times (head, network, tail); no energy window"}};
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
      while ((static_cast<long>(samples.size()) < args.iterations || timed_ns < args.min_seconds * 1e9) &&
             (args.max_iterations == 0 || static_cast<long>(samples.size()) < args.max_iterations)) {
        auto s0 = Clock::now();
        auto res = module.execute(args.method, inputs);
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - s0).count();
        if (!res.ok()) throw Failure{"execute_failed", "execute failed in the timed loop: " + error_name(res.error())};
        samples.push_back(ns);
        if (fault("timed_loop")) throw std::runtime_error("injected fault (EDGEPROBE_RUNNER_FAULT=timed_loop)");
        timed_ns += ns;
      }
      energy = meter->end(mark);
      energy["odpm"] = odpm.block();
      timing = {{"load_ms", load_ms}, {"first_inference_ms", first_ms}, {"iteration_ns", samples}};
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
    error = {{"code", f.code}, {"message", one_line(f.message, 500)}};
    timing = nullptr;
  } catch (const std::exception& e) {
    status = "error";
    internal = true;
    error = {{"code", "internal_error"}, {"message", one_line(std::string("runner error: ") + e.what(), 500)}};
    timing = nullptr;
  } catch (...) {
    status = "error";
    internal = true;
    error = {{"code", "internal_error"}, {"message", "runner error: an unknown exception"}};
    timing = nullptr;
  }

  auto after = proc_status();
  memory["peak_rss_bytes"] = opt(get(after, "VmHWM"));
  memory["swap_bytes"] = opt(get(after, "VmSwap"));
  memory["source"] = "/proc/self/status VmHWM";
  memory["hwm_reset"] = hwm_reset_failed.empty();
  memory["peak_rss_definition"] = peak_rss_definition(hwm_reset_failed);
  config = {{"method", args.method}, {"warmup", args.warmup}, {"iterations", args.iterations},
            {"min_seconds", args.min_seconds}, {"max_iterations", args.max_iterations ? Json(args.max_iterations) : Json(nullptr)},
            {"threads_requested", args.threads}, {"threads_used", opt(threads_used)},
            {"loader", "mmap"}, {"etdump", !args.etdump.empty()}};

  Json record = {{"schema_version", kSchemaVersion}, {"status", status}, {"error", error}, {"runner", runner_block()},
                 {"artifact", {{"path", args.model}, {"size_bytes", opt(size_bytes)}}}, {"config", config},
                 {"verification", verification}, {"timing", timing}, {"memory", memory}, {"energy", energy},
                 {"thermal", thermal_block(thermal_before, thermal_zones())}, {"environment", environment_block()}};

  if (internal) std::fprintf(stderr, "edgeprobe_runner: %s\n", dump(error).c_str());
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
      args = parse_args(argc, argv);
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
