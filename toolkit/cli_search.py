"""`autoglm latency-model build|eval`, `autoglm search` and `autoglm pipeline`."""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

import targets as targets_mod
from compile import UsageError

latency_app = typer.Typer(help="A target's latency model for a search space, measured through compile + bench.",
                          no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

SpaceOpt = Annotated[str, typer.Option("--space", help="Search space: mobile-cnn or tiny-transformer.")]
SearchSpaceOpt = Annotated[Optional[str], typer.Option("--space", help="Search space: mobile-cnn or tiny-transformer (default: by the dataset: images or text).")]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Target name (see `autoglm targets`).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="Threads to measure with (default: the target's).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="rpc://HOST:PORT/KEY: a board behind a TVM RPC tracker (default: this machine).")]
TargetsDir = Annotated[Optional[Path], typer.Option("--targets-dir", help="Extra directory of target TOML files.")]


class StageBars:
    """The progress callback of the search commands: every line goes to stderr; on a terminal, a stage that
    counts (`label: i/N ...`, `label: epoch i/N ...` or `label i/N: ...`) also gets a progress bar, so a user sees where the time
    goes (a log keeps the plain lines)."""

    COUNTED = re.compile(r"^(?P<label>[\w .+-]+?)(?:: (?:epoch )?| )(?P<i>\d+)/(?P<n>\d+)\b")

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
        self.bars = None
        self.tasks: dict[str, Any] = {}

    def __call__(self, line: str) -> None:
        if not self.console.is_terminal:
            print(line, file=sys.stderr, flush=True)
            return
        m = self.COUNTED.match(line)
        if m and self.bars is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console)
            self.bars.start()
        (self.bars.console if self.bars else self.console).print(line, markup=False)
        if m and self.bars is not None:
            label, i, n = m["label"], int(m["i"]), int(m["n"])
            if label not in self.tasks:
                self.tasks[label] = self.bars.add_task(label, total=n)
            self.bars.update(self.tasks[label], completed=i, total=n)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


@contextlib.contextmanager
def _progress():
    bars = StageBars()
    try:
        yield bars
    finally:
        bars.close()


def _check_space(name: str | None) -> None:
    from toolkit.search import spaces

    if name is not None and name not in spaces.NAMES:
        raise UsageError(f"--space {name!r}: choose one of {', '.join(spaces.NAMES)}")


def _device(target: str, threads: int | None, device: str | None, targets_dir: Path | None):
    from toolkit.bench.config import RPC, parse_device
    from toolkit.search import latency

    tgt = targets_mod.load_target(target, targets_dir)
    rpc = None
    if device is not None:
        spec = parse_device(device)
        if spec.kind != RPC:
            raise UsageError(f"--device {device}: latency is measured on this machine or on a board over RPC (rpc://HOST:PORT); "
                             f"qemu timings are never latency data")
        rpc = spec
    if threads is not None and not 1 <= threads <= 4096:
        raise UsageError("--threads must be from 1 to 4096")
    latency.check_device(tgt, rpc)
    return latency.Device(tgt, threads or tgt.threads, rpc)


@latency_app.command("build")
def build_cmd(space: SpaceOpt = "mobile-cnn", target: TargetOpt = "host",
              samples: Annotated[int, typer.Option("--samples", help="Random networks to measure and fit on.")] = 200,
              threads: ThreadsOpt = None, device: DeviceOpt = None, targets_dir: TargetsDir = None) -> None:
    """Measure random networks of the space on the target (what the cache lacks), fit the model, cache it."""
    from toolkit.search import latency

    _check_space(space)
    if not 8 <= samples <= 100_000:
        raise UsageError("--samples must be from 8 to 100000")
    dev = _device(target, threads, device, targets_dir)
    with _progress() as say:
        model, directory = latency.build(dev, samples, say, space)
    a = model.info["fit_accuracy"]
    print(f"{space} latency model for {dev.target.name} ({dev.threads} thread(s), {dev.where}): {model.fit_count} networks, "
          f"fit: {100 * a['within_10pct']:.0f}% within ±10%, mean abs error {a['mean_abs_pct_error']:.1f}%, "
          f"Spearman {a['spearman']:.3f}")
    print(f"  {directory / 'model.json'}  (measurements: {directory / 'measurements.csv'})")


@latency_app.command("eval")
def eval_cmd(space: SpaceOpt = "mobile-cnn", target: TargetOpt = "host",
             holdout: Annotated[int, typer.Option("--holdout", help="Held-out random networks to measure and predict.")] = 100,
             threads: ThreadsOpt = None, device: DeviceOpt = None, targets_dir: TargetsDir = None) -> None:
    """The model's accuracy on held-out random architectures: within ±10%, mean abs % error, Spearman."""
    from toolkit.search import latency

    _check_space(space)
    if not 3 <= holdout <= 100_000:
        raise UsageError("--holdout must be from 3 to 100000")
    dev = _device(target, threads, device, targets_dir)
    with _progress() as say:
        report, model, _ = latency.evaluate(dev, holdout, say, space)
    print(f"held-out accuracy on {report['architectures']} networks ({dev.target.name}, {dev.threads} thread(s), model fitted on "
          f"{model.fit_count}): {100 * report['within_10pct']:.1f}% within ±10%, {100 * report['within_5pct']:.1f}% within ±5%, "
          f"mean abs error {report['mean_abs_pct_error']:.1f}% (max {report['max_abs_pct_error']:.1f}%), Spearman {report['spearman']:.3f}")


def _options(dataset: str, space: str | None, target: str, output: Path, budget: str | None, resolution: int | None,
             threads: int | None, device: str | None, epochs: int, train_epochs: int, seed: int, trials: int, storage: str | None,
             workers: int, max_skips: int | None, latency_weight: float, targets_dir: Path | None, search_steps: int = 40,
             multi_trial: int = 0, trial_epochs: int = 4, finalists: int = 4):
    from toolkit.search.run import RunOptions, parse_budget
    from toolkit.search.search import SearchConfig
    from toolkit.search.train import TrainConfig

    budget_ms = parse_budget(budget)
    for flag, v, lo in (("--epochs", epochs, 1), ("--train-epochs", train_epochs, 1), ("--workers", workers, 1)):
        if v < lo:
            raise UsageError(f"{flag} must be >= {lo}")
    if trials < 0 or (max_skips is not None and max_skips < -1) or not latency_weight >= 0 or search_steps < 0:
        raise UsageError("--trials, --search-steps and --latency-weight must be >= 0; --max-skips >= 0 (-1: no guard)")
    if multi_trial < 0 or trial_epochs < 1 or not 0 <= finalists <= 64:
        raise UsageError("--multi-trial must be >= 0, --trial-epochs >= 1 and --finalists from 0 to 64")
    if multi_trial and trials:
        raise UsageError("--trials tunes the supernet search's hyperparameters; --multi-trial searches without a supernet: "
                         "give one of them")
    if not 0 <= seed < 2 ** 31:
        raise UsageError(f"--seed {seed} is out of range; give an integer from 0 to 2**31-1")
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o {output} is a file; give a directory for the run")
    _check_space(space)
    dev = _device(target, threads, device, targets_dir)
    from toolkit.datasets import load_dataset
    from toolkit.search import spaces

    data = load_dataset(dataset)  # a bad dataset (or one the space cannot take) fails before anything is measured
    sp = spaces.get(space or spaces.for_data(data))
    sp.check_data(data, resolution if resolution is not None else sp.default_size(data))
    if max_skips is None:
        max_skips = sp.DEFAULT_MAX_SKIPS
    warmup = min(2, max(epochs - 1, 0))
    return RunOptions(dataset=dataset, space=sp.SPACE_NAME, target=dev.target, output=output, budget_ms=budget_ms, resolution=resolution,
                      threads=dev.threads, rpc=dev.rpc, seed=seed, trials=trials, storage=storage, workers=workers,
                      multi_trial=multi_trial, trial_epochs=trial_epochs, finalists=finalists,
                      search=SearchConfig(epochs=epochs, warmup=warmup, latency_weight=latency_weight, min_steps=search_steps,
                                          max_skips=None if max_skips < 0 else max_skips),
                      train=TrainConfig(epochs=train_epochs))


Dataset = Annotated[str, typer.Option("--dataset", help="digits, digits-hard, text-recall, or a .npz file with x ([N,C,H,W] images or [N,L] token ids) and y [N].")]
Budget = Annotated[Optional[str], typer.Option("--latency-budget", help="Latency budget on the target, e.g. 2ms or 500us.")]
Resolution = Annotated[Optional[int], typer.Option("--resolution", help="Input resolution of mobile-cnn (default: the dataset's).")]
Epochs = Annotated[int, typer.Option("--epochs", help="Supernet search epochs.")]
TrainEpochs = Annotated[int, typer.Option("--train-epochs", help="Retraining epochs (early stopping on validation loss).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the search, the splits' shuffling and the training.")]
Trials = Annotated[int, typer.Option("--trials", help="Optuna trials tuning the search's hyperparameters (0: defaults).")]
Storage = Annotated[Optional[str], typer.Option("--storage", help="Optuna storage: a database URL or a .journal file (default: in the run directory).")]
Workers = Annotated[int, typer.Option("--workers", help="Parallel trial processes (journal or server storage).")]
MaxSkips = Annotated[Optional[int], typer.Option("--max-skips", help="Cap on skip ops in the derived net (-1: no collapse guard; default: the space's, mobile-cnn 3 of 6, tiny-transformer 2 of 3).")]
Lambda = Annotated[float, typer.Option("--latency-weight", help="lambda of the latency term in the architecture loss.")]
SearchSteps = Annotated[int, typer.Option("--search-steps", help="Weight and architecture steps per search epoch at least (a small dataset is cycled).")]
MultiTrial = Annotated[int, typer.Option("--multi-trial", help="Search by Optuna NSGA-II over N architectures, each trained briefly (a Pareto front of accuracy and predicted latency, the budget a constraint) instead of the supernet.")]
TrialEpochs = Annotated[int, typer.Option("--trial-epochs", help="Training epochs of each --multi-trial architecture and of each finalist.")]
Finalists = Annotated[int, typer.Option("--finalists", help="Supernet search: the derivation, the reference recipe and samples of the supernet, each fitted to the budget, trained --trial-epochs each; the most accurate on validation is kept (0 or 1: the derivation as is).")]


def search_cmd(output: Annotated[Path, typer.Option("-o", "--output", help="Run directory.")], dataset: Dataset = "digits",
               space: SearchSpaceOpt = None, target: TargetOpt = "host", latency_budget: Budget = None,
               resolution: Resolution = None, epochs: Epochs = 10, train_epochs: TrainEpochs = 40, seed: Seed = 0,
               trials: Trials = 0, storage: Storage = None, workers: Workers = 1, max_skips: MaxSkips = None,
               latency_weight: Lambda = 2.0, search_steps: SearchSteps = 40, multi_trial: MultiTrial = 0,
               trial_epochs: TrialEpochs = 4, finalists: Finalists = 4, threads: ThreadsOpt = None,
               device: DeviceOpt = None, targets_dir: TargetsDir = None) -> None:
    """Search an architecture on the target's latency model, retrain it distilled, export, compile and verify it."""
    from toolkit.search import spaces
    from toolkit.search.run import search_and_train

    opts = _options(dataset, space, target, output, latency_budget, resolution, threads, device, epochs, train_epochs, seed, trials,
                    storage, workers, max_skips, latency_weight, targets_dir, search_steps, multi_trial, trial_epochs,
                    finalists)
    with _progress() as say:
        s = search_and_train(opts, say)
    print(f"searched {spaces.of(s['architecture']).describe(s['architecture'])}: val accuracy {100 * s['validation_accuracy']:.1f}%, test "
          f"{100 * s['test_accuracy']:.1f}%, predicted {s['predicted_ms']:.3f} ms, measured {s['measured_ms']:.3f} ms"
          + (f" (budget {s['latency_budget_ms']:g} ms)" if s["latency_budget_ms"] else ""))
    print(f"  artifact: {s['artifact']}  (verified: {s['verification'].get('passed')})")


def pipeline_cmd(dataset: Dataset = "digits", space: SearchSpaceOpt = None, target: TargetOpt = "host", latency_budget: Budget = None,
                 output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Run directory (default runs/DATASET-TARGET).")] = None,
                 resolution: Resolution = None, epochs: Epochs = 10, train_epochs: TrainEpochs = 40, seed: Seed = 0,
                 trials: Trials = 0, storage: Storage = None, workers: Workers = 1, max_skips: MaxSkips = None,
                 latency_weight: Lambda = 2.0, search_steps: SearchSteps = 40, multi_trial: MultiTrial = 0,
                 trial_epochs: TrialEpochs = 4, finalists: Finalists = 4,
                 random: Annotated[int, typer.Option("--random", help="Random architectures to train and measure for the report.")] = 4,
                 latency_samples: Annotated[int, typer.Option("--latency-samples", help="Networks to measure when the target has no latency model yet.")] = 60,
                 threads: ThreadsOpt = None, device: DeviceOpt = None, targets_dir: TargetsDir = None) -> None:
    """The main job: latency model -> search -> train -> export -> compile -> verify -> bench vs onnxruntime -> report."""
    from toolkit.search import spaces
    from toolkit.search.pipeline import run_pipeline

    if random < 0 or not 8 <= latency_samples <= 100_000:
        raise UsageError("--random must be >= 0 and --latency-samples from 8 to 100000")
    output = output or Path("runs") / f"{Path(dataset).stem}-{target}"
    opts = _options(dataset, space, target, output, latency_budget, resolution, threads, device, epochs, train_epochs, seed, trials,
                    storage, workers, max_skips, latency_weight, targets_dir, search_steps, multi_trial, trial_epochs,
                    finalists)
    with _progress() as say:
        s = run_pipeline(opts, random_count=random, latency_samples=latency_samples, progress=say)
    se, b = s["searched"], s["bench"]
    print(f"searched {spaces.of(se['architecture']).describe(se['architecture'])}")
    print(f"  test accuracy {100 * se['test_accuracy']:.1f}%  latency {b['toolkit_p50_ms']:.3f} ms vs onnxruntime "
          f"{b['onnxruntime_p50_ms']:.3f} ms (ratio {b['ratio']:.2f}x, {b['threads']} thread(s))"
          + (f"  budget {se['latency_budget_ms']:g} ms" if se["latency_budget_ms"] else ""))
    print(f"  artifact {se['artifact']}")
    print(f"  report   {opts.output / 'report.md'}  ({s['seconds']:.0f} s)")


def register(app: typer.Typer) -> None:
    app.add_typer(latency_app, name="latency-model")
    app.command("search")(search_cmd)
    app.command("pipeline")(pipeline_cmd)
