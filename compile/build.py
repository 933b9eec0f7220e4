"""Fuse, schedule and build a Relax module for a target, and export it with the target's toolchain."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from targets import Target

from .errors import CompileFailure, ToolchainError
from .native_stderr import quiet_native_stderr
from .explain import kernel_table
from .frontend import TensorSpec, _one_line
from .progress import Stages


@dataclass
class BuildStats:
    """What the pipeline did to the graph: operators before, kernels after, planned memory."""

    graph_ops: int
    kernels: int
    launches: int
    kernel_names: list[str]
    planned_activation_bytes: int
    weight_bytes: int
    outputs: list[TensorSpec] = field(default_factory=list)
    kernel_rows: list[dict[str, Any]] = field(default_factory=list)
    tuning: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)  # QDQ models: compile/int8.py's report

    def to_json(self) -> dict[str, Any]:
        from .explain import patterns_summary

        return {"graph_ops": self.graph_ops, "kernels": self.kernels, "launches": self.launches,
                "kernel_names": self.kernel_names, "patterns": patterns_summary(self.kernel_rows),
                "kernel_table": self.kernel_rows}


def tvm_target(target: Target):
    import tvm

    return tvm.target.Target(target.tvm)


def toolchain(target: Target) -> tuple[str | None, str]:
    """The compiler that links the library (None: TVM's default host compiler) and its version line."""
    compiler = target.cross_compiler
    exe = compiler or "g++"
    if shutil.which(exe) is None:
        pkg = target.cross_compiler_package or "g++"
        raise ToolchainError(f"target {target.name} needs the C++ compiler {exe}, which is not installed: apt-get install {pkg}")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return compiler, (out.stdout.splitlines() or [exe])[0]


def _output_specs(mod, names: list[str]) -> list[TensorSpec]:
    from tvm import relax

    ret = mod["main"].ret_ty
    leaves = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for i, sinfo in enumerate(leaves):
        if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
            raise CompileFailure("the model returns something other than tensors of known shape; only tensor outputs are supported")
        shape = tuple(int(v) for v in sinfo.shape.values)
        name = names[i] if i < len(names) else f"output_{i}"
        specs.append(TensorSpec(name, shape, str(sinfo.dtype)))
    return specs


def _count_graph_ops(mod) -> int:
    import tvm
    from tvm import relax

    count = 0

    def visit(expr):
        nonlocal count
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            count += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return count


def _drop_unlaunched_kernels(mod):
    """The module without PrimFuncs no Relax function calls any more.

    RewriteDataflowReshape turns a kernel that only reshapes (e.g. NCHW[x]c [1, 4, 1, 1, 8] -> [1, 32]
    after global pooling) into a VM reshape and leaves the PrimFunc behind: it would be compiled into the
    library and listed in the manifest as a kernel that never runs.
    """
    import tvm
    from tvm import relax, tirx

    called: set[str] = set()

    def visit(expr):
        if isinstance(expr, relax.GlobalVar):
            called.add(expr.name_hint)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    keep = {gv: f for gv, f in mod.functions_items() if not isinstance(f, tirx.PrimFunc) or gv.name_hint in called}
    if len(keep) == len(mod.functions):
        return mod
    return tvm.IRModule(keep, attrs=mod.attrs, global_infos=mod.global_infos)


def _lowered_stats(mod) -> tuple[int, int, list[str], int, int]:
    import tvm
    from tvm import relax, tirx

    kernels = sorted(str(gv.name_hint) for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc))
    kernel_set = set(kernels)
    launches = 0
    storage = 0
    weights = 0

    def visit(expr):
        nonlocal launches, storage, weights
        if isinstance(expr, relax.Call):
            if isinstance(expr.op, relax.GlobalVar) and expr.op.name_hint in kernel_set:
                launches += 1
            elif isinstance(expr.op, tvm.ir.Op) and expr.op.name in ("relax.vm.alloc_storage", "relax.memory.alloc_storage"):
                size = expr.args[0]
                if isinstance(size, relax.ShapeExpr):
                    storage += int(np.prod([int(v) for v in size.values]))
        elif isinstance(expr, tvm.ir.GenericConst) and hasattr(expr.value, "shape"):
            data = expr.value
            weights += int(np.prod(data.shape)) * np.dtype(str(data.dtype)).itemsize

    relax.analysis.post_order_visit(mod["main"], visit)
    return len(kernels), launches, kernels, storage, weights


def cpu_front_passes(tt, target: Target | None = None, int8_report=None) -> list:
    """Library dispatch, fast math, integer rewrites, blocked layouts and legalization: the CPU pipeline
    up to fusion.

    Tuning extracts its tasks here. With `target`, convolutions go to the blocked NCHW[x]c layout of
    `compile/layout.py` (its block is the target's vector width); without, they stay NCHW. QDQ
    models get their integer operators (`compile/int8.py`; `int8_report` collects what changed).
    """
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from .fast_math import fast_math_pass
    from .index_bounds import ClampIndices
    from .int8 import IntegerOps, QdqElementwise
    from .layout import blocked_layout_passes, legalize_map
    from .relax_passes import FoldConstantTransforms

    layout = blocked_layout_passes(target) if target is not None else []
    legalize = cpu_generic.legalize_passes(tt)
    if layout:
        # TVM's conv2d legalization refuses 5-D layouts: the blocked convs get the toolkit's computes
        legalize = [tvm.relax.transform.LegalizeOps(legalize_map())] + legalize[1:]
    return ([ClampIndices()] + cpu_generic.library_dispatch_passes(tt) + [fast_math_pass(), QdqElementwise()] + layout
            + [IntegerOps(int8_report, _int32_lanes(target), _u8_dot(target)), FoldConstantTransforms(dequantize=True)]
            + legalize)


def _u8_dot(target: Target | None) -> bool:
    """Whether the target's 8-bit dot product takes unsigned activations (x86's vpdpbusd / vpmaddubsw)."""
    if target is None or target.device != "cpu":
        return False
    from .schedules import cpu_config

    return cpu_config(target).int8_dot in ("vnni", "avx2", "avx512bw")


def _int32_lanes(target: Target | None) -> int | None:
    """The int32 vector width the integer kernels are packed for (None: no target, or no vectors)."""
    if target is None or target.device != "cpu":
        return None
    from .schedules import cpu_config

    lanes = cpu_config(target).lanes(32)
    return lanes if lanes >= 4 else None


def relax_pipeline(target: Target, tuning_passes: list | None = None, int8_report=None):
    """The Relax pipeline for the target, operator fusion on (CPU targets don't fuse by default).

    CPU: TVM's CPU stages with this toolkit's schedule passes between fusion and lowering.
    CUDA: TVM's GPU pipeline (fusion + dlight GPU schedules).
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from .schedule import schedule_passes

    tt = tvm_target(target)
    if target.device == "cuda":
        from .index_bounds import ClampIndices

        return tvm.transform.Sequential([ClampIndices(), relax.get_default_pipeline(tt)])
    return tvm.transform.Sequential(
        cpu_front_passes(tt, target, int8_report)
        + list(tuning_passes or [])  # tuned records first; the default rules schedule the rest
        + schedule_passes(target)
        + cpu_generic.dataflow_lower_passes(tt)
        + cpu_generic.finalize_passes(tt)
    )


def build_library(mod, target: Target, lib_path: Path, output_names: list[str],
                  tuning_db: Path | None = None, stages: Stages | None = None) -> tuple[BuildStats, str]:
    """Lower, build and export `mod` to `lib_path`; returns the stats and the toolchain line."""
    import tvm

    from .tuning_db import tuning_passes_for, tuning_summary

    stages = stages or Stages()

    compiler, compiler_line = toolchain(target)
    if target.device == "cuda":
        from .cuda import enable_cuda_codegen

        compiler_line += f"; {enable_cuda_codegen()}"
    tt = tvm_target(target)
    outputs = _output_specs(mod, output_names)
    graph_ops = _count_graph_ops(mod)
    from .int8 import Int8Report, is_quantized

    report = Int8Report() if is_quantized(mod) else None
    try:
        with stages.stage("fuse + schedule"), tt, quiet_native_stderr():
            pipeline = relax_pipeline(target, tuning_passes_for(tuning_db, target), report)
            lowered = _drop_unlaunched_kernels(pipeline(mod))
        kernels, launches, names, planned, weights = _lowered_stats(lowered)
        rows = kernel_table(lowered)
        with stages.stage("LLVM codegen"), tt, quiet_native_stderr():
            ex = tvm.compile(lowered, target=tt, relax_pipeline=None)
    except Exception as exc:
        raise CompileFailure(f"TVM could not build the model for {target.name}: {_one_line(exc)}") from None
    try:
        # TVM's object files go beside the library, not into /tmp: inside a staging folder they are removed
        # with it, also after a kill (the next compile of the same -o cleans stale staging folders)
        with stages.stage("link"), tempfile.TemporaryDirectory(prefix=".link-", dir=lib_path.parent) as work:
            fcompile = tvm.support.cc.cross_compiler(compiler) if compiler else None
            ex.export_library(str(lib_path), fcompile=fcompile, workspace_dir=work)
    except Exception as exc:
        raise CompileFailure(f"linking the library for {target.name} failed: {_one_line(exc)}") from None
    stats = BuildStats(graph_ops, kernels, launches, names, planned, weights, outputs, rows)
    stats.tuning = tuning_summary(tuning_db, lowered)
    if report is not None:
        stats.int8 = report.to_json()
    return stats, compiler_line
