"""Plots of a run (matplotlib, Agg backend): latency CDF per runtime, per-kernel profile bars. PNG bytes out."""

from __future__ import annotations

import io
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def latency_cdf(doc: dict[str, Any]) -> bytes:
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in doc["results"]:
        xs = np.sort(np.asarray(r["samples_ms"], dtype=float))
        if not xs.size:
            continue
        ys = np.arange(1, xs.size + 1) / xs.size
        label = f"{r['runtime']}, {r['threads']} thr" + (" (emulated)" if r["emulated"] else "")
        ax.step(xs, ys, where="post", label=label, linestyle="-" if r["role"] == "toolkit" else "--")
    samples = [x for r in doc["results"] for x in r["samples_ms"] if x > 0]
    log_scale = bool(samples) and max(samples) / min(samples) > 20
    if log_scale:  # runtimes an order of magnitude apart
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.set_xlabel("latency per inference (ms" + (", log scale)" if log_scale else ")"))
    ax.set_ylabel("fraction of runs ≤ latency")
    ax.set_title(f"Latency CDF: {doc['artifact']['model']['name']} on {doc['device']['spec']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def kernel_profile(doc: dict[str, Any], top: int = 20) -> bytes | None:
    p = doc.get("profile")
    if not p or not p["kernels"]:
        return None
    plt = _pyplot()
    kernels = p["kernels"][:top]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(kernels) + 1.2))
    names = [k["name"] for k in kernels][::-1]
    shares = [100 * k["share"] for k in kernels][::-1]
    ax.barh(names, shares)
    for y, s in enumerate(shares):
        ax.text(s, y, f" {s:.1f}%", va="center", fontsize=7)
    ax.set_xlabel("share of kernel time (%)")
    ax.set_title(f"Per-kernel profile ({p['threads']} threads, {p['iterations']} runs"
                 + (f", top {top} of {len(p['kernels'])}" if len(p["kernels"]) > top else "") + ")")
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)
