// Which build of the runtime ran (PROTOCOL.md, runner.build): the compilers named in the .comment of
// the XNNPACK delegate's library as this process loaded it.
#pragma once

#include "record.h"

namespace edgeprobe {

// Sets runner["build"] = {"library", "compilers", "source": ".comment"} or null, and
// runner["build_reason"] = null or why the build is unknown.
void add_build(Json& runner);

}  // namespace edgeprobe
