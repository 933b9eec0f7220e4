// Open-AutoGLM Edge stand-in for TVM's src/support/utils.h (absent from the apache-tvm wheel):
// only the helper tvm/src/runtime uses. Written for this project, not taken from TVM.
#ifndef TVM_SUPPORT_UTILS_H_
#define TVM_SUPPORT_UTILS_H_

#include <algorithm>
#include <cctype>
#include <string>

namespace tvm {
namespace support {

// Whether `s` is a non-empty run of decimal digits (a CPU index in runtime.config_threadpool).
inline bool IsNumber(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
}

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_UTILS_H_
