"""Multi-trial search: Optuna's NSGA-II over the same space as the supernet, for a Pareto front.

Each trial is one architecture: every slot's op and every width group's width suggested as categoricals
(`skip` only where the space allows it). Its latency is the target's latency model's prediction and the
budget is a constraint (NSGA-II's constrained domination: a feasible trial beats every infeasible one), as
is the skip cap; a trial that breaks one is not trained (its accuracy is recorded as 0). The others are
trained from scratch for a few epochs (`TrainConfig.epochs`) and scored on the validation split.
Objectives: maximise validation accuracy, minimise predicted latency. The study is stored and resumed
like the hyperparameter study (toolkit.search.study): a killed search keeps every finished trial.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

from optuna.trial import FrozenTrial

from compile import UsageError

from ..datasets import Dataset
from . import latency, spaces
from .search import count_skips
from .train import TrainConfig

Progress = Callable[[str], None]


@dataclass
class ArchTrialContext:
    data: Dataset
    meta: dict[str, Any]
    space: str
    model: latency.LatencyModel
    budget_ms: float | None
    max_skips: int | None
    train: TrainConfig
    n_trials: int
    progress: Progress | None = None          # None in worker processes (a callable of the CLI does not pickle)


def architecture(ctx: ArchTrialContext, trial) -> dict[str, Any]:
    """The architecture a trial suggests."""
    sp = spaces.get(ctx.space)
    ops = []
    for k in range(sp.SLOTS):
        allowed = [i for i in range(len(sp.OPS)) if i != sp.SKIP or sp.skippable(k)]
        name = trial.suggest_categorical(f"slot{k}", [sp.op_name(sp.OPS[i]) for i in allowed])
        ops.append(next(i for i in allowed if sp.op_name(sp.OPS[i]) == name))
    widths = [list(group).index(trial.suggest_categorical(f"width{g}", list(group))) for g, group in enumerate(sp.WIDTH_GROUPS)]
    return sp.from_choices(ctx.meta, ops, widths)


def constraints(trial: FrozenTrial) -> list[float]:
    """A finished trial's constraint values (feasible when all <= 0): predicted minus budget, skips minus the cap."""
    return list(trial.user_attrs.get("constraints", [1.0, 1.0]))


def objective(ctx: ArchTrialContext, trial) -> tuple[float, float]:
    from .run import train_architecture

    arch = architecture(ctx, trial)
    sp = spaces.get(ctx.space)
    pred = ctx.model.predict(arch)
    cons = [pred - ctx.budget_ms if ctx.budget_ms is not None else -pred,
            float(count_skips(arch) - ctx.max_skips) if ctx.max_skips is not None else -1.0]
    trial.set_user_attr("architecture", arch)
    trial.set_user_attr("predicted_ms", pred)
    trial.set_user_attr("constraints", cons)
    # NSGA-II's constrained domination reads these (Optuna 5: Trial.set_constraint; FixedTrial has it too)
    trial.set_constraint("predicted_over_budget_ms", cons[0])
    trial.set_constraint("skips_over_cap", cons[1])
    head = f"multi-trial: {trial.number + 1}/{ctx.n_trials} {sp.describe(arch)}: predicted {pred:.3f} ms"
    if any(c > 0 for c in cons):
        _say(ctx, f"{head}, {'over the budget' if cons[0] > 0 else 'over the skip cap'}: not trained")
        return 0.0, pred
    _, tr = train_architecture(arch, ctx.data, replace(ctx.train, kd_alpha=0.0), None, None, "multi-trial")
    trial.set_user_attr("test_accuracy", tr.test_accuracy)
    _say(ctx, f"{head}, val accuracy {100 * tr.val_accuracy:.1f}% after {tr.epochs} epochs")
    return tr.val_accuracy, pred


def _say(ctx: ArchTrialContext, line: str) -> None:
    if ctx.progress is not None:
        ctx.progress(line)
    else:
        print(line, file=sys.stderr, flush=True)


@dataclass
class MultiTrialResult:
    arch: dict[str, Any]
    feasible: list[dict[str, Any]]            # every feasible completed trial, best accuracy first
    front: list[dict[str, Any]]               # the Pareto front of the feasible trials, fastest first
    study: str
    trials: int
    ran: int

    def within(self, budget_ms: float) -> dict[str, Any]:
        """The most accurate feasible trial predicted within `budget_ms` (the fastest one if none is)."""
        fits = [t for t in self.feasible if t["predicted_ms"] <= budget_ms]
        return (fits[0] if fits else min(self.feasible, key=lambda t: t["predicted_ms"]))["architecture"]


def _row(t: FrozenTrial) -> dict[str, Any]:
    return {"trial": t.number, "architecture": t.user_attrs["architecture"], "val_accuracy": t.values[0],
            "predicted_ms": t.values[1], "test_accuracy": t.user_attrs.get("test_accuracy")}


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row beats on both accuracy and predicted latency, fastest first."""
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r["predicted_ms"], -r["val_accuracy"])):
        if r["val_accuracy"] > best:
            front.append(r)
            best = r["val_accuracy"]
    return front


def run_multi_trial(ctx: ArchTrialContext, name: str, storage: str | None, workdir, workers: int, seed: int,
                    say: Progress) -> MultiTrialResult:
    """Run (or resume) the NSGA-II study `name` to `ctx.n_trials` finished trials; the best feasible architecture."""
    from .study import completed_trials, open_study, run_trials

    study = open_study(name, storage, workdir, workers, directions=["maximize", "minimize"], seed=seed)
    kept = len(completed_trials(study))
    if kept:
        say(f"multi-trial: resuming study {name}: {kept} completed trials kept")
    run_ctx = replace(ctx, progress=ctx.progress or say) if workers == 1 else replace(ctx, progress=None)
    ran = run_trials(study, functools.partial(objective, run_ctx), ctx.n_trials, workers)
    done = completed_trials(study)
    feasible = sorted((_row(t) for t in done if all(c <= 0 for c in constraints(t))),
                      key=lambda r: (-r["val_accuracy"], r["predicted_ms"]))
    if not feasible:
        raise UsageError(f"none of the {len(done)} architectures tried fits the budget"
                         f"{'' if ctx.budget_ms is None else f' of {ctx.budget_ms:g} ms'} and the skip cap; raise "
                         f"--latency-budget or --multi-trial")
    front = pareto_front(feasible)
    say(f"multi-trial: {ran} trials run, {len(done)} completed, {len(feasible)} within the budget, Pareto front of "
        f"{len(front)}; best val accuracy {100 * feasible[0]['val_accuracy']:.1f}% at {feasible[0]['predicted_ms']:.3f} ms predicted")
    return MultiTrialResult(feasible[0]["architecture"], feasible, front, name, len(study.trials), ran)
