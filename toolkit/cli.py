"""The `autoglm` command line. User errors become one line on stderr and exit code 2 (usage) or 1 (failure)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

import targets as targets_mod
from compile import AutoglmError, UsageError
from compile.fileio import atomic_output

app = typer.Typer(
    help="Open-AutoGLM Edge: compile models for edge targets with Apache TVM, verify, run and inspect them.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
# Wide when piped, so tables and summaries stay one line per row in logs.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

TargetsDir = Annotated[Optional[Path], typer.Option("--targets-dir", help=f"Extra directory of target TOML files (also ${targets_mod.ENV_VAR}).")]


@app.command("targets")
def targets_cmd(targets_dir: TargetsDir = None, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the known targets and whether this machine can build for and run them."""
    import json

    from compile.target_check import check_llvm_cpus

    found = targets_mod.list_targets(targets_dir)
    for t in found:
        check_llvm_cpus(t)  # a CPU name LLVM does not know is as wrong as a bad field: same one line
    if as_json:
        rows = [{"name": t.name, "arch": t.arch, "device": t.device, "tvm_target": t.tvm, "toolchain": t.cross_compiler or "g++",
                 "toolchain_found": t.toolchain_found(), "emulator": t.emulator, "runs_here": t.runnable_here(),
                 "threads": t.threads, "rpc_key": t.rpc_key, "source": t.source} for t in found]
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="autoglm targets")
    for col in ("name", "arch", "TVM target", "toolchain", "emulator", "on this machine"):
        table.add_column(col, overflow="fold")
    for t in found:
        tvm = t.tvm.get("host", t.tvm) if t.device == "cuda" else t.tvm
        tvm_s = (f"cuda {t.tvm.get('arch', '')} + " if t.device == "cuda" else "") + f"llvm {tvm.get('mcpu', tvm.get('mtriple', ''))}"
        tool = t.cross_compiler or "g++ (native)"
        here = ("build: yes" if t.toolchain_found() else f"build: no (apt-get install {t.cross_compiler_package or 'g++'})")
        here += f", run: {t.runnable_here()}"
        table.add_row(t.name, t.arch + ("/cuda" if t.device == "cuda" else ""), tvm_s, tool, t.emulator or "-", here)
    console.print(table)


@app.command("compile")
def compile_cmd(
    model: Annotated[Path, typer.Argument(help="An .onnx or .tflite file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Artifact directory to write.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target name (see `autoglm targets`).")] = "host",
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="Fix an input's shape: NAME=D0,D1,... (repeatable).")] = None,
    verify: Annotated[Optional[bool], typer.Option("--verify/--no-verify", help="Check against the reference runtime (default: on when the target runs here).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random verification inputs.")] = 0,
    atol: Annotated[float, typer.Option(help="Verification absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Verification relative tolerance.")] = 1e-3,
    explain: Annotated[bool, typer.Option("--explain", help="Print the fusion report: kernels, patterns, FLOPs, bytes, schedules, times.")] = False,
    tuning_db: Annotated[Optional[Path], typer.Option("--tuning-db", help="Apply MetaSchedule records from this database (see `autoglm tune`).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Quantize to INT8 (onnxruntime calibration) and build integer kernels.")] = False,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="--int8: a directory of .npy/.npz calibration samples.")] = None,
    calibration_random: Annotated[Optional[int], typer.Option("--calibration-random", help="--int8: calibrate on N random inputs (a quick look: accuracy unknown).")] = None,
    calibration_method: Annotated[str, typer.Option("--calibration-method", help="--int8: minmax, percentile or entropy.")] = "minmax",
    validation: Annotated[Optional[Path], typer.Option("--validation", help="--int8: samples for the accuracy report (default: the calibration data).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="--int8: labels.npy (one class per sample) for top-1 accuracy.")] = None,
    min_agreement: Annotated[float, typer.Option("--min-agreement", help="--int8: fail when int8 and fp32 agree on fewer than this fraction of samples.")] = 0.98,
    targets_dir: TargetsDir = None,
) -> None:
    """Compile a model for a target into an artifact directory (library + manifest), atomically."""
    from compile import Int8Options, compile_model, parse_shape_overrides

    check_seed(seed)
    check_tolerances(atol, rtol)
    check_unique("--input-shape", input_shape)
    if tuning_db is not None and tuning_db.exists() and not tuning_db.is_dir():
        raise UsageError(f"--tuning-db {tuning_db} is a file; give the tuning database directory that "
                         f"`autoglm tune --db DIR` wrote")
    int8_options = None
    if int8:
        int8_options = Int8Options(calibration, calibration_random, calibration_method, validation, labels, min_agreement)
        int8_options.check()
    else:
        given = [flag for flag, v in (("--calibration", calibration), ("--calibration-random", calibration_random),
                                       ("--validation", validation), ("--labels", labels)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} is an --int8 option: add --int8 to quantize the model")
    tgt = targets_mod.load_target(target, targets_dir)
    shapes = parse_shape_overrides(input_shape)
    result = compile_model(model, tgt, output, input_shapes=shapes, verify=verify, seed=seed, atol=atol, rtol=rtol,
                           tuning_db=tuning_db, progress=_progress_line, int8=int8_options)
    _print_summary(result.artifact, result.manifest)
    if result.manifest["precision"]["mode"] == "int8":
        from toolkit.cli_int8 import print_int8_summary

        print_int8_summary(console, result.manifest["precision"])
    if tuning_db is not None:
        tun = result.manifest["tuning"]
        console.print(f"  tuning:  {tun['records_applied']} tuned kernels from {tun['database']}")
    if explain:
        _print_explain(result.manifest)


def _progress_line(line: str) -> None:
    """Stage lines go to stderr, so stdout stays the artifact summary."""
    print(line, file=sys.stderr, flush=True)


def _print_explain(m: dict[str, Any]) -> None:
    f = m["fusion"]
    console.print(f"\n[bold]fusion report[/bold]: {f['graph_ops']} graph operators -> {f['kernels']} fused kernels ({f['launches']} launches)")
    if f.get("patterns"):
        console.print("  fused patterns: " + ", ".join(f"{p} x{n}" for p, n in f["patterns"].items()))
    table = Table(show_edge=False)
    for col in ("kernel", "pattern", "dtypes", "MFLOP", "KiB", "launches", "schedule", "time (us)"):
        table.add_column(col, justify="right" if col in ("MFLOP", "KiB", "launches", "time (us)") else "left")
    rows = f.get("kernel_table", [])
    for r in rows:
        table.add_row(r["name"], r["pattern"], r.get("dtypes") or "-", "-" if r["flops"] is None else f"{r['flops'] / 1e6:.2f}",
                      f"{r['bytes'] / 1024:.1f}", str(r["launches"]), r["schedule"],
                      "-" if r["time_us"] is None else f"{r['time_us']:.1f}")
    console.print(table)
    float_ops = m["precision"].get("float_ops") or {}
    if float_ops:
        console.print(f"  left in float ({len(float_ops)}): " + "; ".join(f"{k}: {v}" for k, v in float_ops.items()))
    timed = [r for r in rows if r["time_us"] is not None]
    if timed:
        console.print(f"  times: measured on this machine, 1 run = {sum(r['time_us'] for r in timed):.1f} us of kernel time (mean of 3 runs, VM instrumentation)")
    else:
        console.print("  times: not measured (the target does not run on this machine)")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_summary(path: Path, m: dict[str, Any]) -> None:
    t, f, mem, v = m["target"], m["fusion"], m["memory"], m["verification"]
    try:
        lib_size = os.lstat(path / m["library"]).st_size  # lstat: never follow a link out of the artifact
    except OSError:
        lib_size = 0
    console.print(f"[bold]{path}[/bold]: {m['model']['name']} ({m['model']['format']}) for {t['name']} ({t['arch']}/{t['device']}), {m['precision']['mode']}")
    console.print("  inputs:  " + ", ".join(f"{s['name']} {s['shape']} {s['dtype']}" for s in m["inputs"]))
    console.print("  outputs: " + ", ".join(f"{s['name']} {s['shape']} {s['dtype']}" for s in m["outputs"]))
    console.print(f"  fusion:  {f['graph_ops']} graph operators -> {f['kernels']} kernels, {f['launches']} launches")
    console.print(f"  memory:  {_fmt_bytes(mem['planned_activation_bytes'])} planned activations, {_fmt_bytes(mem['weight_bytes'])} weights, library {_fmt_bytes(lib_size)}")
    if v.get("passed") is None:
        console.print(f"  verify:  skipped ({v.get('skipped')})")
    else:
        console.print(f"  verify:  {'passed' if v['passed'] else 'FAILED'} against {v['reference']} {v['reference_version']}"
                      f"{' (' + v['how'] + ')' if v.get('how') else ''}: "
                      f"max abs error {v['max_abs_error']:.3g}, max rel error {v['max_rel_error']:.3g}")
    for note in m.get("notes", []):
        console.print(f"  note:    {note}")


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Seeds are what numpy accepts: integers from 0 to 2**64 - 1."""
    if not 0 <= seed < 2**64:
        raise UsageError(f"{flag} {seed} is out of range; give an integer from 0 to 2**64-1")


def check_tolerances(atol: float, rtol: float) -> None:
    """Tolerances must be finite and >= 0 (a negative or NaN one would fail every comparison after a full compile)."""
    import math

    for flag, value in (("--atol", atol), ("--rtol", rtol)):
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"{flag} {value} is not a tolerance; give a finite number >= 0, e.g. {flag} 1e-4")


def check_unique(flag: str, items: list[str] | None) -> None:
    """Refuse NAME=... given twice for the same NAME (the last one would silently win)."""
    seen: set[str] = set()
    for item in items or []:
        name = item.partition("=")[0]
        if name in seen:
            raise UsageError(f"{flag} is given twice for {name!r}; give each name once")
        seen.add(name)


def _load_input(spec: str) -> tuple[str, np.ndarray]:
    from toolkit.cli_inputs import parse_input_flag, read_input

    name, path, key = parse_input_flag(spec)
    return name, read_input(path, key)


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_output(path) as f:
        np.savez(f, **arrays)


def _describe_outputs(outputs: dict[str, np.ndarray]) -> None:
    for name, arr in outputs.items():
        line = f"  {name}: shape {list(arr.shape)} {arr.dtype}"
        if arr.size and arr.dtype.kind in "fiu":
            line += f", min {arr.min():.4g}, max {arr.max():.4g}, mean {arr.mean():.4g}"
        console.print(line)
        if arr.ndim == 2 and arr.shape[0] == 1 and arr.dtype.kind == "f" and arr.shape[1] > 1:
            top = np.argsort(arr[0])[::-1][:5]
            console.print("    top-5: " + ", ".join(f"{i} ({arr[0, i]:.4g})" for i in top))


@app.command("run")
def run_cmd(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory from `autoglm compile`.")],
    input: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="NAME=FILE.npy (repeatable).")] = None,
    random: Annotated[bool, typer.Option("--random", help="Feed deterministic random inputs.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for --random.")] = 0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the outputs to this .npz file.")] = None,
) -> None:
    """Run an artifact on this machine and print a summary of its outputs."""
    from compile import random_inputs
    from compile.artifact import check_output_file
    from toolkit import runtime

    if not input and not random:
        raise UsageError("give --input NAME=FILE.npy for each model input, or --random")
    if input and random:
        raise UsageError("give either --input or --random, not both")
    check_seed(seed)
    check_unique("--input", input)
    if output is not None:
        check_output_file(output, "--output")
    if input:  # read and check the inputs against the manifest before TVM is even imported
        from compile import TensorSpec, read_manifest

        manifest = read_manifest(artifact)
        feeds = dict(_load_input(s) for s in input)
        runtime.validate_inputs([TensorSpec.from_json(t) for t in manifest["inputs"]], feeds,
                                manifest.get("index_bounds"))
    model = runtime.load(artifact)
    if not input:
        feeds = random_inputs(list(model.inputs), seed)
        for name, (lo, hi) in model.manifest.get("index_bounds", {}).items():  # random ids stay inside the table
            feeds[name] = np.clip(feeds[name], lo, hi).astype(feeds[name].dtype)
    outputs = model.run(feeds)
    console.print(f"[bold]{artifact}[/bold] ({model.manifest['model']['name']} on {model.manifest['target']['name']}):")
    _describe_outputs(outputs)
    if output is not None:
        _save_npz_atomic(output, outputs)
        console.print(f"  outputs written to {output}")


@app.command("inspect")
def inspect_cmd(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Also print the fusion report.")] = False,
) -> None:
    """Show an artifact's manifest and whether its files match their checksums (exit 1 when they do not)."""
    import json

    from compile import ArtifactError, check_artifact, read_manifest

    manifest = read_manifest(artifact)  # the manifest's own digest and fields: nothing is shown from a bad one
    failure: ArtifactError | None = None
    try:
        check_artifact(artifact)
        integrity = "ok: every file matches its sha256, as does the manifest, and every path stays inside the artifact"
    except ArtifactError as exc:
        failure = exc
        integrity = f"FAILED: {exc}"
    if as_json:
        print(json.dumps({**manifest, "integrity": integrity}, indent=2))
        if failure is not None:
            raise failure
        return
    _print_summary(artifact, manifest)
    t = manifest["target"]
    console.print(f"  target:  {json.dumps(t['tvm_target'])}")
    console.print(f"  built:   {manifest['created_utc']} with TVM {manifest['tvm_version']}, {manifest['toolchain']['version']}")
    console.print(f"  source:  {manifest['model']['source_file']} sha256 {manifest['model']['sha256'][:16]}...")
    console.print("  kernels: " + ", ".join(manifest["fusion"]["kernel_names"]))
    console.print(f"  tuning:  {manifest['tuning']['records_applied']} records applied")
    if isinstance(manifest.get("lineage"), dict):
        _print_lineage(manifest["lineage"])
    console.print(f"  files:   {integrity}")
    if explain:
        _print_explain(manifest)
    if failure is not None:
        raise failure  # CI can gate on `autoglm inspect`


def _print_lineage(lin: dict[str, Any]) -> None:
    """Which run made this model and how good it was (artifacts of `autoglm search` / `pipeline`)."""
    def pct(v: Any) -> str:
        return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "?"

    def ms(v: Any) -> str:
        return f"{v:.3f} ms" if isinstance(v, (int, float)) else "?"

    ds = lin.get("dataset") if isinstance(lin.get("dataset"), dict) else {}
    lm = lin.get("latency_model") if isinstance(lin.get("latency_model"), dict) else {}
    console.print(f"  lineage: run {lin.get('run', '?')}, seed {lin.get('seed', '?')}")
    console.print(f"           dataset {ds.get('name', '?')} sha256 {str(ds.get('sha256', '?'))[:16]}..., validation accuracy "
                  f"{pct(lin.get('validation_accuracy'))}, test {pct(lin.get('test_accuracy'))}")
    console.print(f"           latency predicted {ms(lin.get('predicted_ms'))}, measured {ms(lin.get('measured_ms'))}, budget "
                  f"{ms(lin.get('latency_budget_ms')) if lin.get('latency_budget_ms') else 'none'}; latency model "
                  f"{lm.get('key', '?')} (spec {lm.get('spec_version', '?')}, {lm.get('fit_count', '?')} networks)")
    hp = lin.get("hyperparameters") if isinstance(lin.get("hyperparameters"), dict) else {}
    if hp.get("tuned"):
        console.print(f"           hyperparameters from study {hp.get('study')} (trial {hp.get('best_trial')} of {hp.get('trials')})")


@app.command("export")
def export_cmd(
    name: Annotated[Optional[str], typer.Argument(help="Built-in model: convnet, transformer, mobilenetv2, resnet18, bert-mini, searchnet.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="ONNX file to write.")] = ...,
    arch: Annotated[Optional[Path], typer.Option("--arch", help="Instead of a built-in model: an architecture JSON of the mbconv-v1 search space.")] = None,
    seed: Annotated[int, typer.Option(help="Weight seed.")] = 0,
) -> None:
    """Export a built-in model, or a member of the search space, to ONNX (checked against onnxruntime)."""
    from compile.artifact import check_output_file

    if (name is None) == (arch is None):
        raise UsageError("give either a built-in model name or --arch FILE (an architecture JSON), not both")
    check_seed(seed)
    check_output_file(output, "-o")
    from toolkit.export import export_architecture, export_zoo_model  # torch: only once the flags are known good

    path = export_zoo_model(name, output, seed) if arch is None else export_architecture(arch, output, seed)
    console.print(f"wrote {path} ({_fmt_bytes(path.stat().st_size)}), checked against onnxruntime")


@app.command("demo")
def demo_cmd(
    model: Annotated[str, typer.Option(help="Built-in model to use.")] = "convnet",
    workdir: Annotated[Path, typer.Option("-o", "--output", help="Where to put the ONNX file and the artifact.")] = Path("build/demo"),
) -> None:
    """The main job on this machine: export a built-in model, compile it for host, verify it, run it."""
    import time

    from compile import compile_model, random_inputs
    from toolkit import runtime
    from toolkit.export import export_zoo_model

    onnx_path = export_zoo_model(model, workdir / f"{model}.onnx")
    console.print(f"1. exported {model} to {onnx_path} (checked against onnxruntime)")
    result = compile_model(onnx_path, targets_mod.load_target("host"), workdir / f"{model}-host", verify=True)
    console.print("2. compiled for host and verified:")
    _print_summary(result.artifact, result.manifest)
    m = runtime.load(result.artifact)
    feeds = random_inputs(list(m.inputs), seed=1)
    start = time.perf_counter()
    outputs = m.run(feeds)
    ms = (time.perf_counter() - start) * 1e3
    console.print(f"3. ran it with the Python runtime ({ms:.2f} ms, first call):")
    _describe_outputs(outputs)


def _register_subcommands() -> None:
    from toolkit.cli_runtime import runtime_app

    app.add_typer(runtime_app, name="runtime")
    from toolkit.cli_bench import register as register_bench
    register_bench(app)
    from toolkit.cli_tune import register as register_tune
    register_tune(app)
    from toolkit.cli_int8 import register as register_int8
    register_int8(app)
    from toolkit.cli_search import register as register_search
    register_search(app)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _interrupt_exit() -> None:
    """The one line for Ctrl-C / SIGTERM; says whether an artifact had already been published."""
    import signal

    from compile.artifact import interrupted, published

    signum = interrupted() or signal.SIGINT
    name = signal.Signals(signum).name
    if published:
        print(f"error: interrupted ({name}) after {published[-1]} was written; that artifact is complete", file=sys.stderr)
    else:
        print(f"error: interrupted ({name}); nothing was written", file=sys.stderr)
    sys.exit(128 + signum)


def main() -> None:
    """Console entry point: one line and an exit code for every user-facing error, the parser's included."""
    from typer._click import exceptions as click_exc

    from compile import artifact
    from compile.artifact import install_interrupt_handlers, interrupted

    install_interrupt_handlers()  # SIGINT/SIGTERM: clean up staging, and never publish after one
    artifact.REDIRECT_TEMP_FILES = True  # one compile per process: its temporary files live in its staging folder
    try:
        _register_subcommands()
        # standalone_mode=False: the parser's errors come here (one line, not a box) and Ctrl-C is not swallowed
        rv = app(standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(2)
    except click_exc.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        print(f"error: {_one_line(exc.format_message()).rstrip('.')}{where}", file=sys.stderr)
        sys.exit(2)
    except click_exc.ClickException as exc:
        print(f"error: {_one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(exc.exit_code or 1)
    except (AutoglmError, targets_mod.TargetError) as exc:
        if interrupted() and getattr(exc, "exit_code", 1) != 130:  # 130: the error is the interrupt's own message
            _interrupt_exit()
        if interrupted():
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            sys.exit(128 + interrupted())
        code = 2 if isinstance(exc, (UsageError, targets_mod.TargetError)) else getattr(exc, "exit_code", 1)
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(code)
    except (KeyboardInterrupt, typer.Abort):
        _interrupt_exit()
    except Exception:
        if interrupted():  # a library turned the interrupt into an error of its own (TVM's FFI does)
            _interrupt_exit()
        raise
    if interrupted():  # typer turns KeyboardInterrupt into exit code 130; say why, once
        _interrupt_exit()
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
