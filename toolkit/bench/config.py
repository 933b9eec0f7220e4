"""What a benchmark run is asked to do: the parsed, validated form of `autoglm bench`'s flags."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from compile import UsageError
from compile.tune import RPC_SAFETY, is_loopback, require_loopback  # noqa: F401 - one loopback rule for bench and
# tune (rpc.py takes RPC_SAFETY and is_loopback from here)

from .errors import BenchUsageError

LOCAL, QEMU, RPC = "local", "qemu", "rpc"
BASELINES = ("onnxruntime", "litert")


@dataclass(frozen=True)
class DeviceSpec:
    """Where the toolkit's runtime runs: `local`, `qemu`, or `rpc://HOST:PORT/KEY` (a TVM RPC tracker)."""

    kind: str
    host: str | None = None
    port: int | None = None
    key: str | None = None
    allow_remote: bool = False  # --allow-remote-tracker: tracker and servers may be off loopback

    def __str__(self) -> str:
        return f"rpc://{self.host}:{self.port}/{self.key}" if self.kind == RPC else self.kind


def parse_device(text: str, allow_remote: bool = False) -> DeviceSpec:
    text = text.strip()
    if text in (LOCAL, QEMU):
        return DeviceSpec(text)
    if not text.startswith("rpc://"):
        raise BenchUsageError(f"--device {text!r}: use local, qemu or rpc://HOST:PORT/KEY (a TVM RPC tracker)")
    rest = text[len("rpc://"):]
    hostport, sep, key = rest.partition("/")
    host, _, port_s = hostport.rpartition(":")
    if (not sep or not key or "/" in key or not host or not re.fullmatch(r"[0-9]{1,5}", port_s)
            or not 0 < int(port_s) < 65536):
        raise BenchUsageError(f"--device {text!r} is not rpc://HOST:PORT/KEY (e.g. rpc://127.0.0.1:9190/rpi4)")
    try:
        require_loopback(host, "--device", text, allow_remote)
    except UsageError as exc:
        raise BenchUsageError(str(exc)) from None
    return DeviceSpec(RPC, host.strip("[]"), int(port_s), key, allow_remote)


def parse_threads(text: str | None) -> list[int] | None:
    """`1,2,4` -> [1, 2, 4]; None stays None (the target's default)."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"[0-9]{1,4}", part) or int(part) < 1:  # ASCII digits only: int() would take others
            raise BenchUsageError(f"--threads {text!r}: give positive thread counts separated by commas, e.g. 1,2")
        if int(part) not in out:
            out.append(int(part))
    if not out:
        raise BenchUsageError("--threads is empty")
    return out


def parse_percent(text: str) -> float:
    """`10%` or `0.1` -> 0.1."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise BenchUsageError(f"--threshold {text!r}: give a percentage such as 10%") from None
    if not 0 <= value < 100:
        raise BenchUsageError(f"--threshold {text!r} is out of range")
    return value


@dataclass
class BenchConfig:
    artifact: Path
    device: DeviceSpec = field(default_factory=lambda: DeviceSpec(LOCAL))
    python_runtime: bool = False
    baseline: str | None = None          # None, "auto", "onnxruntime" or "litert"
    model_file: Path | None = None
    threads: list[int] | None = None     # None: the target's default thread count
    warmup: int = 5
    repeat: int = 50
    block: int = 0                       # timed iterations per interleaved block; 0: auto
    seed: int = 0
    atol: float = 1e-4
    rtol: float = 1e-3
    profile: bool = False
    timeout: float = 600.0               # per runner process / worker request / RPC block
    check_outputs: bool = True           # False: time only (latency-model measurements of random-weight nets)
    command: str = ""

    def validate(self) -> None:
        if self.warmup < 0:
            raise BenchUsageError("--warmup must be >= 0")
        if self.repeat < 1:
            raise BenchUsageError("--repeat must be >= 1")
        if self.block < 0:
            raise BenchUsageError("--block must be >= 0 (0 picks one)")
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise BenchUsageError("--timeout must be a number of seconds > 0")
        if not 0 <= self.seed < 2**64:
            raise BenchUsageError(f"--seed {self.seed} is out of range; give an integer from 0 to 2**64-1")
        for flag, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if not math.isfinite(value) or value < 0:
                raise BenchUsageError(f"{flag} {value} is not a tolerance; give a finite number >= 0")
        if self.profile and self.device.kind != LOCAL:
            raise BenchUsageError("--profile runs the artifact in-process on this machine (--device local); per-kernel "
                                  "profiles under qemu or over RPC are not supported")
        if self.python_runtime and self.device.kind != LOCAL:
            raise BenchUsageError(f"--python runs the Python runtime on this machine; it cannot be combined with --device {self.device}")
        if self.baseline not in (None, "auto", *BASELINES):
            raise BenchUsageError(f"--baseline {self.baseline!r}: choose onnxruntime, litert, auto or none")
        if self.model_file is not None and not Path(self.model_file).is_file():
            raise BenchUsageError(f"--model-file {self.model_file} does not exist")

    @property
    def block_size(self) -> int:
        """Timed iterations per block: about ten blocks per runtime unless --block says otherwise."""
        return min(self.block, self.repeat) if self.block else max(1, math.ceil(self.repeat / 10))
