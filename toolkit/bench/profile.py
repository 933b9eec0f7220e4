"""Per-kernel profile of a Relax VM library, in this process, with `vm.set_instrument`.

The instrument is called before and after every VM call instruction; the time between the two is
charged to the callee. Kernels (the fused TIR functions) are reported one by one; the VM's own
builtins (`vm.builtin.*`: allocation, shape checks) are summed into one line. Instrumented timings
include the Python callback's overhead, so shares are meaningful and absolute times are upper bounds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

BUILTIN_PREFIX = "vm.builtin."


def profile_library(lib_path: str, inputs: list[np.ndarray], iterations: int = 10, device: str = "cpu") -> dict[str, Any]:
    import tvm
    from tvm import relax

    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(lib_path), dev)
    args = [tvm.runtime.tensor(np.asarray(a, order="C"), dev) for a in inputs]
    main = vm["main"]
    main(*args)  # warm-up, uninstrumented
    start = time.perf_counter()
    for _ in range(iterations):
        main(*args)
    plain_ms = (time.perf_counter() - start) * 1e3 / iterations

    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    started: list[tuple[str, float]] = []

    def instrument(func, name, before_run, ret_value, *rest):  # noqa: ARG001 - TVM's signature
        now = time.perf_counter()
        if before_run:
            started.append((name, now))
        elif started:
            begun_name, begun = started.pop()
            totals[begun_name] = totals.get(begun_name, 0.0) + (now - begun)
            calls[begun_name] = calls.get(begun_name, 0) + 1
        return 0

    vm.set_instrument(instrument)
    start = time.perf_counter()
    for _ in range(iterations):
        main(*args)
    instrumented_ms = (time.perf_counter() - start) * 1e3 / iterations

    builtin_ms = sum(v for k, v in totals.items() if k.startswith(BUILTIN_PREFIX)) * 1e3 / iterations
    kernels = [(k, v * 1e3 / iterations, calls[k] // iterations) for k, v in totals.items() if not k.startswith(BUILTIN_PREFIX)]
    kernel_total = sum(ms for _, ms, _ in kernels) or 1.0
    rows = [{"name": k, "calls_per_run": c, "ms_per_run": ms, "share": ms / kernel_total}
            for k, ms, c in sorted(kernels, key=lambda r: -r[1])]
    return {
        "iterations": iterations,
        "uninstrumented_ms_per_run": plain_ms,
        "instrumented_ms_per_run": instrumented_ms,
        "kernel_ms_per_run": sum(ms for _, ms, _ in kernels),
        "vm_builtin_ms_per_run": builtin_ms,
        "kernels": rows,
    }
