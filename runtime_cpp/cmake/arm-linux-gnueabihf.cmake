# Cross-compile for 32-bit ARMv7 Linux (hard float) with Debian's g++-arm-linux-gnueabihf.
# No armv7 TVM wheel exists: build libtvm_ffi.so and libtvm_runtime.so first with the project in
# ../tvm_from_wheel (from the sources the installed wheels ship; see ../README.md), or configure
# with -DAUTOGLM_BUILD_TOOLS=OFF for the library alone.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_CXX_COMPILER arm-linux-gnueabihf-g++)
set(CMAKE_FIND_ROOT_PATH /usr/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
