"""Run a compiled library in this process with TVM's Relax VM (used by verification and the runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class VMExecutor:
    """A loaded Relax VM executable: positional numpy inputs in, numpy outputs out."""

    def __init__(self, lib_path: str | Path, device: str = "cpu", device_id: int = 0):
        import tvm
        from tvm import relax

        self._tvm = tvm
        self.device = tvm.cuda(device_id) if device == "cuda" else tvm.cpu(device_id)
        self.lib = tvm.runtime.load_module(str(lib_path))
        self.vm = relax.VirtualMachine(self.lib, self.device)
        self._main = self.vm["main"]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run `main` once; outputs are copied to host numpy arrays."""
        args = [self._tvm.runtime.tensor(np.ascontiguousarray(a), self.device) for a in inputs]
        out = self._main(*args)
        return [t.numpy() for t in _flatten(out)]


def _flatten(out) -> list:
    if hasattr(out, "numpy"):
        return [out]
    items = []
    for item in out:
        items.extend(_flatten(item))
    return items
