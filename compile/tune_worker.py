"""Build and export functions that MetaSchedule's LocalBuilder runs in its worker processes.

They live in their own light module because the builder pickles them by reference and each worker
imports this module afresh. TVM's default build function imports `tvm.s_tir.tensor_intrin` (about
40 s on a small CPU, mostly CUDA intrinsics) in every fresh worker, which makes every candidate
time out; these functions do the same build without that import.
"""

from __future__ import annotations

import os
import tempfile


def build(mod, target, _params):
    """Build one candidate PrimFunc module for `target` (TVM's default build, minus tensor_intrin)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export(rt_mod, compiler: str | None = None) -> str:
    """Export a built candidate as a shared library (linked by `compiler` for cross targets)."""
    import tvm

    path = os.path.join(tempfile.mkdtemp(prefix="autoglm-tune-"), "candidate.so")
    if compiler:
        rt_mod.export_library(path, fcompile=tvm.support.cc.cross_compiler(compiler))
    else:
        rt_mod.export_library(path)
    return path


def use_threads(n: int) -> None:
    """Runner worker initializer: TVM's thread pool in this process runs `n` threads (it reads
    TVM_NUM_THREADS when it first starts, after this)."""
    os.environ["TVM_NUM_THREADS"] = str(n)
