"""The fusion report: what each fused kernel computes, its cost, its schedule, and (where it can run) its time."""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import numpy as np

_MAIN_OPS = ("conv2d_transpose", "conv2d", "conv1d", "matmul", "dense", "batch_matmul", "max_pool2d", "avg_pool2d",
             "adaptive_avg_pool2d", "softmax", "layer_norm", "mean", "sum", "take", "reshape", "transpose")
_EPILOGUE = {"add": "add", "subtract": "sub", "multiply": "mul", "divide": "div", "maximum": "max", "minimum": "min",
             "clip": "clip", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "gelu": "gelu", "erf": "erf"}


def _ops_of(name: str) -> list[str]:
    """Operator names a fused kernel was made of, from its name (fused_conv2d1_add_maximum_minimum)."""
    body = name[len("fused_"):] if name.startswith("fused_") else name
    ops, rest = [], body
    known = sorted(set(_MAIN_OPS) | set(_EPILOGUE), key=len, reverse=True)
    while rest:
        rest = rest.lstrip("_0123456789")
        if rest.startswith("fast_"):  # fast_erf, fast_softmax (compile/fast_math.py) are erf, softmax
            rest = rest[len("fast_"):]
        for op in known:
            if rest.startswith(op):
                ops.append(op)
                rest = rest[len(op):]
                break
        else:
            word = re.match(r"[a-z]+", rest)
            if not word:
                break
            ops.append(word.group(0))
            rest = rest[word.end():]
    return ops


def pattern_of(name: str) -> str:
    """A readable fusion pattern: conv2d+bias+relu6, conv2d+bias+residual, matmul+bias, ..."""
    if name.startswith("te_layout_transform"):
        return "layout_transform"
    # the blocked-layout convs and their 8-bit forms (compile/layout.py: conv2d_nchwc, conv2d_nchwc_int8)
    ops = [op for op in _ops_of(name) if op not in ("nchwc", "int", "wide")]
    if ops[:2] == ["depthwise", "conv2d"]:
        ops = ["depthwise_conv2d", *ops[2:]]
    if not ops:
        return name
    head = ops[0]
    tail = ops[1:]
    parts = [head]
    adds = tail.count("add")
    if head in ("conv2d", "depthwise_conv2d", "matmul", "dense", "conv1d", "conv2d_transpose") and adds:
        parts.append("bias")
        if adds > 1:
            parts.append("residual")
    elif adds:
        parts.append("add" if adds == 1 else f"add×{adds}")
    if "maximum" in tail and "minimum" in tail or "clip" in tail:
        parts.append("relu6/clip")
    elif "maximum" in tail or "relu" in tail:
        parts.append("relu")
    for op in ("gelu", "erf", "sigmoid", "tanh", "multiply", "divide", "subtract"):
        if op in tail:
            parts.append(_EPILOGUE[op])
    return "+".join(parts)


def kernel_table(lowered) -> list[dict[str, Any]]:
    """One row per PrimFunc of the lowered module: pattern, FLOPs, bytes touched, schedule source, launches."""
    from tvm import IRModule, relax, tirx
    from tvm.s_tir.analysis import estimate_tir_flops

    from .tuning_db import kernel_schedule

    launches: Counter[str] = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, relax.GlobalVar):
            launches[expr.op.name_hint] += 1

    relax.analysis.post_order_visit(lowered["main"], visit)
    rows = []
    for gv, func in lowered.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = str(gv.name_hint)
        try:
            flops = float(estimate_tir_flops(IRModule({gv: func})))
        except Exception:  # estimation is best effort; unknown loops -> no number rather than a wrong one
            flops = None
        nbytes = 0
        for buf in func.params:  # in TVM 0.27 PrimFunc parameters are the buffers themselves
            if hasattr(buf, "shape") and all(hasattr(d, "value") for d in buf.shape):
                nbytes += int(np.prod([int(d.value) for d in buf.shape])) * np.dtype(str(buf.dtype)).itemsize
        schedule = kernel_schedule(func).removeprefix("default:")  # the rule's name, "tuned" or "none"
        rows.append({"name": name, "pattern": pattern_of(name), "flops": flops, "bytes": nbytes,
                     "schedule": schedule, "launches": launches.get(name, 0), "time_us": None,
                     "dtypes": kernel_dtypes(func)})
    rows.sort(key=lambda r: -(r["flops"] or 0))
    return rows


_SHORT = {"float32": "f32", "float16": "f16", "int32": "i32", "int8": "i8", "uint8": "u8", "int64": "i64", "bool": "bool"}


def kernel_dtypes(func) -> str:
    """What a kernel's main computation reads and accumulates in: "u8×i8→i32" for an integer conv,
    "f32×f32→f32" for a float one; for kernels without a reduction, its inputs' → its output's type."""
    import tvm_ffi
    from tvm import s_tir, tirx

    blocks: list = []
    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, lambda b: blocks.append(b)), order="pre")
    short = lambda d: _SHORT.get(str(d), str(d))  # noqa: E731
    for b in blocks:
        if any(iv.iter_type == tirx.IterVar.CommReduce for iv in b.iter_vars) and b.writes:
            out = b.writes[0].source
            ins = [short(r.source.dtype) for r in b.reads if not r.source.same_as(out)]
            return "×".join(ins) + "→" + short(out.dtype)
    params = [p for p in func.params if hasattr(p, "dtype")]
    if not params:
        return ""
    ins = sorted({short(p.dtype) for p in params[:-1]}) or ["-"]
    return ",".join(ins) + "→" + short(params[-1].dtype)


def patterns_summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many kernels of each fused pattern (only kernels that fused more than one operator)."""
    return dict(Counter(r["pattern"] for r in rows if "+" in r["pattern"]).most_common())


def measure_kernel_times(executor, inputs: list[np.ndarray], rows: list[dict[str, Any]], runs: int = 3) -> None:
    """Fill `time_us` (mean per run, all launches of the kernel together) by timing every VM call."""
    import tvm

    names = {r["name"] for r in rows}
    totals: Counter[str] = Counter()
    starts: dict[str, float] = {}

    def instrument(func, symbol, before_run, ret_value, *args):
        if symbol in names:
            if before_run:
                starts[symbol] = time.perf_counter()
            else:
                totals[symbol] += time.perf_counter() - starts.pop(symbol, time.perf_counter())
        return 0

    executor.run(inputs)  # warm-up outside the measurement
    executor.vm.set_instrument(tvm.ffi.convert(instrument) if hasattr(tvm, "ffi") else instrument)
    try:
        for _ in range(runs):
            executor.run(inputs)
    finally:
        executor.vm.set_instrument(None)
    for r in rows:
        if r["name"] in totals:
            r["time_us"] = totals[r["name"]] / runs * 1e6
