"""`autoglm search` and `autoglm pipeline`: search -> re-measure against the budget -> retrain with
distillation -> export -> compile -> verify -> bench, each stage a line on stderr, the results in a run
directory that is written stage by stage (a killed run leaves finished stages and its study to resume).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from compile import UsageError

from ..datasets import Dataset, load_dataset
from . import latency, spaces
from .search import SearchConfig, count_skips, fit_budget, run_search, supernet_teacher
from .train import TrainConfig, train

Progress = Callable[[str], None]
MAX_REMEASURE = 5  # compile + measure a round: ~15 s, small beside the training
BUDGET_TOLERANCE = 0.05  # a net measured further under its budget than this is grown into it


@dataclass
class RunOptions:
    dataset: str
    target: Any
    output: Path
    budget_ms: float | None = None
    resolution: int | None = None
    threads: int | None = None
    rpc: Any = None
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    space: str | None = None         # None: by the dataset's kind (images: mobile-cnn, text: tiny-transformer)
    trials: int = 0                  # Optuna trials tuning the search's hyperparameters (0: the defaults)
    multi_trial: int = 0             # > 0: NSGA-II over architectures, this many trials, instead of the supernet
    trial_epochs: int = 4            # training epochs of each multi-trial architecture and each finalist
    finalists: int = 4               # supernet search: proposals ranked by a short training (<= 1: the derivation as is)
    storage: str | None = None
    workers: int = 1
    seed: int = 0


def space_of(opts: RunOptions, data: Dataset):
    """The space the run searches (given, or the one for the dataset's kind)."""
    return spaces.get(opts.space or spaces.for_data(data))


def default_resolution(data: Dataset, space_name: str = "mobile-cnn") -> int:
    """The input size a dataset is searched at: its own resolution (or the next the space has), or its sequence length."""
    return spaces.get(space_name).default_size(data)



def remeasure_to_budget(arch: dict[str, Any], measure: Callable[[dict[str, Any]], float],
                        predict: Callable[[dict[str, Any]], float],
                        refit: Callable[[dict[str, Any], float], tuple[dict[str, Any], list[str]]],
                        budget_ms: float | None, describe: Callable[[dict[str, Any]], str],
                        say: Progress) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measure the searched net on the device and refit it until it measures within BUDGET_TOLERANCE under the
    budget (at most MAX_REMEASURE measurements): over budget it shrinks, far under it grows, each time to the
    middle of the accepted window scaled by the model's error on this net (aiming at the budget itself, a
    digits-hard net refitted to 0.102 ms predicted measured 0.103 ms for a 0.1 ms budget). Never returns a net measured over budget when one measured
    within it. Returns (architecture, the rounds: architecture, predicted_ms, measured_ms)."""
    rounds: list[dict[str, Any]] = []
    for i in range(MAX_REMEASURE):
        pred, measured = predict(arch), measure(arch)
        rounds.append({"architecture": arch, "predicted_ms": pred, "measured_ms": measured})
        say(f"budget check: {describe(arch)}: predicted {pred:.3f} ms, measured {measured:.3f} ms")
        if budget_ms is None or (1 - BUDGET_TOLERANCE) * budget_ms <= measured <= budget_ms or i == MAX_REMEASURE - 1:
            break
        # aim at the middle of the accepted window: the model's error on the refitted net is not this one's
        refitted, moves = refit(arch, budget_ms * (1 - BUDGET_TOLERANCE / 2) * pred / measured)
        if refitted == arch:
            break
        word = "over budget, shrink" if measured > budget_ms else f"more than {100 * BUDGET_TOLERANCE:g}% under budget"
        for mv in moves:
            say(f"budget check: {word}: {mv}")
        arch = refitted
    within = [r for r in rounds if budget_ms is not None and r["measured_ms"] <= budget_ms]
    if within and rounds[-1]["measured_ms"] > budget_ms:  # type: ignore[operator]
        # growing overshot and no round is left to shrink again: the largest net measured within budget
        best = max(within, key=lambda r: r["measured_ms"])
        rounds.append({**best, "kept": "the largest net measured within budget"})
        arch = best["architecture"]
        say(f"budget check: keeping {describe(arch)}, measured {best['measured_ms']:.3f} ms, within budget")
    return arch, rounds

def parse_budget(text: str | None) -> float | None:
    """'2ms', '1.5 ms', '800us' -> milliseconds."""
    if text is None:
        return None
    t = text.strip().lower().replace(" ", "")
    for unit, scale in (("ms", 1.0), ("us", 1e-3), ("µs", 1e-3), ("s", 1e3)):
        if t.endswith(unit):
            try:
                v = float(t[: -len(unit)]) * scale
            except ValueError:
                break
            if v > 0 and np.isfinite(v):
                return v
            break
    raise UsageError(f"--latency-budget {text!r} is not a duration; write it like 2ms, 0.5ms or 800us")


def _save_json(path: Path, doc: Any) -> None:
    from compile.fileio import write_atomic

    write_atomic(path, json.dumps(doc, indent=2) + "\n")


def export_trained(module: torch.nn.Module, arch: dict[str, Any], path: Path) -> Path:
    from ..export import export_onnx

    module.eval()
    return export_onnx(module, spaces.of(arch).example_input(arch), path)


def train_architecture(arch: dict[str, Any], data: Dataset, cfg: TrainConfig, teacher=None, progress: Progress | None = None,
                       label: str = "train"):
    space = spaces.of(arch)
    torch.manual_seed(cfg.seed)
    module = space.build_module(arch)
    result = train(module, data, space.size_of(arch), cfg, teacher, progress, label)
    return module, result


@dataclass
class _TrialContext:
    data: Dataset
    resolution: int
    model: latency.LatencyModel
    budget_ms: float | None
    base: SearchConfig


def _trial_objective(ctx: _TrialContext, trial) -> float:
    """One hyperparameter trial: a search with suggested settings, pruned on the supernet's validation accuracy."""
    import optuna

    cfg = replace(ctx.base, lr_weights=trial.suggest_float("lr_weights", 1e-3, 1e-2, log=True),
                  lr_arch=trial.suggest_float("lr_arch", 3e-3, 3e-2, log=True),
                  weight_decay=trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
                  latency_weight=trial.suggest_float("latency_weight", 0.5, 8.0, log=True),
                  tau_start=trial.suggest_float("tau_start", 2.0, 8.0), tau_end=trial.suggest_float("tau_end", 0.2, 1.0))

    def stop(epoch: int, acc: float) -> bool:
        trial.report(acc, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return False

    res = run_search(ctx.data, ctx.resolution, ctx.model, cfg, ctx.budget_ms, None, stop)
    return res.history[-1]["val_accuracy"]


def tune_hyperparameters(ctx: _TrialContext, opts: RunOptions, say: Progress) -> tuple[SearchConfig, dict[str, Any]]:
    """Optuna over the search's learning rates, weight decay, lambda and temperature schedule; resumes a killed study."""
    from .study import completed_trials, open_study, run_trials

    name = f"search-{ctx.model.space}-{opts.dataset.replace('/', '_')}-{opts.target.name}"
    study = open_study(name, opts.storage, opts.output, opts.workers, directions=["maximize"], seed=opts.seed)
    kept = len(completed_trials(study))
    if kept:
        say(f"hyperparameters: resuming study {name}: {kept} completed trials kept")
    ran = run_trials(study, functools.partial(_trial_objective, ctx), opts.trials, opts.workers)
    best = study.best_trial
    say(f"hyperparameters: {ran} trials run, best supernet val accuracy {100 * best.value:.1f}% with "
        + ", ".join(f"{k}={v:.3g}" for k, v in best.params.items()))
    return replace(ctx.base, **best.params), {"study": name, "trials": len(study.trials), "best_trial": best.number,
                                              "best_value": best.value, "params": best.params}


def _pick_finalist(result, model: latency.LatencyModel, data: Dataset, opts: RunOptions, cfg: SearchConfig,
                   say: Progress) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The most accurate of the search's finalists after `opts.trial_epochs` of training; all of them, ranked."""
    from . import finalists

    props = finalists.propose(result.arch, result.supernet, model, opts.budget_ms, cfg.max_skips, opts.finalists, opts.seed)
    if len(props) == 1:  # every proposal fitted to the same net (a budget far above or below the space)
        say("finalists: every proposal fits the budget as the same net; nothing to rank")
        return result.arch, []
    say(f"finalists: {len(props)} architectures fitted to "
        + (f"the {opts.budget_ms:g} ms budget" if opts.budget_ms else "the derivation's predicted latency")
        + f", each trained {opts.trial_epochs} epochs from scratch; validation accuracy decides")
    ranked = finalists.rank(props, data, replace(opts.train, epochs=opts.trial_epochs, seed=opts.seed), say)
    best = ranked[0]
    say(f"finalists: keeping {spaces.of(best.architecture).describe(best.architecture)} ({best.source})")
    return best.architecture, [f.to_json() for f in ranked]


def search_and_train(opts: RunOptions, progress: Progress | None = None) -> dict[str, Any]:
    """The `autoglm search` job; returns the run summary (also written to OUTPUT/search.json)."""
    say = progress or (lambda _m: None)
    t_start = time.monotonic()
    out = opts.output
    data = load_dataset(opts.dataset)
    space = space_of(opts, data)
    resolution = opts.resolution or space.default_size(data)
    space.check_data(data, resolution)
    device = latency.Device(opts.target, opts.threads or opts.target.threads, opts.rpc)
    model = latency.load(device, space.SPACE_NAME)
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to search with
    say(f"latency model: {space.SPACE_NAME} on {opts.target.name}, {device.threads} thread(s), fitted on {model.fit_count} "
        f"measured networks")
    cfg = replace(opts.search, seed=opts.seed)
    hyper: dict[str, Any] = {"tuned": False}
    if opts.trials:
        ctx = _TrialContext(data, resolution, model, opts.budget_ms, replace(cfg, epochs=max(2, cfg.epochs // 2)))
        tuned, hyper = tune_hyperparameters(ctx, opts, say)
        cfg = replace(tuned, epochs=cfg.epochs, seed=opts.seed)
        hyper["tuned"] = True
    budget_text = "none" if opts.budget_ms is None else f"{opts.budget_ms:g} ms"
    if opts.multi_trial:
        from .multi_trial import ArchTrialContext, run_multi_trial

        say(f"search: {space.SPACE_NAME}, multi-trial NSGA-II, {opts.multi_trial} architectures of {opts.trial_epochs} "
            f"training epochs on {data.name} at input size {resolution}, budget {budget_text}")
        ctx = ArchTrialContext(data, space.data_meta(data, resolution), space.SPACE_NAME, model, opts.budget_ms, cfg.max_skips,
                               replace(opts.train, epochs=opts.trial_epochs, seed=opts.seed), opts.multi_trial, say)
        name = f"nsga2-{space.SPACE_NAME}-{opts.dataset.replace('/', '_')}-{opts.target.name}"
        mt = run_multi_trial(ctx, name, opts.storage, out, opts.workers, opts.seed, say)
        arch, teacher, history, repairs = mt.arch, None, mt.front, []
        strategy = {"strategy": "nsga2", "study": mt.study, "trials": mt.trials, "trial_epochs": opts.trial_epochs}

        def refit(a: dict[str, Any], budget: float) -> tuple[dict[str, Any], list[str]]:
            new = mt.within(budget)
            return new, [f"the most accurate trial predicted within {budget:.3f} ms: {space.describe(new)}"]
    else:
        say(f"search: {space.SPACE_NAME}, {cfg.epochs} epochs on {data.name} at input size {resolution}, budget {budget_text}")
        result = run_search(data, resolution, model, cfg, opts.budget_ms, say)
        arch, teacher, history, repairs = result.arch, supernet_teacher(result.supernet), result.history, result.repairs
        strategy = {"strategy": "supernet", **cfg.to_json(), "finalists": [], "finalist_epochs": opts.trial_epochs}
        if opts.finalists > 1:
            arch, strategy["finalists"] = _pick_finalist(result, model, data, opts, cfg, say)

        def refit(a: dict[str, Any], budget: float) -> tuple[dict[str, Any], list[str]]:
            return fit_budget(a, result.supernet, model, budget, cfg.max_skips)
    # re-measure what the search returns: the latency model is a model; the budget is about the device
    store = latency.MeasurementStore(latency.model_dir(device, space.SPACE_NAME)[0], space.SPACE_NAME)
    def measure(a: dict[str, Any]) -> float:
        return latency.measure_all([a], device, store, say, "budget check")[0]["latency_ms"]

    arch, rounds = remeasure_to_budget(arch, measure, model.predict, refit, opts.budget_ms, space.describe, say)
    _save_json(out / "architecture.json", arch)
    say(f"retrain: {space.describe(arch)} from scratch" + (", distilled from the supernet" if teacher else ""))
    tcfg = replace(opts.train, seed=opts.seed, kd_alpha=opts.train.kd_alpha if teacher else 0.0)
    module, tr = train_architecture(arch, data, tcfg, teacher, say, "retrain")
    distillation: dict[str, Any] = {"used": False}
    if teacher is not None and tcfg.kd_alpha > 0:
        # A supernet trained for a few epochs can be a weaker teacher than the student it teaches (digits-hard:
        # 49% validation accuracy): the same training without it is run too, and validation decides.
        say("retrain: the same training without distillation, to compare on the validation split")
        plain, ptr = train_architecture(arch, data, replace(tcfg, kd_alpha=0.0), None, say, "retrain (plain)")
        keep_kd = tr.val_accuracy >= ptr.val_accuracy
        distillation = {"used": keep_kd, "distilled_val_accuracy": tr.val_accuracy, "plain_val_accuracy": ptr.val_accuracy}
        say(f"retrain: validation accuracy distilled {100 * tr.val_accuracy:.1f}%, plain {100 * ptr.val_accuracy:.1f}%: "
            f"keeping the {'distilled' if keep_kd else 'plain'} one")
        if not keep_kd:
            module, tr = plain, ptr
    say(f"retrain: val accuracy {100 * tr.val_accuracy:.1f}%, test accuracy {100 * tr.test_accuracy:.1f}% "
        f"(best epoch {tr.best_epoch} of {tr.epochs})")
    onnx_path = export_trained(module, arch, out / "model.onnx")
    torch.save(module.state_dict(), out / "weights.pt.partial")
    (out / "weights.pt.partial").replace(out / "weights.pt")
    lineage = {
        "run": str(out.resolve()), "space": space.SPACE_NAME, "architecture": arch,
        "dataset": {"name": data.name, "sha256": data.sha256, "train": len(data.train.y), "val": len(data.val.y),
                    "test": len(data.test.y)},
        "seed": opts.seed, "search": strategy, "training": {**tcfg.__dict__, "distillation": distillation},
        "hyperparameters": hyper,
        "validation_accuracy": tr.val_accuracy, "test_accuracy": tr.test_accuracy,
        "latency_budget_ms": opts.budget_ms, "predicted_ms": rounds[-1]["predicted_ms"], "measured_ms": rounds[-1]["measured_ms"],
        "latency_model": {"key": model.key, "spec_version": latency.SPEC_VERSION, "fit_count": model.fit_count,
                          "threads": device.threads, "where": device.where},
    }
    say("compile: the trained network for " + opts.target.name)
    from compile import compile_model

    art = out / "artifact"
    res = compile_model(onnx_path, opts.target, art, lineage=lineage, progress=say)
    summary = {**lineage, "artifact": str(art), "onnx": str(onnx_path), "verification": res.manifest["verification"],
               "budget_rounds": rounds, "skips": count_skips(arch), "max_skips": cfg.max_skips,
               "search_history": history, "fit_moves": repairs, "seconds": time.monotonic() - t_start}
    _save_json(out / "search.json", summary)
    return summary
