// Open-AutoGLM Edge: the one half-precision helper a model.so may call that armv7's libgcc lacks.
//
// LLVM lowers a float64 -> float16 conversion to a call of __truncdfhf2, which model.so leaves for the
// runtime to provide (its link adds libgcc.a, which on ARM has the float32 helpers __gnu_f2h_ieee and
// __gnu_h2f_ieee but not this one); the x86 wheel's runtime exports it from builtin_fp16.cc, which
// needs compiler-rt's builtin_fp16.h, not shipped in the wheel. libgcc's __gnu_d2h_ieee converts the
// same way (IEEE half, round to nearest even). Weak, as in the wheel: a process that has its own wins.
#include <cstdint>

extern "C" uint16_t __gnu_d2h_ieee(double value);  // libgcc (ARM)

extern "C" __attribute__((visibility("default"), weak)) uint16_t __truncdfhf2(double value) {
  return __gnu_d2h_ieee(value);
}
