"""`autoglm pipeline`: latency model -> search -> retrain -> export -> compile -> verify -> bench against
onnxruntime, then the same space's random architectures and its hand-designed baseline trained, compiled
and measured the same way, and the report (report.md + pareto.png) comparing them."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from . import latency, spaces
from .run import (
    RunOptions,
    _save_json,
    default_resolution,
    search_and_train,
    space_of,
    train_architecture,
)

Progress = Callable[[str], None]


def ensure_latency_model(device: latency.Device, samples: int, say: Progress, space: str = latency.DEFAULT_SPACE) -> latency.LatencyModel:
    """The cached model of the device, built first (measuring what the cache lacks) when there is none."""
    try:
        return latency.load(device, space)
    except latency.LatencyModelError:
        say(f"latency model: no {space} model for {device.target.name} yet; measuring {samples} random networks "
            f"(cached for next time)")
        model, _ = latency.build(device, samples, say, space)
        return model


def baseline_architecture(model: latency.LatencyModel, meta: dict[str, Any], budget_ms: float | None) -> dict[str, Any]:
    """The space's hand-designed recipe at the largest scale the latency model puts within the budget."""
    space = spaces.get(model.space)
    archs = [space.baseline_for(meta, s) for s in (2, 1, 0)]
    if budget_ms is None:
        return archs[1]
    return next((a for a in archs if model.predict(a) <= budget_ms), archs[-1])


def run_pipeline(opts: RunOptions, *, random_count: int = 4, latency_samples: int = 60, progress: Progress | None = None) -> dict[str, Any]:
    """The README's main job; returns the summary written to OUTPUT/pipeline.json."""
    from ..datasets import load_dataset

    say = progress or (lambda _m: None)
    t0 = time.monotonic()
    device = latency.Device(opts.target, opts.threads or opts.target.threads, opts.rpc)
    latency.check_device(opts.target, opts.rpc)
    data = load_dataset(opts.dataset)
    space = space_of(opts, data)
    space.check_data(data, opts.resolution or space.default_size(data))  # before anything is measured
    model = ensure_latency_model(device, latency_samples, say, space.SPACE_NAME)
    searched = search_and_train(replace(opts, space=space.SPACE_NAME), say)
    meta = {k: searched["architecture"][k] for k in space.META}
    store = latency.MeasurementStore(latency.model_dir(device, space.SPACE_NAME)[0], space.SPACE_NAME)
    candidates = [{"kind": "random", "architecture": space.sample_for(10_000 + i, meta)} for i in range(random_count)]
    candidates.append({"kind": "baseline", "architecture": baseline_architecture(model, meta, opts.budget_ms)})
    for i, cand in enumerate(candidates, 1):
        arch = cand["architecture"]
        label = f"{cand['kind']} {i}/{len(candidates)}"
        say(f"{label}: train {space.describe(arch)}")
        _, tr = train_architecture(arch, data, replace(opts.train, kd_alpha=0.0, seed=opts.seed), None, None, label)
        rec = latency.measure_all([arch], device, store, say, label)[0]
        cand.update(test_accuracy=tr.test_accuracy, val_accuracy=tr.val_accuracy, measured_ms=rec["latency_ms"],
                    predicted_ms=model.predict(arch))
        say(f"{label}: test accuracy {100 * tr.test_accuracy:.1f}%, measured {rec['latency_ms']:.3f} ms")
    say("bench: the searched artifact against onnxruntime (same run, interleaved)")
    bench = bench_against_onnxruntime(Path(searched["artifact"]), device)
    summary = {"searched": {k: searched[k] for k in ("architecture", "validation_accuracy", "test_accuracy", "predicted_ms",
                                                     "measured_ms", "latency_budget_ms", "artifact", "onnx", "skips", "training")},
               "candidates": candidates, "bench": bench, "latency_model": _model_accuracy(device, space.SPACE_NAME),
               "dataset": searched["dataset"], "target": opts.target.name, "threads": device.threads,
               "seconds": time.monotonic() - t0, "budget_rounds": searched["budget_rounds"], "search": searched["search"],
               "pareto_front": searched["search_history"] if searched["search"]["strategy"] == "nsga2" else None}
    _save_json(opts.output / "pipeline.json", summary)
    from .report import write_report

    write_report(opts.output, summary)
    return summary


def bench_against_onnxruntime(artifact: Path, device: latency.Device) -> dict[str, Any]:
    import numpy as np

    from toolkit.bench.config import BenchConfig
    from toolkit.bench.harness import run_bench

    cfg = BenchConfig(artifact=artifact, baseline="onnxruntime", threads=[device.threads], warmup=10, repeat=200, block=20)
    if device.rpc is not None:
        cfg.device = device.rpc
    run = run_bench(cfg)
    p50 = {r.role: float(np.median(r.samples_ms)) for r in run.results}
    return {"toolkit_p50_ms": p50["toolkit"], "onnxruntime_p50_ms": p50["baseline"], "ratio": p50["toolkit"] / p50["baseline"],
            "outputs_match": run.outputs_match, "threads": device.threads}


def _model_accuracy(device: latency.Device, space: str) -> dict[str, Any]:
    doc = json.loads((latency.model_dir(device, space)[0] / "model.json").read_text())
    return {"fit_count": doc["fit_count"], "fit": doc.get("fit_accuracy"), "holdout": doc.get("holdout_accuracy")}


__all__ = ["run_pipeline", "default_resolution"]
