# Cross-compile for 32-bit ARMv7 Linux (hard float) with Debian's g++-arm-linux-gnueabihf.
# No armv7 TVM wheel exists: use -DAUTOGLM_BUILD_TOOLS=OFF unless you built libtvm_runtime.so
# and libtvm_ffi.so for armv7 yourself (see README.md).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_CXX_COMPILER arm-linux-gnueabihf-g++)
set(CMAKE_FIND_ROOT_PATH /usr/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
