"""`autoglm tune`: MetaSchedule tuning of a model's kernels into a per-target tuning database."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import targets as targets_mod
from compile import UsageError
from compile.tuning_db import TuningError

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.3g} us" if v < 1 else f"{v:.3f} ms"


class RichProgress:
    """Progress bar on stderr: trials (or seconds) done of the budget, best latencies so far."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task_id = None

    def phase(self, text: str) -> None:
        if not self.quiet:
            err_console.print(f"[dim]{text}...[/dim]")

    def start(self, total: float, unit: str) -> None:
        if self.quiet:
            return
        counter = MofNCompleteColumn() if unit == "trials" else TextColumn("{task.completed:.0f}/{task.total:.0f} s")
        self.bar = Progress(TextColumn("tuning"), BarColumn(), counter, TextColumn("{task.fields[unit]}"),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err_console, transient=False)
        self.bar.start()
        self.task_id = self.bar.add_task("tune", total=total, unit=unit if unit == "trials" else "", info="")

    def update(self, done: float, *, task: str, trials: int, best_ms: float | None, model_ms: float | None) -> None:
        if self.bar is not None:
            info = f"{trials} trials | {task}: best {_fmt_ms(best_ms)} | model (kernel sum) {_fmt_ms(model_ms)}"
            self.bar.update(self.task_id, completed=done, info=info)

    def task_done(self, report) -> None:
        if not self.quiet:
            line = (f"  {report.name}: {report.trials} trials, best {_fmt_ms(report.best_ms)}"
                    f" (default {report.default_rule or 'unscheduled'}: {_fmt_ms(report.default_ms)})")
            (self.bar.console if self.bar else err_console).print(line)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class TuneInterrupted(TuningError):
    exit_code = 130


_INTERRUPTED = ("interrupted; the records measured so far are kept in the tuning database: run the same command "
                "again to resume")


def register(app: typer.Typer) -> None:
    @app.command("tune")
    def tune_cmd(
        model: Annotated[Path, typer.Argument(help="An .onnx or .tflite file.")],
        target: Annotated[str, typer.Option("--target", "-t", help="Target name (see `autoglm targets`).")] = "host",
        trials: Annotated[Optional[int], typer.Option("--trials", help="Measurements to spend on this model's untuned kernels.")] = None,
        budget: Annotated[Optional[str], typer.Option("--budget", help="Wall-clock budget of the search instead of --trials: 90s, 15m, 1h30m (import and default measurements come before it).")] = None,
        db: Annotated[Optional[Path], typer.Option("--db", help="Tuning database directory (default ~/.cache/autoglm/tuning/<target>, or <target>-<N>t with --threads N).")] = None,
        threads: Annotated[Optional[int], typer.Option("--threads", help="Measure at this many threads: the count the model will run at (default: the target's; a database holds one count).")] = None,
        rpc: Annotated[Optional[str], typer.Option("--rpc", help="Measure on boards: RPC tracker HOST:PORT or HOST:PORT/KEY (key defaults to the target's rpc_key).")] = None,
        input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="Fix an input's shape: NAME=D0,D1,... (repeatable).")] = None,
        batch: Annotated[int, typer.Option("--batch", help="Candidates measured per search round.")] = 16,
        seed: Annotated[int, typer.Option(help="Search seed.")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
        targets_dir: Annotated[Optional[Path], typer.Option("--targets-dir", help="Extra directory of target TOML files.")] = None,
        allow_remote_tracker: Annotated[bool, typer.Option("--allow-remote-tracker", help="Accept an --rpc tracker that is not on loopback (TVM RPC has no authentication: prefer an SSH tunnel).")] = False,
    ) -> None:
        """Tune a model's kernels with MetaSchedule into a per-target database that `compile --tuning-db` applies.

        Kernels whose workload is already in the database (from any model) are reused, not measured
        again; an interrupted run resumes where it stopped.
        """
        from compile import parse_shape_overrides
        from compile.tune import parse_budget, parse_rpc, tune_model
        from toolkit.cli import check_seed, check_unique

        check_seed(seed)
        check_unique("--input-shape", input_shape)
        if batch < 1:
            raise UsageError(f"--batch {batch}: give at least 1 candidate per round")
        if trials is not None and trials < 1:
            raise UsageError(f"--trials {trials}: give at least 1 trial")
        tgt = targets_mod.load_target(target, targets_dir)
        budget_s = parse_budget(budget) if budget is not None else None
        if trials is None and budget_s is None:
            raise UsageError("give a tuning budget: --trials N or --budget 15m")
        spec = parse_rpc(rpc, tgt.rpc_key, allow_remote_tracker) if rpc is not None else None
        shapes = parse_shape_overrides(input_shape)
        if not model.is_file():
            raise UsageError(f"model file {model} does not exist")
        progress = RichProgress(quiet)
        try:
            summary = tune_model(model, tgt, db, trials=trials, budget_s=budget_s, rpc=spec, input_shapes=shapes,
                                 batch=batch, seed=seed, progress=progress, threads=threads)
        except Exception as exc:  # an interrupt inside a TVM callback comes back as some other error
            from compile.artifact import interrupted

            if interrupted() is None:
                raise
            raise TuneInterrupted(_INTERRUPTED) from exc
        except KeyboardInterrupt:
            raise TuneInterrupted(_INTERRUPTED) from None
        finally:
            progress.stop()
        if as_json:
            print(json.dumps(summary.to_json(), indent=2))
            return
        est_default, est_best = summary.estimate_ms("default"), summary.estimate_ms("best")
        console.print(f"[bold]{summary.database}[/bold]: {summary.model} for {summary.target}, measured {summary.measured_on}")
        console.print(f"  tasks:   {len(summary.tasks)} kernels, {summary.tasks_tuned} tuned now, {summary.tasks_reused} reused from the database")
        console.print(f"  trials:  {summary.trials_measured} measured ({summary.budget}), {summary.default_measurements} default schedules measured, "
                      f"{summary.records_in_db} records in the database")
        if est_default is not None and est_best is not None:
            left_out = f"; {len(summary.unmeasured)} not measurable with random inputs, left out: {', '.join(summary.unmeasured)}" if summary.unmeasured else ""
            console.print(f"  kernels: {_fmt_ms(est_default)} with default schedules -> {_fmt_ms(est_best)} with the best records "
                          f"(sum over kernel calls{left_out})")
        for t in summary.tasks:
            console.print(f"    {t.name}: {t.status}, {t.trials} trials, best {_fmt_ms(t.best_ms)}, default {_fmt_ms(t.default_ms)}"
                          f" ({t.default_rule or 'unscheduled'})")
        if summary.repaired_lines:
            console.print(f"  repair:  dropped {summary.repaired_lines} half-written line(s) left by an interrupted run")
        console.print(f"  use it:  autoglm compile {model} --target {summary.target} --tuning-db {summary.database} -o OUT")
