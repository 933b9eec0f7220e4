"""Latency statistics, computed the same way as autoglm-runner's (runtime_cpp/README.md)."""

from __future__ import annotations

import numpy as np

STAT_KEYS = ("count", "mean", "std", "min", "max", "p50", "p90", "p95", "p99")


def summarize(latencies_ms: list[float]) -> dict[str, float] | None:
    """count, mean, population std, min, max and linearly interpolated percentiles; None when empty."""
    if not latencies_ms:
        return None
    a = np.asarray(latencies_ms, dtype=np.float64)
    out = {"count": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
           "max": float(a.max())}
    for p in (50, 90, 95, 99):
        out[f"p{p}"] = float(np.percentile(a, p))
    return out


def throughput_per_s(stats: dict[str, float] | None) -> float | None:
    """Inferences per second of one stream: 1000 / mean latency."""
    if not stats or stats["mean"] <= 0:
        return None
    return 1000.0 / stats["mean"]
