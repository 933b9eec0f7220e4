"""One artifact timed against a reference artifact, chunk by chunk, in one process or one RPC session.

Why not the harness's blocks of runner processes: on a shared machine the speed a process gets changes
every 20-400 ms (work on the SMT sibling and the neighbours'; one 0.33 ms network ran in five distinct
states from 0.327 to 0.413 ms within 1.2 s here), so blocks a second apart disagree by up to 1.4x and only
60% of networks re-measured later came within ±10% of their first measurement. Here the two networks
alternate in chunks of about `chunk_ms` (TVM's `time_evaluator`: `number` runs timed as one, in C++, no
Python in the loop) and the run goes on, within `max_pairs`, until the reference has had one chunk within
`STOP_TOLERANCE` of its best known time: the machine was, for a moment, uncontended. The network's
*latency* is its fastest chunk, scaled by reference-best / reference-fastest-in-this-run (≈ 1 once the
stop condition held): the latency on an uncontended device, which is what a dedicated board gives.
Measured: 16 held-out networks timed in two processes agreed within ±5% (all 16), against 56% within ±10%
for the median of the same chunks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BenchError, one_line

CHUNK_MS = 2.0          # a chunk: enough runs to be ~2 ms of work, timed as one
MIN_PAIRS = 60
MAX_PAIRS = 600
STOP_TOLERANCE = 0.03   # the reference within 3% of its best: the machine was uncontended


@dataclass
class PairedTiming:
    """Per-run time of each chunk (ms) of the network and of the reference, in the order they ran."""

    net_ms: list[float]
    ref_ms: list[float]
    iterations: int                       # network runs timed (all chunks)

    @property
    def min_ms(self) -> float:
        return float(min(self.net_ms))

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.net_ms))

    @property
    def ref_min_ms(self) -> float:
        return float(min(self.ref_ms))


class TimedVM:
    """A loaded artifact with its inputs set, ready to be timed in chunks."""

    def __init__(self, vm, dev, label: str):
        self.vm, self.dev, self.label = vm, dev, label
        self.number = 1

    def run_ms(self, number: int) -> float:
        """Time `number` back-to-back runs as one; the mean per run in ms."""
        try:
            return float(self.vm.time_evaluator("invoke_stateful", self.dev, number=number, repeat=1)("main").mean) * 1e3
        except Exception as exc:
            raise BenchError(f"timing {self.label} failed: {one_line(exc, 200)}") from None

    def size_chunk(self, chunk_ms: float) -> None:
        one = min(self.run_ms(1) for _ in range(3))
        self.number = max(1, int(round(chunk_ms / max(one, 1e-6))))


def _set_inputs(vm, dev, manifest: dict[str, Any], seed: int) -> None:
    import tvm

    from compile.frontend import TensorSpec
    from compile.reference import random_inputs

    specs = [TensorSpec.from_json(s) for s in manifest["inputs"]]
    arrays = random_inputs(specs, seed)
    vm.set_input("main", *[tvm.runtime.tensor(np.asarray(arrays[s.name], order="C"), dev) for s in specs])
    vm.invoke_stateful("main")


def load_local(artifact: Path, threads: int, seed: int = 0) -> TimedVM:
    """The artifact (checked: manifest, checksums, architecture) in this process on `threads` TVM threads."""
    import tvm
    from tvm import relax

    from compile.artifact import open_artifact
    from compile.native import host_arch

    with open_artifact(artifact, for_arch=host_arch()) as verified:
        manifest = verified.manifest
        lib = verified.load_library()
    # TVM reads TVM_NUM_THREADS at every parallel launch. Without it this process's runs went through the
    # thread pool even at one thread: 0.54 vs 0.33 ms for the reference network here (the C++ runner sets it too).
    os.environ["TVM_NUM_THREADS"] = str(threads)
    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(lib, dev)
    _set_inputs(vm, dev, manifest, seed)
    return TimedVM(vm, dev, str(artifact))


def load_remote(session, artifact: Path, threads: int, seed: int = 0) -> TimedVM:
    """The artifact (checked here first) on the board behind an RPC session (toolkit.bench.rpc.connect)."""
    from compile.artifact import check_artifact

    from .rpc import remote_vm

    manifest = check_artifact(artifact)
    try:
        vm, dev = remote_vm(session.remote, artifact, manifest, threads)
        _set_inputs(vm, dev, manifest, seed)
    except Exception as exc:
        raise BenchError(f"loading {artifact} on {session.addr} failed: {one_line(exc, 200)}") from None
    return TimedVM(vm, dev, f"{artifact} on {session.addr}")


def time_against(net: TimedVM, ref: TimedVM, ref_best_ms: float | None, *, chunk_ms: float = CHUNK_MS,
                 min_pairs: int = MIN_PAIRS, max_pairs: int = MAX_PAIRS) -> PairedTiming:
    """Alternate chunks of `net` and `ref` (which one goes first alternates too) for at least `min_pairs`
    pairs and then until `ref` has had a chunk within STOP_TOLERANCE of `ref_best_ms` (or `max_pairs`)."""
    if min_pairs < 1 or max_pairs < min_pairs:
        raise ValueError("need 1 <= min_pairs <= max_pairs")
    net.size_chunk(chunk_ms)
    if ref.number == 1:
        ref.size_chunk(chunk_ms)
    a: list[float] = []
    r: list[float] = []
    for p in range(max_pairs):
        if p % 2:
            a.append(net.run_ms(net.number))
            r.append(ref.run_ms(ref.number))
        else:
            r.append(ref.run_ms(ref.number))
            a.append(net.run_ms(net.number))
        if p + 1 >= min_pairs and (ref_best_ms is None or min(r) <= (1 + STOP_TOLERANCE) * ref_best_ms):
            break
    return PairedTiming(a, r, len(a) * net.number)


def calibrate(ref: TimedVM, chunks: int = 300, chunk_ms: float = CHUNK_MS) -> float:
    """The reference's fastest chunk over `chunks` chunks: a first 'best' for `time_against` to stop at."""
    ref.size_chunk(chunk_ms)
    return min(ref.run_ms(ref.number) for _ in range(chunks))
