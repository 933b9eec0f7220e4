"""The toolkit's C++ runner (autoglm-runner) as a bench backend, natively or under qemu.

The runner is a one-shot program, so each interleaved block is one runner process: the first one
runs the full warm-up and gives the cold-start numbers (load, first inference) and the outputs;
later ones warm up with `BLOCK_WARMUP` untimed calls before their timed calls. Peak RSS is the
largest VmHWM any of them reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit import native

from .errors import BenchError
from .result import RuntimeResult

BLOCK_WARMUP = 2
MAX_REPEAT = 1_000_000  # autoglm-runner's limit on --repeat


class NativeBackend:
    def __init__(self, artifact: Path, result: RuntimeResult, inputs: dict[str, np.ndarray], *, warmup: int,
                 timeout: float, runtime_dir: Path, emulate: bool):
        self.artifact, self.result, self.inputs = artifact, result, inputs
        self.warmup, self.timeout, self.runtime_dir, self.emulate = warmup, timeout, runtime_dir, emulate

    def _run(self, warmup: int, repeat: int) -> native.NativeRunResult:
        where = "under qemu " if self.emulate else ""
        try:
            return native.run_artifact(self.artifact, self.inputs, emulate=self.emulate, warmup=warmup, repeat=repeat,
                                       threads=self.result.threads, runtime_dir=self.runtime_dir, timeout=self.timeout)
        except native.NativeRuntimeError as exc:
            if exc.kind == "Crash":
                first = str(exc).splitlines()[0].split(";")[0]
                raise BenchError(f"{first} (threads={self.result.threads}); this run's results were discarded") from None
            if exc.kind == "Timeout":
                raise BenchError(f"autoglm-runner {where}did not finish a block in {self.timeout:g} s (--timeout); "
                                 f"this run's results were discarded") from None
            raise BenchError(f"autoglm-runner {where}failed: {exc}") from None

    def start(self, input_files: dict[str, str]) -> None:  # noqa: ARG002 - the runner gets arrays
        self._first_block = True

    def block(self, n: int) -> None:
        while n > MAX_REPEAT:
            self._block(MAX_REPEAT)
            n -= MAX_REPEAT
        self._block(n)

    def _block(self, n: int) -> None:
        r = self.result
        run = self._run(self.warmup if self._first_block else min(self.warmup, BLOCK_WARMUP), n)
        if self._first_block:
            r.load_ms, r.first_inference_ms = run.load_ms, run.first_inference_ms
            r.outputs, r.output_names = list(run.outputs.values()), list(run.outputs)
            self._first_block = False
        r.samples_ms.extend(run.latencies_ms)
        r.processes += 1
        if run.peak_rss_bytes is not None:
            r.peak_rss_bytes = max(r.peak_rss_bytes or 0, run.peak_rss_bytes)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass  # run_artifact's subprocess is always reaped before it returns or raises
