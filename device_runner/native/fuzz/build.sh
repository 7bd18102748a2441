#!/bin/sh
# Builds the libFuzzer targets of the native runner's parsers (parsers.h; no ExecuTorch needed):
#   device_runner/native/fuzz/build.sh OUTDIR        (CXX defaults to clang++; Debian: clang libclang-rt-14-dev
#                                                     nlohmann-json3-dev)
# then e.g. OUTDIR/fuzz_epv -runs=20000 -max_total_time=60 CORPUS_COPY device_runner/native/fuzz/corpus/epv
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
cxx=${CXX:-clang++}
mkdir -p "$out"
pids=""
for t in epv reply frame elf; do
  "$cxx" -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$here/.." "$here/fuzz_$t.cpp" -o "$out/fuzz_$t" &
  pids="$pids $!"
done
rc=0
for p in $pids; do wait "$p" || rc=1; done
exit $rc
