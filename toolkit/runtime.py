"""The Python runtime edge apps embed: load an artifact, run it, swap in a new version live.

    from toolkit import runtime
    m = runtime.load("build/mbv2-host")
    y = m.run({"x": arr})          # dict of output name -> numpy array
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compile import ArtifactError, TensorSpec, UsageError, VMExecutor, open_artifact
from targets import host_arch


@dataclass(frozen=True)
class _Version:
    """One loaded artifact; each thread runs it on a VM of its own."""

    path: Path
    manifest: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    index_bounds: dict[str, tuple[int, int]]
    base: VMExecutor
    local: threading.local

    def executor(self) -> VMExecutor:
        ex = getattr(self.local, "ex", None)
        if ex is None:
            ex = self.base.fork()
            self.local.ex = ex
        return ex


def _open(path: str | Path) -> _Version:
    """Check the artifact (compile.artifact.open_artifact), then load the very library that was checked."""
    path = Path(path)
    with open_artifact(path, for_arch=host_arch()) as verified:
        manifest = verified.manifest
        device = manifest["target"]["device"]
        if device == "cuda":
            import tvm

            if not tvm.cuda(0).exist:
                raise ArtifactError(f"{path} is built for an NVIDIA GPU and this machine has none: run it on the target device")
        lib = verified.load_library()
    try:
        base = VMExecutor(device=device, lib=lib)
    except Exception as exc:
        raise ArtifactError(f"cannot load {path / manifest['library']}: {str(exc).strip().splitlines()[-1]}") from None
    return _Version(
        path=path, manifest=manifest,
        inputs=tuple(TensorSpec.from_json(s) for s in manifest["inputs"]),
        outputs=tuple(TensorSpec.from_json(s) for s in manifest["outputs"]),
        index_bounds={name: (lo, hi) for name, (lo, hi) in manifest.get("index_bounds", {}).items()},
        base=base, local=threading.local(),
    )


class Model:
    """A loaded artifact. `run` may be called from many threads at once; `swap` replaces the version live."""

    def __init__(self, version: _Version):
        self._version = version
        self._swap_lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._version.path

    @property
    def manifest(self) -> dict[str, Any]:
        return self._version.manifest

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._version.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._version.outputs

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on named inputs; returns named outputs. Wrong names, shapes or dtypes raise UsageError."""
        version = self._version  # one read: a concurrent swap never mixes versions within a request
        args = validate_inputs(version.inputs, inputs, version.index_bounds)
        outs = version.executor().run(args)
        return {spec.name: arr for spec, arr in zip(version.outputs, outs)}

    def swap(self, new_artifact: str | Path, force: bool = False) -> None:
        """Load `new_artifact` and make it serve all later requests; in-flight requests finish on the old one.

        The new version must take the same inputs and give the same outputs (names, shapes, dtypes). When
        both record a validation accuracy in their lineage (artifacts built by `autoglm search` /
        `pipeline`), a less accurate new version is refused unless `force`.
        """
        new = _open(new_artifact)
        with self._swap_lock:
            old = self._version
            if new.inputs != old.inputs or new.outputs != old.outputs:
                raise UsageError(
                    f"cannot swap {old.path} for {new.path}: inputs/outputs differ "
                    f"({_sig(old)} vs {_sig(new)}); load it as a separate model instead"
                )
            old_acc, new_acc = (_validation_accuracy(v) for v in (old, new))
            if not force and old_acc is not None and new_acc is not None and new_acc < old_acc:
                raise UsageError(
                    f"cannot swap {old.path} for {new.path}: its validation accuracy is lower ({100 * new_acc:.2f}% vs "
                    f"{100 * old_acc:.2f}%, from their lineage); pass force=True to swap anyway"
                )
            self._version = new


def _validation_accuracy(v: _Version) -> float | None:
    acc = (v.manifest.get("lineage") or {}).get("validation_accuracy")
    return float(acc) if acc is not None else None


def _sig(v: _Version) -> str:
    def fmt(specs):
        return ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs)

    return f"({fmt(v.inputs)}) -> ({fmt(v.outputs)})"


def validate_inputs(specs: tuple[TensorSpec, ...] | list[TensorSpec], inputs: dict[str, np.ndarray],
                    index_bounds: dict[str, tuple[int, int]] | None = None) -> list[np.ndarray]:
    """The inputs in model order, after checking names, shapes, dtypes and (for inputs that index a table) values."""
    names = [s.name for s in specs]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise UsageError(f"unknown input {', '.join(map(repr, unknown))}; the model's inputs are: {', '.join(names)}")
    missing = [n for n in names if n not in inputs]
    if missing:
        raise UsageError(f"missing input {', '.join(map(repr, missing))}; the model's inputs are: {', '.join(names)}")
    out = []
    for s in specs:
        arr = np.asarray(inputs[s.name])
        if tuple(arr.shape) != s.shape:
            raise UsageError(f"input {s.name!r} has shape {list(arr.shape)} but the model expects {list(s.shape)}")
        if arr.dtype != np.dtype(s.dtype):
            raise UsageError(f"input {s.name!r} has dtype {arr.dtype} but the model expects {s.dtype}")
        if index_bounds and s.name in index_bounds and arr.size:
            check_index_range(s.name, arr, *index_bounds[s.name])
        out.append(arr)
    return out


def load(path: str | Path, threads: int | None = None) -> Model:
    """Load an artifact directory after checking its checksums and architecture.

    `threads` is TVM's CPU thread count for this process (TVM_NUM_THREADS, which TVM reads at every parallel
    launch and uses to size a calling thread's pool on its first one). Default: TVM_NUM_THREADS if it is set,
    else the artifact's target threads, as `autoglm bench` and the C++ runner use. Left unset, TVM ran even one
    thread through its pool here: 0.46 vs 0.17 ms a call for a small network (`runtime.load` then `run`).
    """
    if threads is not None and not (isinstance(threads, int) and 1 <= threads <= 4096):
        raise UsageError(f"threads is {threads!r}; give an integer from 1 to 4096")
    version = _open(path)
    if threads is not None:
        os.environ["TVM_NUM_THREADS"] = str(threads)
    elif "TVM_NUM_THREADS" not in os.environ:
        declared = version.manifest["target"].get("threads")
        os.environ["TVM_NUM_THREADS"] = str(declared if isinstance(declared, int) and 1 <= declared <= 4096 else 1)
    return Model(version)


def check_index_range(name: str, arr: np.ndarray, lo: int, hi: int) -> None:
    """Refuse values of an input that indexes a table outside [lo, hi] (TVM's gather would read past the table)."""
    low, high = int(arr.min()), int(arr.max())
    if low < lo or high > hi:
        bad = low if low < lo else high
        where = tuple(int(i) for i in np.argwhere(arr == bad)[0])
        raise UsageError(f"input {name!r} holds {bad} at {list(where)}, outside [{lo}, {hi}]: it indexes a table of "
                         f"{hi + 1} entries (e.g. token ids of an embedding); pass values in that range")
