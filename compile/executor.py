"""Run a compiled library in this process with TVM's Relax VM (used by verification and the runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class VMExecutor:
    """A loaded Relax VM executable: positional numpy inputs in, numpy outputs out."""

    def __init__(self, lib_path: str | Path | None = None, device: str = "cpu", device_id: int = 0, *, lib=None):
        import tvm
        from tvm import relax

        self._tvm = tvm
        self._where = (device, device_id)
        self.device = tvm.cuda(device_id) if device == "cuda" else tvm.cpu(device_id)
        self.lib = lib if lib is not None else tvm.runtime.load_module(str(lib_path))
        self.vm = relax.VirtualMachine(self.lib, self.device)
        self._main = self.vm["main"]

    def fork(self) -> "VMExecutor":
        """Another VM over the same loaded library (a VM's registers are not shared between threads)."""
        return VMExecutor(device=self._where[0], device_id=self._where[1], lib=self.lib)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run `main` once; outputs are copied to host numpy arrays."""
        # np.asarray(order="C"), not np.ascontiguousarray: the latter turns 0-d (scalar) inputs into shape (1,).
        args = [self._tvm.runtime.tensor(np.asarray(a, order="C"), self.device) for a in inputs]
        out = self._main(*args)
        return [t.numpy() for t in _flatten(out)]


def _flatten(out) -> list:
    if hasattr(out, "numpy"):
        return [out]
    items = []
    for item in out:
        items.extend(_flatten(item))
    return items
