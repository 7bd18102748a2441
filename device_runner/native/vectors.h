// Test vectors (.epv, PROTOCOL.md "Test vectors"): reading, writing, and comparing outputs against them.
#pragma once

#include <string>
#include <vector>

#include "parsers.h"

namespace edgeprobe {

// The whole file, at most 2 GiB, parsed by parsers.h parse_vectors; Failure{"bad_vectors"} otherwise.
std::vector<TestSet> read_vectors(const std::string& path);

// One test set: `inputs` and the outputs they gave (--save-outputs).
void write_vectors(const std::string& path, const std::vector<RawTensor>& inputs, const std::vector<RawTensor>& outputs);

// "" when every element is within atol + rtol*|e|; else what differs. `worst` is raised to the
// largest |a-e| seen.
std::string compare(const RawTensor& a, const RawTensor& e, double rtol, double atol, double& worst);

}  // namespace edgeprobe
