"""The BENCHMARKS.md table for this host: onnxruntime vs the toolkit's native C++ runner, per zoo model.

For each model it exports the zoo model to ONNX (or takes the TFLite test fixture), compiles it for
`host` (verified), and runs the benchmark harness (`toolkit.bench.run_bench`: the same code as
`autoglm bench ARTIFACT --baseline auto --threads 1,2`): each runtime in its own process,
interleaved in blocks, outputs checked against the baseline on the same inputs. It prints a
Markdown section (date, machine, command, table, a sentence on the ratios) and, with --write,
writes it to BENCHMARKS.md; with --json-dir every run's autoglm-bench/1 document is kept.

    python benchmarks/bench_zoo.py [--models convnet mobilenetv2 resnet18 bert-mini small-cnn-tflite]
                                   [--threads 1,2] [--repeat 20] [--warmup 3] [--block 5]
                                   [--work build/bench-zoo] [--write BENCHMARKS.md] [--json-dir DIR] [--db PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["convnet", "mobilenetv2", "resnet18", "bert-mini", "searchnet", "small-cnn-tflite"]
LABELS = {"convnet": "ConvNet 32x32", "mobilenetv2": "MobileNetV2-224", "resnet18": "ResNet18-224",
          "bert-mini": "BERT-mini (4 layers, 256, seq 128)",
          "searchnet": "search-space net (mbconv-v1 sample)", "small-cnn-tflite": "small CNN (TFLite fixture)"}
TFLITE_FIXTURE = ROOT / "tests" / "fixtures" / "small_cnn.tflite"


def log(msg: str) -> None:
    print(f"[bench_zoo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(model: str, work: Path) -> tuple[Path, Path]:
    """(artifact, source model file), reusing both when they exist (delete --work after changing compile/)."""
    import targets
    from compile import compile_model
    from toolkit.export import export_zoo_model

    if model == "small-cnn-tflite":
        source = TFLITE_FIXTURE
    else:
        source = work / f"{model}.onnx"
        if not source.exists():
            log(f"exporting {model}")
            export_zoo_model(model, source)
    art = work / f"{model}-host"
    if not (art / "manifest.json").exists():
        log(f"compiling {model} for host (verified)")
        compile_model(source, targets.load_target("host"), art, verify=True)
    return art, source


def bench(model: str, art: Path, source: Path, args) -> dict:
    from toolkit.bench import BenchConfig, parse_threads, run_bench, to_document
    from toolkit.bench import db as results_db

    cfg = BenchConfig(artifact=art, baseline="auto", model_file=source if source.suffix == ".tflite" else None,
                      threads=parse_threads(args.threads), warmup=args.warmup, repeat=args.repeat, block=args.block,
                      command=f"benchmarks/bench_zoo.py ({model})")
    doc = to_document(run_bench(cfg, progress=lambda m: log(f"{model}: {m}")))
    if args.db:
        results_db.record_run(Path(args.db), doc)
    if args.json_dir:
        Path(args.json_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.json_dir) / f"{model}.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def size(n) -> str:
    from toolkit.bench.table import fmt_bytes

    return fmt_bytes(n)


def ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def table(docs: dict[str, dict]) -> tuple[list[str], list[float]]:
    lines = ["| model | threads | baseline p50 ms | autoglm (C++ runner) p50 ms | ratio autoglm / baseline | "
             "baseline load ms | autoglm load ms | baseline peak RSS | autoglm peak RSS | artifact size | planned activations | outputs (max abs err) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for model, doc in docs.items():
        a = doc["artifact"]
        for tk in (r for r in doc["results"] if r["role"] == "toolkit"):
            base = next(r for r in doc["results"] if r["role"] == "baseline" and r["threads"] == tk["threads"])
            ratio = tk["ratio_vs_baseline"]["p50"]
            ratios.append(ratio)
            cmp = next(c for c in doc["correctness"]["comparisons"] if c["threads"] == tk["threads"])
            lines.append(
                f"| {LABELS.get(model, model)} | {tk['threads']} | {ms(base['latency_ms']['p50'])} | "
                f"{ms(tk['latency_ms']['p50'])} | {ratio:.2f}x | {ms(base['load_ms'])} | {ms(tk['load_ms'])} | "
                f"{size(base['peak_rss_bytes'])} | {size(tk['peak_rss_bytes'])} | {size(a['artifact_bytes'])} | "
                f"{size(a['planned_activation_bytes'])} | {'match' if cmp['passed'] else 'DIFFER'} ({cmp['max_abs_error']:.1g}) |")
    return lines, ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-zoo")
    p.add_argument("--write", type=Path, help="write the Markdown to this file (BENCHMARKS.md)")
    p.add_argument("--json-dir", type=Path)
    p.add_argument("--db", help="also record the runs in this results database")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from toolkit.bench.sysinfo import describe_cpu, host_info

    started = time.monotonic()
    docs = {}
    for model in args.models:
        art, source = build(model, args.work)
        docs[model] = bench(model, art, source, args)
    lines, _ratios = table(docs)
    h = host_info()
    tvm_note = next(iter(docs.values()))["artifact"]["tvm_version"]
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    text = "\n".join([
        "# Benchmarks",
        "",
        f"Produced by `benchmarks/bench_zoo.py` with the benchmark harness (`toolkit.bench`, the code behind "
        f"`autoglm bench ARTIFACT --baseline auto --threads {args.threads}`).",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {describe_cpu()}, {h['cores']} cores, {h['os']} (shared with other jobs while measured)",
        f"- Software: TVM {tvm_note}, onnxruntime {h['onnxruntime_version']}, LiteRT {h['litert_version']}, Python {h['python']}",
        f"- Source: {git_revision()} (the numbers depend on the schedules in compile/ at that revision)",
        f"- Command: `{cmd}` ({time.monotonic() - started:.0f} s)",
        f"- Method: per model and thread count, onnxruntime (CPU provider, same intra-op threads; LiteRT for the "
        f"TFLite model) and the compiled artifact in the toolkit's C++ runner, each in its own process, "
        f"{args.warmup} warm-up runs, {args.repeat} timed runs each in interleaved blocks of {args.block}; outputs "
        f"compared on the same random inputs. p50 = median latency of one inference; ratio > 1 means the toolkit is "
        f"slower. Peak RSS is each process's VmHWM (onnxruntime's includes the Python interpreter).",
        "",
        *lines,
        "",
        *summary(docs),
        "",
    ])
    print(text)
    if args.write:
        args.write.write_text(text)
        log(f"wrote {args.write}")


def summary(docs: dict[str, dict]) -> list[str]:
    """Ratio ranges per thread count, and a warning when more threads made onnxruntime slower (a loaded machine)."""
    by_threads: dict[int, list[float]] = {}
    base_p50: dict[str, dict[int, float]] = {}
    for model, doc in docs.items():
        for r in doc["results"]:
            if r["role"] == "toolkit":
                by_threads.setdefault(r["threads"], []).append(r["ratio_vs_baseline"]["p50"])
            else:
                base_p50.setdefault(model, {})[r["threads"]] = r["latency_ms"]["p50"]
    out = [f"- {t} thread{'s' if t > 1 else ''}: the toolkit's median is {min(v):.2f}x to {max(v):.2f}x the baseline's "
           f"(geometric mean {geomean(v):.2f}x over {len(v)} models)." for t, v in sorted(by_threads.items())]
    # below ~1 ms a second thread can honestly cost more than it gains; above, it is a sign of a busy machine
    slower = [m for m, p in base_p50.items() if len(p) > 1 and p[min(p)] > 1.0 and p[max(p)] > 1.2 * p[min(p)]]
    if slower:
        out.append(f"- Warning: the baseline was more than 20% slower with {max(by_threads)} threads than with "
                   f"{min(by_threads)} for {len(slower)} of {len(base_p50)} models ({', '.join(slower)}): other "
                   f"processes were using the cores, so the multi-thread rows are not a fair comparison.")
    return out


def git_revision() -> str:
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown revision"
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--untracked-files=no", "compile").splitlines()]
    return f"git {rev}" + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else "")


def geomean(xs: list[float]) -> float:
    import math

    return math.exp(sum(math.log(x) for x in xs) / len(xs))


if __name__ == "__main__":
    main()
