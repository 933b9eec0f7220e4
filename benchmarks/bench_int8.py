"""INT8 vs FP32, this toolkit and onnxruntime: the BENCHMARKS.md INT8 section for this host.

For each zoo model: export to ONNX, compile for `host` twice (fp32, and `--int8` calibrated on seeded
random inputs: the speed does not depend on the calibration data), then two runs of the benchmark
harness (`toolkit.bench.run_bench`, the code behind `autoglm bench ARTIFACT --baseline auto`):

- the fp32 artifact against onnxruntime on the fp32 model;
- the int8 artifact against onnxruntime on the same quantized (QDQ) model, which onnxruntime runs
  with its own integer kernels (QLinearConv / MatMulInteger fusion), and onnxruntime on the float
  model it was quantized from (`--model-file`): three runtimes in the same turns.

Each run interleaves its runtimes in blocks, each in its own process, at every thread count; outputs
are checked on the same inputs (the int8 artifact against the QDQ graph executed as written, within
the two output steps `compile` verifies with). onnxruntime's int8/fp32 ratio and the onnxruntime
columns come from the int8 run (interleaved); this toolkit's int8/fp32 ratio comes from its two runs
(back to back, not interleaved with each other).

    python benchmarks/bench_int8.py [--models mobilenetv2 resnet18 bert-mini] [--threads 1,2]
                                    [--repeat 20] [--warmup 3] [--block 5] [--work build/bench-int8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_zoo import LABELS, git_revision, log, ms  # noqa: E402

MODELS = ["mobilenetv2", "resnet18", "bert-mini"]
CALIBRATION_SAMPLES = 16


def build(model: str, work: Path) -> tuple[Path, Path]:
    """(fp32 artifact, int8 artifact), reusing both when they exist (delete --work after changing compile/)."""
    import targets
    from compile import Int8Options, compile_model
    from toolkit.export import export_zoo_model

    source = work / f"{model}.onnx"
    if not source.exists():
        log(f"exporting {model}")
        export_zoo_model(model, source)
    host = targets.load_target("host")
    fp32, int8 = work / f"{model}-fp32", work / f"{model}-int8"
    if not (fp32 / "manifest.json").exists():
        log(f"compiling {model} fp32 for host (verified)")
        compile_model(source, host, fp32, verify=True)
    if not (int8 / "manifest.json").exists():
        log(f"compiling {model} int8 for host (verified against the literal QDQ graph)")
        compile_model(source, host, int8, verify=True, int8=Int8Options(random_samples=CALIBRATION_SAMPLES))
    return fp32, int8


def bench(model: str, art: Path, args, float_model: Path | None = None) -> dict:
    """One harness run of `art`; with `float_model` (int8 artifacts) onnxruntime also times that fp32 model."""
    from toolkit.bench import BenchConfig, parse_threads, run_bench, to_document

    cfg = BenchConfig(artifact=art, baseline="auto", model_file=float_model, threads=parse_threads(args.threads),
                      warmup=args.warmup, repeat=args.repeat, block=args.block,
                      command=f"benchmarks/bench_int8.py ({model})")
    return to_document(run_bench(cfg, progress=lambda m: log(f"{art.name}: {m}")))


def _p50(doc: dict, role: str, threads: int) -> float:
    return next(r["latency_ms"]["p50"] for r in doc["results"] if r["role"] == role and r["threads"] == threads)


def table(rows: dict[str, tuple[dict, dict]]) -> tuple[list[str], list[tuple[str, int, float, float]]]:
    from toolkit.bench.table import fmt_bytes

    lines = ["| model | threads | onnxruntime fp32 ms | autoglm fp32 ms | onnxruntime int8 ms | autoglm int8 ms | "
             "autoglm int8 / autoglm fp32 | autoglm int8 / onnxruntime int8 | onnxruntime int8 / fp32 | "
             "artifact fp32 | artifact int8 | int8 outputs vs the QDQ graph (max abs err) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    goals = []
    for model, (d32, d8) in rows.items():
        for tk in (r for r in d8["results"] if r["role"] == "toolkit"):
            t = tk["threads"]
            # onnxruntime int8 and fp32 ran in the int8 artifact's run, interleaved with it block by block
            o32, o8, a8 = _p50(d8, "baseline-fp32", t), _p50(d8, "baseline", t), tk["latency_ms"]["p50"]
            a32 = _p50(d32, "toolkit", t)
            a8_o8 = tk["ratio_vs_baseline"]["p50"]  # the harness's own ratio: p50 / p50, same run
            cmp = next(c for c in d8["correctness"]["comparisons"] if c["threads"] == t)
            goals.append((model, t, a8 / a32, a8_o8))
            lines.append(f"| {LABELS.get(model, model)} | {t} | {ms(o32)} | {ms(a32)} | {ms(o8)} | {ms(a8)} | "
                         f"{a8 / a32:.2f}x | {a8_o8:.2f}x | {o8 / o32:.2f}x | {fmt_bytes(d32['artifact']['artifact_bytes'])} | "
                         f"{fmt_bytes(d8['artifact']['artifact_bytes'])} | "
                         f"{'match' if cmp['passed'] else 'DIFFER'} ({cmp['max_abs_error']:.2g}) |")
    return lines, goals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-int8")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from toolkit.bench.sysinfo import describe_cpu, host_info

    started = time.monotonic()
    rows = {}
    for model in args.models:
        fp32, int8 = build(model, args.work)
        rows[model] = (bench(model, fp32, args), bench(model, int8, args, float_model=args.work / f"{model}.onnx"))
    lines, goals = table(rows)
    h = host_info()
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    missed_own = [g for g in goals if g[2] > 0.6]
    missed_ort = [g for g in goals if g[3] > 1.0]
    text = "\n".join([
        "## INT8",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {describe_cpu()}, {h['cores']} cores, {h['os']}",
        f"- Software: onnxruntime {h['onnxruntime_version']}, Python {h['python']}; source {git_revision()}",
        f"- Command: `{cmd}` ({time.monotonic() - started:.0f} s)",
        f"- Method: per model, the fp32 artifact vs onnxruntime fp32, then the `--int8` artifact (calibrated on "
        f"{CALIBRATION_SAMPLES} random inputs) vs onnxruntime on the same QDQ model and on the fp32 model (the "
        f"onnxruntime columns: this second run); each run interleaved in blocks of {args.block}, {args.warmup} "
        f"warm-up and {args.repeat} timed runs, each runtime in its own process; p50 latency. Goal: int8 <= 0.6x this "
        f"toolkit's fp32 and <= 1.0x onnxruntime int8.",
        "",
        *lines,
        "",
        f"- Goal int8 <= 0.6x own fp32: met in {len(goals) - len(missed_own)} of {len(goals)} rows"
        + ("; missed: " + ", ".join(f"{LABELS.get(m, m)} @{t}t {r:.2f}x" for m, t, r, _ in missed_own) if missed_own else "."),
        f"- Goal int8 <= 1.0x onnxruntime int8: met in {len(goals) - len(missed_ort)} of {len(goals)} rows"
        + ("; missed: " + ", ".join(f"{LABELS.get(m, m)} @{t}t {r:.2f}x" for m, t, _, r in missed_ort) if missed_ort else "."),
        "",
    ])
    print(text)


if __name__ == "__main__":
    main()
