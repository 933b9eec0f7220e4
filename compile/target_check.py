"""Target checks that need LLVM (through TVM), made before a compile starts.

`targets` validates a target file's fields and types without importing TVM; whether its CPU name
is one LLVM knows can only be asked of LLVM. An unknown `mcpu` would otherwise print LLVM errors
and quietly build generic code.
"""

from __future__ import annotations

import difflib
from functools import lru_cache

from targets import Target

from .errors import UsageError


@lru_cache(maxsize=None)
def _cpus(triple: str) -> tuple[str, ...] | None:
    import tvm
    from tvm.target import codegen

    try:
        return tuple(str(c) for c in codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple})))
    except Exception:  # noqa: BLE001 - an LLVM without this query, or a triple it cannot build for
        return None


def check_llvm_cpus(target: Target) -> None:
    """Refuse a target whose `mcpu` (or its host's) is not a CPU LLVM knows for its `mtriple`, naming the field."""
    specs = [("tvm", target.tvm)]
    if isinstance(target.tvm.get("host"), dict):
        specs.append(("tvm.host", target.tvm["host"]))
    for table, spec in specs:
        if spec.get("kind") != "llvm" or "mcpu" not in spec:
            continue
        triple = spec.get("mtriple")
        if not triple:
            continue
        cpus = _cpus(triple)
        if not cpus:
            continue
        mcpu = spec["mcpu"]
        if mcpu not in cpus:
            close = difflib.get_close_matches(mcpu, cpus, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else f"LLVM knows {len(cpus)} CPUs for {triple}"
            raise UsageError(f"target file {target.source}: [{table}] mcpu {mcpu!r} is not a CPU LLVM knows for "
                             f"{triple} ({hint}); fix the target file")
