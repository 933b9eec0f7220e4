"""What the CPU schedules need to know about a target: vector width, register count, cores, caches.

Derived from the toolkit's `targets.Target` (its TVM target dict and thread count); no TVM import.
"""

from __future__ import annotations

from dataclasses import dataclass

from targets import Target

# The storage scope of a kernel's register tile (its accumulators, compacted to the tile by TVM's
# CompactBufferAllocation). "global", not "local": TVM's LowerTVMBuiltin puts small constant-size CPU
# allocations on the stack only in global scope and sends every "local" one to TVMBackendAllocWorkspace,
# a call per tile (measured: an 8x8 int32 tile so allocated made a 16->96 1x1 conv 3x slower).
TILE_SCOPE = "global"
# ... and only up to this many bytes (TVM's kMaxStackAlloca, tvm/runtime/device_api.h): a larger tile is
# allocated per tile too. 16 zmm accumulators are 1024 bytes; 24 of them (what AVX-512's 32 registers
# allow) made MobileNetV2's int8 16->96 expansion at 112x112 5.8x slower (1.10 vs 0.19 ms).
STACK_TILE_BYTES = 1024

# Per-core data cache sizes (bytes) of the CPUs the built-in targets name; used only for loop-order
# heuristics, so an unknown CPU falls back to a typical value for its architecture.
_CACHES = {
    "cortex-a7": (32 << 10, 512 << 10),
    "cortex-a53": (32 << 10, 512 << 10),
    "cortex-a55": (32 << 10, 256 << 10),
    "cortex-a72": (32 << 10, 1 << 20),
    "cortex-a76": (64 << 10, 512 << 10),
    "cortex-a78": (64 << 10, 512 << 10),
    "znver3": (32 << 10, 512 << 10),
}
_DEFAULT_CACHES = {"x86_64": (32 << 10, 1 << 20), "aarch64": (32 << 10, 512 << 10), "arm": (32 << 10, 256 << 10)}


@dataclass(frozen=True)
class CpuConfig:
    """Schedule parameters for one CPU target."""

    arch: str            # "x86_64" / "aarch64" / "arm"
    isa: str             # "x86-avx512", "x86-avx2", "x86-sse", "aarch64-neon", "armv7-neon", "armv7-scalar"
    vector_bits: int     # SIMD register width
    vector_regs: int     # architectural SIMD registers
    threads: int         # cores the target has (parallel loops are emitted when > 1)
    l1_bytes: int
    l2_bytes: int
    int8_dot: str = ""   # 4-way 8-bit dot product: "vnni", "avx512bw", "avx2", "sdot"; "" none (plain widening multiplies)

    def lanes(self, dtype_bits: int) -> int:
        return max(1, self.vector_bits // max(1, dtype_bits))

    @property
    def accumulators(self) -> int:
        """Vector registers a register tile may use for accumulators: the rest hold loads and broadcasts, and
        the tile must fit the stack (STACK_TILE_BYTES; 16 on AVX-512, the register file elsewhere)."""
        return max(1, min(self.vector_regs - 4, STACK_TILE_BYTES // max(1, self.vector_bits // 8)))


def _mattr(target: Target) -> set[str]:
    tvm = target.tvm.get("host", target.tvm) if target.device == "cuda" else target.tvm
    return {str(a) for a in tvm.get("mattr", [])} | {"+" + f.lstrip("+") for f in target.features}


def cpu_config(target: Target) -> CpuConfig:
    """The schedule parameters for `target` (a CPU target, or the host CPU of a GPU target)."""
    mattr = _mattr(target)
    tvm = target.tvm.get("host", target.tvm) if target.device == "cuda" else target.tvm
    mcpu = str(tvm.get("mcpu", ""))
    arch = target.arch
    if arch == "x86_64":
        if "+avx512f" in mattr:
            isa, bits, regs = "x86-avx512", 512, 32
        elif "+avx2" in mattr or "+avx" in mattr:
            isa, bits, regs = "x86-avx2", 256, 16
        else:
            isa, bits, regs = "x86-sse", 128, 16
    elif arch == "aarch64":
        isa, bits, regs = "aarch64-neon", 128, 32
    else:
        if "+neon" in mattr:
            isa, bits, regs = "armv7-neon", 128, 16
        else:
            isa, bits, regs = "armv7-scalar", 32, 16
    l1, l2 = _CACHES.get(mcpu, _DEFAULT_CACHES.get(arch, (32 << 10, 512 << 10)))
    return CpuConfig(arch=arch, isa=isa, vector_bits=bits, vector_regs=regs, threads=max(1, target.threads),
                     l1_bytes=l1, l2_bytes=l2, int8_dot=_int8_dot(isa, mattr))


def _int8_dot(isa: str, mattr: set[str]) -> str:
    """The 8-bit dot-product instruction family the target has (see `compile/schedules/int8.py`)."""
    if isa == "x86-avx512":
        return "vnni" if "+avx512vnni" in mattr else ("avx512bw" if "+avx512bw" in mattr else "")
    if isa == "x86-avx2":
        return "avx2"
    if isa == "aarch64-neon" and "+dotprod" in mattr:
        return "sdot"
    return ""
