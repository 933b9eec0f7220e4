"""What a benchmark run is asked to do: the parsed, validated form of `autoglm bench`'s flags."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BenchUsageError

LOCAL, QEMU, RPC = "local", "qemu", "rpc"
BASELINES = ("onnxruntime", "litert")

_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}

RPC_SAFETY = ("TVM RPC has no authentication: keep tracker and servers on 127.0.0.1 and reach a board "
              "through an SSH tunnel (docs/bench-schema.md, 'Reaching a board')")


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DeviceSpec:
    """Where the toolkit's runtime runs: `local`, `qemu`, or `rpc://HOST:PORT/KEY` (a TVM RPC tracker)."""

    kind: str
    host: str | None = None
    port: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        return f"rpc://{self.host}:{self.port}/{self.key}" if self.kind == RPC else self.kind


def parse_device(text: str) -> DeviceSpec:
    text = text.strip()
    if text in (LOCAL, QEMU):
        return DeviceSpec(text)
    if not text.startswith("rpc://"):
        raise BenchUsageError(f"--device {text!r}: use local, qemu or rpc://HOST:PORT/KEY (a TVM RPC tracker)")
    rest = text[len("rpc://"):]
    hostport, sep, key = rest.partition("/")
    host, _, port_s = hostport.rpartition(":")
    if not sep or not key or "/" in key or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise BenchUsageError(f"--device {text!r} is not rpc://HOST:PORT/KEY (e.g. rpc://127.0.0.1:9190/rpi4)")
    if not is_loopback(host):
        raise BenchUsageError(f"--device {text!r}: the tracker must be on a loopback address (127.0.0.1); {RPC_SAFETY}")
    return DeviceSpec(RPC, host.strip("[]"), int(port_s), key)


def parse_threads(text: str | None) -> list[int] | None:
    """`1,2,4` -> [1, 2, 4]; None stays None (the target's default)."""
    if text is None:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
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
    command: str = ""

    def validate(self) -> None:
        if self.warmup < 0:
            raise BenchUsageError("--warmup must be >= 0")
        if self.repeat < 1:
            raise BenchUsageError("--repeat must be >= 1")
        if self.block < 0:
            raise BenchUsageError("--block must be >= 0 (0 picks one)")
        if self.timeout <= 0:
            raise BenchUsageError("--timeout must be > 0")
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
