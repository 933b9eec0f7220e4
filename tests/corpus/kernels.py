"""Kernel-level differential check of the default schedules for any CPU ISA, run on this machine.

A schedule's correctness does not depend on the ISA it was sized for: tile sizes, vector widths and
loop orders are the ISA's, the arithmetic is not. So each fused kernel of a model is scheduled with
another target's `CpuConfig` (AVX-512's 16 lanes and 32 registers on an AVX2 host, NEON's 4 lanes),
compiled for *this* CPU (LLVM splits wide vectors), run on seeded random buffers, and compared with
the same kernel unscheduled. That checks on any host the schedules built for the ISA it is not on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KernelMismatch:
    kernel: str
    rule: str
    max_abs_error: float


def _run(func, args: list[np.ndarray], tt) -> list[np.ndarray]:
    import tvm

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tt)
    dev = tvm.cpu()
    bufs = [tvm.runtime.tensor(a.copy(), dev) for a in args]
    lib["main"](*bufs)
    return [b.numpy() for b in bufs]


def scheduled_kernels_mismatch(model_path, cfg, seed: int = 0, tol: float = 1e-4) -> tuple[int, list[KernelMismatch]]:
    """(kernels checked, mismatches) for every kernel of the model that a rule schedules under `cfg`."""
    import tvm
    from tvm import tirx

    import targets
    from compile.build import cpu_front_passes
    from compile.frontend import load_model
    from compile.schedules import schedule_func

    host = targets.load_target("host")
    tt = tvm.target.Target(host.tvm)
    model = load_model(model_path)
    with tt:
        mod = tvm.transform.Sequential(cpu_front_passes(tt))(model.mod)
    rng = np.random.default_rng(seed)
    checked, bad = 0, []
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        scheduled, rule = schedule_func(func, cfg, tt)
        if scheduled is None:
            continue
        args = []
        for p in func.params:
            shape, dtype = [int(d) for d in p.shape], str(p.dtype)
            args.append(rng.standard_normal(shape).astype(dtype) if dtype.startswith("float")
                        else rng.integers(0, 3, shape).astype(dtype))
        want = _run(func, args, tt)
        got = _run(scheduled.with_attr("tirx.is_scheduled", True), args, tt)
        err = max((float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) for a, b in zip(want, got)
                   if a.size), default=0.0)
        checked += 1
        if not err <= tol:
            bad.append(KernelMismatch(gv.name_hint, rule, err))
    return checked, bad
