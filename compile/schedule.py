"""Per-target TIR schedules applied to fused kernels before lowering.

CPU targets get the rule-based default schedules of `compile.schedules` (tiled, vectorised at the
target's SIMD width, parallel over cores, epilogues fused per register tile). Setting the
environment variable AUTOGLM_NO_SCHEDULES=1 turns them off (TVM's unscheduled loops), for
benchmarks and bisecting.
"""

from __future__ import annotations

import os

from targets import Target

NO_SCHEDULES_ENV = "AUTOGLM_NO_SCHEDULES"


def schedules_disabled() -> bool:
    return os.environ.get(NO_SCHEDULES_ENV, "").strip().lower() not in ("", "0", "false", "no")


def schedule_passes(target: Target) -> list:
    """Passes that schedule the fused PrimFuncs for `target`; empty means TVM's unscheduled loops."""
    if target.device != "cpu" or schedules_disabled():
        return []
    from .schedules import schedule_passes as cpu_schedule_passes

    return cpu_schedule_passes(target)
