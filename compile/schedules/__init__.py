"""Rule-based default CPU schedules for fused TIR kernels.

`ScheduleKernels(target)` is an IRModule pass: for every PrimFunc not yet scheduled it tries the
rules of `rules.py` in order (tiled reduction for conv2d / matmul / pooling, TVM's CPU reduction
rule, elementwise) and keeps the first that applies. A scheduled PrimFunc carries the function
attribute `autoglm.schedule` naming the rule and ISA, e.g. "conv2d-x86-avx2",
"matmul-aarch64-neon"; kernels no rule recognises are left as they were, unmarked.
"""

from __future__ import annotations

from targets import Target

from .config import CpuConfig, cpu_config

ATTR = "autoglm.schedule"

__all__ = ["ATTR", "CpuConfig", "ScheduleKernels", "cpu_config", "schedule_func", "schedule_names", "schedule_passes",
           "schedule_variants"]


def _apply_rules(func, cfg: CpuConfig, tvm_target):
    """(schedule, rule name) of the first rule that applies to `func`, or None."""
    from . import rules
    from .int8 import conv2d_nchwc_int8, dense_int8, pack_int8, row_sums_int8
    from .knobs import active
    from .nchwc import conv2d_nchwc
    from .winograd import conv2d_winograd

    attempts = (
        lambda f: conv2d_nchwc_int8(f, cfg),
        lambda f: dense_int8(f, cfg),
        lambda f: pack_int8(f, cfg),
        lambda f: row_sums_int8(f, cfg),
        lambda f: conv2d_winograd(f, cfg),
        lambda f: conv2d_nchwc(f, cfg),
        lambda f: rules.conv2d_packed(f, cfg),
        lambda f: rules.matmul_packed(f, cfg),
        lambda f: rules.tiled_reduction(f, cfg),
        lambda f: rules.row_reduction(f, cfg),
        lambda f: rules.reduction(f, cfg, tvm_target),
        lambda f: rules.elementwise(f, cfg),
    )
    knobs = active()
    for attempt in attempts:
        asked = len(knobs.seen) if knobs is not None else 0
        try:
            result = attempt(func)
        except Exception:  # noqa: BLE001 - a rule that fails to apply leaves the kernel to the next one
            result = None
        if result is None:
            if knobs is not None:
                del knobs.seen[asked:]  # the knobs of a rule that did not apply are not this kernel's
            continue
        sch, kind = result
        return sch, f"{kind}-{cfg.isa}"
    return None


def schedule_func(func, cfg: CpuConfig, tvm_target):
    """The scheduled PrimFunc and its rule name, or (None, None) when no rule applies."""
    result = _apply_rules(func, cfg, tvm_target)
    if result is None:
        return None, None
    sch, name = result
    return sch.mod["main"], name


def schedule_variants(func, cfg: CpuConfig, tvm_target, limit: int = 24):
    """The default schedule of `func` and up to `limit - 1` alternatives from its rule's knobs (see knobs.py)."""
    from .knobs import enumerate_variants

    return enumerate_variants(lambda: _apply_rules(func, cfg, tvm_target), limit)


def ScheduleKernels(target: Target):  # noqa: N802 - a pass constructor, named like TVM's
    """The module pass that applies the default schedules for `target` (see `schedule_passes`)."""
    import tvm
    from tvm import tirx

    cfg = cpu_config(target)
    tvm_target = tvm.target.Target(target.tvm)

    @tvm.transform.module_pass(opt_level=0, name="AutoglmScheduleKernels")
    def _pass(mod, _ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and ("tirx.is_scheduled" in func.attrs or ATTR in func.attrs):
                continue
            new, name = schedule_func(func, cfg, tvm_target)
            if new is None:
                continue
            updates[gv] = new.with_attr(ATTR, name).with_attr("tirx.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def schedule_names(mod) -> dict[str, str | None]:
    """Kernel name -> the rule that scheduled it (None: unscheduled), for manifests and tests."""
    from tvm import tirx

    out = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            attrs = func.attrs
            out[gv.name_hint] = str(attrs[ATTR]) if attrs is not None and ATTR in attrs else None
    return out


def schedule_passes(target: Target) -> list:
    """Schedule every kernel, then move weight repacking out of the kernels and fold it at compile time."""
    from tvm import relax

    return [
        ScheduleKernels(target),
        SplitWeightPrepack(),
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(),
    ]


PREPACK_ANNOTATION = "meta_schedule.layout_rewrite_preproc"


def _has_prepack_block(func) -> bool:
    import tvm_ffi
    from tvm import s_tir

    hit: list = []

    def visit(block):
        if PREPACK_ANNOTATION in block.annotations:
            hit.append(block)

    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, visit), order="post")
    return bool(hit)


def SplitWeightPrepack():  # noqa: N802 - a pass constructor
    """TVM's SplitLayoutRewritePreproc, shown only the kernels that have a weight-prepack stage.

    TVM's pass visits every PrimFunc and aborts on one whose body holds no compute block (kernels
    TOPI writes with its IR builder, e.g. scatter_elements); the other kernels are left out of its
    view and put back unchanged.
    """
    import tvm
    from tvm import relax, tirx

    @tvm.transform.module_pass(opt_level=0, name="AutoglmSplitWeightPrepack")
    def _pass(mod, _ctx):
        prims = {gv: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
        hidden = {gv: f for gv, f in prims.items() if not _has_prepack_block(f)}
        if len(hidden) == len(prims):
            return mod
        shown = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv not in hidden}, attrs=mod.attrs)
        out = relax.transform.SplitLayoutRewritePreproc()(shown)
        for gv, f in hidden.items():
            out[gv] = f
        return out

    return _pass
