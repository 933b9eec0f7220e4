"""Per-target TIR schedules applied to fused kernels before lowering (filled in by the scheduling work)."""

from __future__ import annotations

from targets import Target


def schedule_passes(target: Target) -> list:
    """Passes that schedule the fused PrimFuncs for `target`; empty means TVM's unscheduled loops."""
    return []
