// The JSON record the runner writes (PROTOCOL.md, "Record"): nlohmann/json values, the error record, the atomic write.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace edgeprobe {

// Keys keep their insertion order, as the record has always listed them.
using Json = nlohmann::ordered_json;

constexpr const char* kVersion = "0.1.0";
constexpr int kSchemaVersion = 1;

// One line of JSON. A non-finite number is written as null; bytes that are not UTF-8 (a path, a
// hostname, a message from outside) as U+FFFD, never an exception.
std::string dump(const Json& j);

template <typename T>
Json opt(const std::optional<T>& v) {
  return v ? Json(*v) : Json(nullptr);
}

// {"flavor": "native", "version", "runtime", "runtime_version", "build", "build_reason"}
Json runner_block();

// A record for a run that ended before the measurement could say more (bad arguments, an internal
// error): the same top-level keys, status error, one-line message.
Json error_record(const std::string& model, const std::string& code, const std::string& message);

// Writes the record to `output` (atomically: tmp + rename) or stdout; false when it could not.
bool write_record(const std::string& output, const Json& record);

}  // namespace edgeprobe
