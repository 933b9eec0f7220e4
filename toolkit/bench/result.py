"""What one runtime at one thread count measured in a run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOOLKIT, BASELINE = "toolkit", "baseline"
BASELINE_FP32 = "baseline-fp32"     # int8 runs: the float model the artifact was quantized from
BASELINE_ROLES = (BASELINE, BASELINE_FP32)


@dataclass
class RuntimeResult:
    runtime: str                    # autoglm-cpp, autoglm-python, autoglm-rpc, onnxruntime, litert, onnxruntime fp32, litert fp32
    role: str                       # toolkit | baseline | baseline-fp32
    threads: int
    where: str                      # host, qemu-aarch64, rpc://HOST:PORT/KEY
    emulated: bool = False
    load_ms: float | None = None
    first_inference_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    rss_before_load_bytes: int | None = None
    processes: int = 0              # how many processes (or RPC sessions) the timed samples came from
    outputs: list[np.ndarray] = field(default_factory=list, repr=False)
    output_names: list[str] = field(default_factory=list)
    extra_outputs: list[list[np.ndarray]] = field(default_factory=list, repr=False)  # other fleet servers
    notes: list[str] = field(default_factory=list)
