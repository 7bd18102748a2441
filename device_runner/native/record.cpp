// The JSON record the runner writes (PROTOCOL.md, "Record"): nlohmann/json values, the error record, the atomic write.
#include "record.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "build_info.h"
#include "util.h"

#ifndef EDGEPROBE_EXECUTORCH_VERSION
#define EDGEPROBE_EXECUTORCH_VERSION "unknown"
#endif

namespace edgeprobe {

std::string dump(const Json& j) { return j.dump(-1, ' ', false, nlohmann::detail::error_handler_t::replace); }

Json runner_block() {
  Json runner{{"flavor", "native"}, {"version", kVersion}, {"runtime", "executorch"},
              {"runtime_version", EDGEPROBE_EXECUTORCH_VERSION}};
  add_build(runner);
  return runner;
}

Json error_record(const std::string& model, const std::string& code, const std::string& message) {
  Json r;
  r["schema_version"] = kSchemaVersion;
  r["status"] = "error";
  r["error"] = Json{{"code", code}, {"message", one_line(message, 500)}};
  r["runner"] = runner_block();
  r["artifact"] = Json{{"path", model.empty() ? Json(nullptr) : Json(model)}, {"size_bytes", nullptr}};
  for (const char* k : {"config", "verification", "timing", "memory", "energy", "thermal", "environment"}) r[k] = nullptr;
  return r;
}

bool write_record(const std::string& output, const Json& record) {
  std::string text = dump(record);
  if (output.empty()) {
    std::printf("%s\n", text.c_str());
    return std::fflush(stdout) == 0;
  }
  std::string tmp = output + ".tmp";
  {
    std::ofstream f(tmp);
    f << text << "\n";
    f.flush();
    if (!f) {
      std::fprintf(stderr, "edgeprobe_runner: cannot write %s\n", tmp.c_str());
      return false;
    }
  }
  if (std::rename(tmp.c_str(), output.c_str()) != 0) {
    std::fprintf(stderr, "edgeprobe_runner: cannot rename %s to %s: %s\n", tmp.c_str(), output.c_str(), std::strerror(errno));
    return false;
  }
  return true;
}

}  // namespace edgeprobe
