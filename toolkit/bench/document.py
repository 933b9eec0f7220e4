"""The versioned JSON document of a run (schema `autoglm-bench/1`, docs/bench-schema.md) and its CSV form."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .native_backend import BLOCK_WARMUP
from .result import BASELINE, BASELINE_FP32, TOOLKIT, RuntimeResult
from .sources import fp32_runtime
from .stats import STAT_KEYS, summarize, throughput_per_s

SCHEMA = "autoglm-bench/1"
CSV_SCHEMA = "autoglm-bench-csv/1"

INTERLEAVING = ("per thread count, each runtime in its own process; blocks of timed iterations alternate between "
                "runtimes (the first runtime of a round alternates too)")


def artifact_sizes(artifact: Path, manifest: dict[str, Any]) -> tuple[int, int]:
    """(library bytes, bytes of every file the artifact lists plus its manifest)."""
    lib = (artifact / manifest["library"]).stat().st_size
    total = sum((artifact / rel).stat().st_size for rel in manifest.get("files", {}) if (artifact / rel).is_file())
    return lib, total + (artifact / "manifest.json").stat().st_size


def _ratio(tk: RuntimeResult, results: list[RuntimeResult],
           role: str = BASELINE) -> tuple[dict[str, float] | None, str | None]:
    """toolkit / the `role` baseline at the same thread count (p50 and mean), or None and why not."""
    base = next((r for r in results if r.role == role and r.threads == tk.threads), None)
    if base is None:
        return None, None
    if tk.emulated:
        return None, "emulated timings are never compared with native ones (outputs were still checked)"
    if tk.where != base.where:
        return None, f"the baseline ran on this host and {tk.runtime} on {tk.where}: not comparable"
    a, b = summarize(tk.samples_ms), summarize(base.samples_ms)
    return {"p50": a["p50"] / b["p50"], "mean": a["mean"] / b["mean"]}, f"{tk.runtime} / {base.runtime}, same threads"


def _result(r: RuntimeResult, results: list[RuntimeResult]) -> dict[str, Any]:
    stats = summarize(r.samples_ms)
    ratio, note = _ratio(r, results) if r.role == TOOLKIT else (None, None)
    # int8 runs with the float model: the same ratio against the fp32 model's runtime, timed in the same turns
    ratio_fp32, note_fp32 = _ratio(r, results, BASELINE_FP32) if r.role == TOOLKIT else (None, None)
    if ratio and ratio_fp32:
        note = f"{note}; ratio_vs_fp32_baseline: {note_fp32}"
    return {
        "runtime": r.runtime, "role": r.role, "threads": r.threads, "where": r.where, "emulated": r.emulated,
        "load_ms": r.load_ms, "first_inference_ms": r.first_inference_ms, "latency_ms": stats,
        "throughput_per_s": throughput_per_s(stats), "peak_rss_bytes": r.peak_rss_bytes,
        "rss_before_load_bytes": r.rss_before_load_bytes, "processes": r.processes,
        "ratio_vs_baseline": ratio, "ratio_vs_fp32_baseline": ratio_fp32, "ratio_note": note,
        "samples_ms": list(r.samples_ms), "notes": list(r.notes),
    }


def _threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def ratio_summary(doc: dict[str, Any]) -> list[str]:
    """The lines that state an int8 run's two ratios and how far int8 is from fp32 (empty for other runs).

    The table, the reports and `benchmarks/bench_int8.py` read the same fields, so the ratios are computed once."""
    base = doc["baseline"] or {}
    if not base.get("fp32"):
        return []
    lines = []
    for r in doc["results"]:
        if r["role"] != TOOLKIT:
            continue
        a, b = r["ratio_vs_baseline"], r.get("ratio_vs_fp32_baseline")
        head = f"ratios (p50) at {_threads(r['threads'])}: "
        if a and b:
            lines.append(head + f"{r['runtime']} int8 / {base['runtime']} int8 {a['p50']:.2f}x; "
                                f"{r['runtime']} int8 / {base['fp32']['runtime']} {b['p50']:.2f}x")
        else:
            lines.append(head + f"n/a ({r['ratio_note']})")
    for d in doc["correctness"].get("int8_vs_fp32") or []:
        err = "-" if d["max_abs_error"] is None else f"{d['max_abs_error']:.3g}"
        agree = ("" if d["argmax_agreement"] is None
                 else f", argmax agrees on {round(d['argmax_agreement'] * d['argmax_rows'])}/{d['argmax_rows']} rows")
        lines.append(f"int8 vs fp32 (recorded, not checked): {d['runtime']} at {_threads(d['threads'])} vs "
                     f"{d['against']}: max abs error {err}{agree}")
    return lines


def to_document(run, status: str | None = None) -> dict[str, Any]:
    """The JSON document of a finished run (`run` is a harness.BenchRun)."""
    cfg, m = run.config, run.manifest
    lib_bytes, total_bytes = artifact_sizes(cfg.artifact, m)
    match = run.outputs_match
    return {
        "schema": SCHEMA,
        "run_id": run.run_id,
        "status": status or ("failed" if match is False else "completed"),
        "started_utc": run.started_utc, "finished_utc": run.finished_utc, "duration_s": run.duration_s,
        "command": cfg.command,
        "host": run.host,
        "artifact": {
            "path": str(cfg.artifact),
            "model": {k: m["model"][k] for k in ("name", "format", "source_file", "sha256")},
            "target": {k: m["target"][k] for k in ("name", "arch", "device")},
            "library_sha256": m["files"][m["library"]],
            "library_bytes": lib_bytes, "artifact_bytes": total_bytes,
            "planned_activation_bytes": m["memory"]["planned_activation_bytes"],
            "weight_bytes": m["memory"]["weight_bytes"],
            "kernels": m["fusion"]["kernels"], "launches": m["fusion"]["launches"],
            "tvm_version": m.get("tvm_version"),
        },
        "device": {"spec": str(cfg.device), "kind": cfg.device.kind, "emulated": cfg.device.kind == "qemu"},
        "settings": {
            "threads": sorted({r.threads for r in run.results}, key=[r.threads for r in run.results].index),
            "warmup": cfg.warmup, "repeat": cfg.repeat, "block": cfg.block_size, "native_block_warmup": BLOCK_WARMUP,
            "seed": cfg.seed, "atol": cfg.atol, "rtol": cfg.rtol, "timeout_s": cfg.timeout, "interleaving": INTERLEAVING,
        },
        "baseline": None if not run.baseline else {
            "runtime": run.baseline, "model_file": str(run.source.path), "model_origin": run.source.origin,
            "description": run.source.describe(),
            "fp32": None if run.fp32_source is None else {
                "runtime": fp32_runtime(run.fp32_source.format), "model_file": str(run.fp32_source.path),
                "model_origin": run.fp32_source.origin,
                "description": f"the float model {run.fp32_source.path} the artifact was quantized from (--model-file)",
            },
        },
        "results": [_result(r, run.results) for r in run.results],
        "correctness": {
            "reference": run.reference,
            "reference_model": run.source.describe() if run.source else None,
            "outputs_match": match,
            "max_abs_error": max((c["max_abs_error"] for c in run.comparisons), default=None),
            "comparisons": run.comparisons,
            "int8_vs_fp32": run.fp32_deviation if run.fp32_source is not None else None,
        },
        "profile": run.profile,
        "notes": list(run.notes),
    }


CSV_COLUMNS = [
    "schema", "record", "run_id", "started_utc", "status", "model", "model_sha256", "target", "arch", "device",
    "runtime", "role", "threads", "where", "emulated", "load_ms", "first_inference_ms",
    *[("count" if k == "count" else f"{k}_ms") for k in STAT_KEYS],
    "throughput_per_s", "peak_rss_bytes", "planned_activation_bytes", "weight_bytes", "artifact_bytes",
    "ratio_p50", "ratio_mean", "outputs_match", "max_abs_error",
    "kernel", "kernel_calls_per_run", "kernel_ms_per_run", "kernel_share",
    "ratio_fp32_p50", "ratio_fp32_mean",  # appended (columns are only ever appended): int8 runs' fp32 baseline
]


def to_csv(doc: dict[str, Any]) -> str:
    """One `result` row per runtime and thread count, then one `kernel` row per profiled kernel."""
    a = doc["artifact"]
    common = {
        "schema": CSV_SCHEMA, "run_id": doc["run_id"], "started_utc": doc["started_utc"], "status": doc["status"],
        "model": a["model"]["name"], "model_sha256": a["model"]["sha256"], "target": a["target"]["name"],
        "arch": a["target"]["arch"], "device": doc["device"]["spec"],
        "planned_activation_bytes": a["planned_activation_bytes"], "weight_bytes": a["weight_bytes"],
        "artifact_bytes": a["artifact_bytes"], "outputs_match": doc["correctness"]["outputs_match"],
    }
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in doc["results"]:
        cmp = [c for c in doc["correctness"]["comparisons"] if c["runtime"] == r["runtime"] and c["threads"] == r["threads"]]
        row = {**common, "record": "result", **{k: r[k] for k in ("runtime", "role", "threads", "where", "emulated",
                                                                   "load_ms", "first_inference_ms", "throughput_per_s",
                                                                   "peak_rss_bytes")}}
        for k, v in (r["latency_ms"] or {}).items():
            row["count" if k == "count" else f"{k}_ms"] = v
        if r["ratio_vs_baseline"]:
            row["ratio_p50"], row["ratio_mean"] = r["ratio_vs_baseline"]["p50"], r["ratio_vs_baseline"]["mean"]
        if r.get("ratio_vs_fp32_baseline"):
            row["ratio_fp32_p50"] = r["ratio_vs_fp32_baseline"]["p50"]
            row["ratio_fp32_mean"] = r["ratio_vs_fp32_baseline"]["mean"]
        if cmp:
            row["max_abs_error"] = cmp[0]["max_abs_error"]
        w.writerow(row)
    if doc["profile"]:
        for k in doc["profile"]["kernels"]:
            w.writerow({**common, "record": "kernel", "runtime": "autoglm-python", "role": "profile",
                        "threads": doc["profile"]["threads"], "kernel": k["name"],
                        "kernel_calls_per_run": k["calls_per_run"], "kernel_ms_per_run": k["ms_per_run"],
                        "kernel_share": k["share"]})
    return buf.getvalue()
