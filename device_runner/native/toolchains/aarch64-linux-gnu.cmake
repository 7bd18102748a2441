# Cross-compile the native runner for aarch64 Linux with Debian's cross toolchain
# (gcc-aarch64-linux-gnu / g++-aarch64-linux-gnu). Point executorch_DIR at the share/cmake
# directory of an unpacked aarch64 executorch wheel:
#   cmake -S device_runner/native -B build-arm64 \
#     -DCMAKE_TOOLCHAIN_FILE=device_runner/native/toolchains/aarch64-linux-gnu.cmake \
#     -Dexecutorch_DIR=<unpacked-wheel>/executorch/share/cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(_triple aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${_triple}-gcc)
set(CMAKE_CXX_COMPILER ${_triple}-g++)

# Debian's multiarch cross sysroot. Override with -DEDGEPROBE_AARCH64_SYSROOT=... if needed.
if(NOT EDGEPROBE_AARCH64_SYSROOT)
  set(EDGEPROBE_AARCH64_SYSROOT /usr/${_triple})
endif()
set(CMAKE_FIND_ROOT_PATH ${EDGEPROBE_AARCH64_SYSROOT})

# Programs from the host; libraries/headers from the target root only. Packages: BOTH, so that an
# explicitly given executorch_DIR (an unpacked wheel outside the sysroot) is honoured.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# Run target binaries (try_run, tests) under qemu user-mode emulation when available.
find_program(EDGEPROBE_QEMU_AARCH64 NAMES qemu-aarch64-static qemu-aarch64)
if(EDGEPROBE_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${EDGEPROBE_QEMU_AARCH64} -L ${EDGEPROBE_AARCH64_SYSROOT})
endif()
