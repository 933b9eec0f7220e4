"""The choices a default rule makes (tile shape, loop order), exposed so that tuning can measure the others.

A rule calls `pick(name, candidates, default)` where it would otherwise use its heuristic choice. Outside
tuning no `Knobs` is active and `pick` returns the default, so `compile` is unchanged. `autoglm tune`
enumerates a kernel's variants with `enumerate_variants`: it runs the rule with each knob fixed in turn
(knobs that depend on earlier ones, such as a pixel count that depends on the channel blocks, are found
on the way) and keeps every distinct schedule. The default schedule is always the first variant, so
tuning starts from it and a variant is kept only where it measures faster.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Callable, Sequence

__all__ = ["Knobs", "Variant", "enumerate_variants", "pick"]


class Knobs:
    """Fixed choices for some knobs, and a record of every knob the rule asked about."""

    def __init__(self, fixed: dict[str, Any] | None = None):
        self.fixed = dict(fixed or {})
        self.seen: list[tuple[str, list[Any], Any]] = []

    def pick(self, name: str, candidates: Sequence[Any], default: Any) -> Any:
        cands = list(candidates)
        if default not in cands:
            cands.insert(0, default)
        self.seen.append((name, cands, default))
        value = self.fixed.get(name, default)
        return value if value in cands else default


_ACTIVE: ContextVar[Knobs | None] = ContextVar("autoglm_schedule_knobs", default=None)


def pick(name: str, candidates: Sequence[Any], default: Any) -> Any:
    """The value of knob `name`: `default` unless a tuning run fixed it to one of `candidates`."""
    knobs = _ACTIVE.get()
    return default if knobs is None else knobs.pick(name, candidates, default)


def active() -> Knobs | None:
    return _ACTIVE.get()


class Variant:
    """One schedule of a kernel: the knob values that produced it, the schedule and the rule's name."""

    def __init__(self, knobs: dict[str, Any], sch: Any, rule: str):
        self.knobs, self.sch, self.rule = knobs, sch, rule

    @property
    def is_default(self) -> bool:
        return not self.knobs


def enumerate_variants(apply: Callable[[], tuple[Any, str] | None], limit: int = 24) -> list[Variant]:
    """Up to `limit` distinct schedules from `apply()` (a rule run; None when no rule applies).

    Depth first over the knobs in the order the rule asks for them, each knob's default first and then its
    other candidates in the rule's order of preference, so a small limit keeps the variants nearest the
    default. `Variant.knobs` lists only the knobs that differ from their defaults."""
    import tvm_ffi

    out: list[Variant] = []
    hashes: set[int] = set()

    def run(fixed: dict[str, Any]):
        knobs = Knobs(fixed)
        token = _ACTIVE.set(knobs)
        try:
            result = apply()
        finally:
            _ACTIVE.reset(token)
        return result, knobs.seen

    def visit(fixed: dict[str, Any], depth: int) -> None:
        if len(out) >= limit:
            return
        result, seen = run(fixed)
        if result is None:
            return
        if depth >= len(seen):
            sch, rule = result
            h = tvm_ffi.structural_hash(sch.mod)
            if h not in hashes:
                hashes.add(h)
                defaults = {name: d for name, _, d in seen}
                out.append(Variant({k: v for k, v in fixed.items() if defaults.get(k) != v}, sch, rule))
            return
        name, cands, default = seen[depth]
        for value in [default] + [c for c in cands if c != default]:
            visit({**fixed, name: value}, depth + 1)
            if len(out) >= limit:
                return

    visit({}, 0)
    return out
