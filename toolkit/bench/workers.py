"""Client side of toolkit.bench.worker: a runtime in its own subprocess, driven block by block."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BenchError
from .result import RuntimeResult


class Worker:
    """One `python -m toolkit.bench.worker` process; requests time out after `timeout` seconds."""

    def __init__(self, kind: str, path: Path, threads: int, timeout: float, label: str):
        self.kind, self.label, self.timeout = kind, label, timeout
        self._stderr = tempfile.TemporaryFile(mode="w+b")
        env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "toolkit.bench.worker", kind, str(path), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self._buf = b""

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [ln for ln in self._stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else ""

    def _died(self) -> BenchError:
        rc = self.proc.wait()
        how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
        tail = self._stderr_tail()
        return BenchError(f"the {self.label} process {how} mid-run{': ' + tail if tail else ''}; this run's results were discarded")

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        try:
            self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        deadline = time.monotonic() + self.timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise BenchError(f"the {self.label} process did not answer {op!r} within {self.timeout:g} s (--timeout); "
                                 f"it was stopped and this run's results were discarded")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise self._died()
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise BenchError(f"{self.label}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("exit")
            except BenchError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class WorkerBackend:
    """onnxruntime, LiteRT or the Python runtime, each in its own worker process."""

    def __init__(self, kind: str, path: Path, result: RuntimeResult, warmup: int, timeout: float, workdir: Path):
        self.kind, self.path, self.result, self.warmup, self.timeout = kind, path, result, warmup, timeout
        self.workdir = workdir
        self.worker: Worker | None = None

    def start(self, input_files: dict[str, str]) -> None:
        r = self.result
        self.worker = Worker(self.kind, self.path, r.threads, self.timeout, f"{r.runtime} ({r.threads} threads)")
        loaded = self.worker.call("load")
        r.load_ms, r.rss_before_load_bytes = loaded["load_ms"], loaded["rss_before_load_bytes"]
        out_dir = Path(tempfile.mkdtemp(prefix=f"{r.runtime}-t{r.threads}-", dir=self.workdir))
        first = self.worker.call("first", inputs=input_files, out_dir=str(out_dir))
        r.first_inference_ms = first["ms"]
        r.outputs = [np.load(o["path"], allow_pickle=False) for o in first["outputs"]]
        r.output_names = [o["name"] for o in first["outputs"]]
        r.processes = 1
        if self.warmup:
            self.worker.call("time", n=self.warmup)

    def block(self, n: int) -> None:
        self.result.samples_ms.extend(self.worker.call("time", n=n)["latencies_ms"])

    def profile(self, iterations: int) -> dict[str, Any]:
        return self.worker.call("profile", iterations=iterations)["profile"]

    def finish(self) -> None:
        self.result.peak_rss_bytes = self.worker.call("status")["peak_rss_bytes"]
        self.worker.close()

    def abort(self) -> None:
        if self.worker is not None:
            self.worker.kill()
