"""`autoglm bench` and `autoglm history`: benchmark an artifact against a baseline; list past runs."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from compile.fileio import write_atomic

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def bench_cmd(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory from `autoglm compile`.")],
    device: Annotated[str, typer.Option("--device", "-d", help="local (C++ runner), qemu (aarch64 runner under qemu-user) or rpc://HOST:PORT/KEY (TVM RPC tracker on loopback).")] = "local",
    python: Annotated[bool, typer.Option("--python", help="With --device local: time the Python runtime instead of the C++ runner.")] = False,
    baseline: Annotated[str, typer.Option("--baseline", "-b", help="onnxruntime (ONNX models), litert (TFLite models), auto, or none.")] = "none",
    model_file: Annotated[Optional[Path], typer.Option("--model-file", help="The original model file for the baseline (default: the artifact's prepared.onnx). For an artifact of compile --int8: the float model it was quantized from, timed too (onnxruntime fp32).")] = None,
    threads: Annotated[Optional[str], typer.Option("--threads", "-t", help="Thread counts, e.g. 1,2 (default: the target's).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", "-r", help="Timed iterations per runtime and thread count.")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", "-w", help="Untimed iterations before timing.")] = 5,
    block: Annotated[int, typer.Option("--block", help="Timed iterations per interleaved block (0: repeat/10).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs every runtime gets.")] = 0,
    atol: Annotated[float, typer.Option(help="Output check: absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Output check: relative tolerance.")] = 1e-3,
    profile: Annotated[bool, typer.Option("--profile", help="Add a per-kernel time profile (vm.set_instrument).")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the run as JSON (schema autoglm-bench/1; '-' for stdout).")] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Write the results as CSV.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write a report with plots: FILE.md or FILE.html.")] = None,
    db: Annotated[Optional[Path], typer.Option("--db", help="Results database (default $AUTOGLM_RESULTS_DB or ~/.cache/autoglm/results.sqlite).")] = None,
    no_db: Annotated[bool, typer.Option("--no-db", help="Do not record this run.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds one block (or load) may take before the run fails.")] = 600.0,
    allow_remote_tracker: Annotated[bool, typer.Option("--allow-remote-tracker", help="Accept an rpc:// tracker (and servers) off loopback (TVM RPC has no authentication: prefer an SSH tunnel).")] = False,
) -> None:
    """Benchmark an artifact: load, first inference, latency, throughput, peak memory; outputs checked."""
    from compile import read_manifest
    from compile.artifact import check_output_file

    from toolkit.bench import BenchConfig, BenchError, parse_device, parse_threads, run_bench, to_csv, to_document
    from toolkit.bench import db as results_db
    from toolkit.bench.harness import _now
    from toolkit.bench.sysinfo import host_info

    if report is not None and report.suffix.lower() not in (".md", ".html", ".htm"):
        raise typer_usage(f"--report {report}: give a .md or .html file")
    # Every output is checked before anything is measured: a bad path fails now, not after the run.
    for flag, path in (("--json", json_out), ("--csv", csv_out), ("--report", report)):
        if path is not None and path != Path("-"):
            check_output_file(path, flag)
    cfg = BenchConfig(
        artifact=artifact, device=parse_device(device, allow_remote_tracker), python_runtime=python,
        baseline=None if baseline == "none" else baseline, model_file=model_file, threads=parse_threads(threads),
        warmup=warmup, repeat=repeat, block=block, seed=seed, atol=atol, rtol=rtol, profile=profile, timeout=timeout,
        command=shlex.join(["autoglm", *sys.argv[1:]]),
    )
    cfg.validate()
    manifest = read_manifest(artifact)
    if not no_db:
        results_db.check_usable(db)  # a bad --db fails now, not after the run (and nothing is written to it)
    started = _now()
    say = (lambda msg: err_console.print(f"bench: {msg}")) if json_out != Path("-") else (lambda msg: None)
    try:
        if cfg.device.kind == "rpc":
            _check_usage_before_network(cfg, manifest)
            _check_tracker_reachable(cfg.device.host, cfg.device.port, cfg.timeout)
        run = run_bench(cfg, progress=say)
    except BenchError as exc:
        if not no_db:
            import uuid

            results_db.record_failure(db, run_id=uuid.uuid4().hex, started_utc=started, finished_utc=_now(),
                                      manifest=manifest, artifact=artifact, device=str(cfg.device), error=str(exc),
                                      command=cfg.command, host=host_info())
        raise
    doc = to_document(run)
    if not no_db:  # recorded first: a file that cannot be written below does not lose the run
        results_db.record_run(db, doc)
    try:
        if json_out == Path("-"):
            print(json.dumps(doc, indent=2))
        else:
            from toolkit.bench.table import print_run

            print_run(console, doc)
            if json_out is not None:
                write_atomic(json_out, json.dumps(doc, indent=2) + "\n")
                console.print(f"json: {json_out}")
        if csv_out is not None:
            write_atomic(csv_out, to_csv(doc))
            if json_out != Path("-"):
                console.print(f"csv: {csv_out}")
        if report is not None:
            from toolkit.bench.report import write_report

            written = write_report(doc, report)
            if json_out != Path("-"):
                console.print(f"report: {', '.join(map(str, written))}")
    except OSError as exc:
        raise BenchError(f"the run is recorded, but {exc.filename or 'an output'} could not be written: "
                         f"{exc.strerror or exc}") from None
    if not no_db and json_out != Path("-"):
        console.print(f"recorded run {doc['run_id'][:12]} in {db or results_db.default_path()}")
    if doc["status"] != "completed":
        raise BenchError(f"outputs differ between runtimes (max abs error {doc['correctness']['max_abs_error']:.3g}, "
                         f"atol {atol:g}, rtol {rtol:g}): the run is recorded as failed")


def _check_usage_before_network(cfg, manifest) -> None:
    """The usage errors run_bench would raise, raised before the tracker is contacted (so they stay exit 2)."""
    from toolkit.bench import BenchUsageError
    from toolkit.bench.harness import _check_device, _choose_baseline
    from toolkit.bench.sources import missing_source_message, resolve_source

    manifest = _check_device(cfg, manifest)
    baseline = _choose_baseline(cfg, manifest["model"]["format"])
    if baseline and resolve_source(cfg.artifact, manifest, cfg.model_file) is None:
        raise BenchUsageError(missing_source_message(cfg.artifact, manifest, baseline))


def _check_tracker_reachable(host: str, port: int, timeout: float) -> None:
    """Fail in seconds, in one line, when nothing listens at the tracker's port (TVM itself retries for a minute)."""
    import socket

    from toolkit.bench import BenchError

    try:
        with socket.create_connection((host, port), timeout=min(5.0, timeout)):
            pass
    except OSError as exc:
        raise BenchError(f"cannot reach the RPC tracker at {host}:{port} ({exc.strerror or exc}); start it with "
                         f"`python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port {port}`") from None


def typer_usage(message: str):
    from toolkit.bench import BenchUsageError

    return BenchUsageError(message)


def history_cmd(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Only runs of this model name.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Only runs for this target name.")] = None,
    db: Annotated[Optional[Path], typer.Option("--db", help="Results database (default $AUTOGLM_RESULTS_DB or ~/.cache/autoglm/results.sqlite).")] = None,
    threshold: Annotated[str, typer.Option("--threshold", help="Flag a median worse than the previous comparable run by more than this.")] = "10%",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    fail_on_regression: Annotated[bool, typer.Option("--fail-on-regression", help="Exit 1 when any run is flagged.")] = False,
) -> None:
    """List past bench runs; flag a median worse than the previous comparable run (same model, target, device, runtime, threads)."""
    from rich.table import Table

    from toolkit.bench import parse_percent
    from toolkit.bench import db as results_db
    from toolkit.bench.history import history

    limit = parse_percent(threshold)
    path = db or results_db.default_path()
    if db is not None and not Path(db).exists():
        raise typer_usage(f"results database {db} does not exist; `autoglm bench ... --db {db}` creates it")
    # history only reads: the database is opened read-only, and anything that is not one is left untouched
    rows = history(path, model=model, target=target, threshold=limit)
    flagged = [r for r in rows if r.regression]
    if as_json:
        print(json.dumps({"schema": "autoglm-history/1", "db": str(path), "threshold": limit,
                          "rows": [r.to_json() for r in rows], "regressions": len(flagged)}, indent=2))
    else:
        table = Table(title=f"autoglm history ({path}; regression: median > previous comparable run + {limit:.0%})")
        for col in ("run", "started (UTC)", "status", "model", "target", "device", "runtime", "threads", "p50 ms",
                    "previous", "change", "flag"):
            table.add_column(col, justify="right" if col in ("threads", "p50 ms", "previous", "change") else "left")
        for r in rows:
            table.add_row(r.run_id[:8], r.started_utc.replace("+00:00", ""), r.status, r.model, r.target, r.device,
                          r.runtime or "-", "-" if r.threads is None else str(r.threads),
                          "-" if r.p50_ms is None else f"{r.p50_ms:.3f}",
                          "-" if r.previous_p50_ms is None else f"{r.previous_p50_ms:.3f}",
                          "-" if r.change is None else f"{100 * r.change:+.1f}%",
                          "[red]REGRESSION[/red]" if r.regression else (r.error or "")[:60])
        console.print(table)
        if not rows:
            console.print("no runs recorded yet: `autoglm bench ARTIFACT` records one")
        elif flagged:
            console.print(f"[red]{len(flagged)} regression(s)[/red] beyond {limit:.0%}")
    if flagged and fail_on_regression:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `bench` and `history` to the `autoglm` app."""
    app.command("bench")(bench_cmd)
    app.command("history")(history_cmd)
