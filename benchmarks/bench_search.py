"""The latency model's accuracy and a search's Pareto table on this host: the BENCHMARKS.md "Search" section.

Runs the real CLI, in order (each step's progress on stderr):
1. `autoglm latency-model build --samples N` (cached measurements are reused; delete the cache to re-measure)
2. `autoglm latency-model eval --holdout M` (held-out random architectures, never fitted on)
3. `autoglm pipeline --dataset D --latency-budget B ...` (search, retrain, compile, verify, bench vs
   onnxruntime, random and hand-designed nets trained and measured the same way)
then prints the Markdown for BENCHMARKS.md from the files they wrote.

    python benchmarks/bench_search.py [--space mobile-cnn] [--samples 200] [--holdout 100] [--threads 1]
        [--dataset digits-hard] [--budget 0.15ms] [--resolution 12] [--random 4] [--epochs 8] [--train-epochs 12]
        [--work runs/bench-search] [--multi-trial 30 --trial-epochs 4]
    python benchmarks/bench_search.py --space tiny-transformer --dataset text-recall --resolution 0 --budget 0.1ms
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_zoo import git_revision  # noqa: E402


def autoglm(*args: str) -> None:
    exe = Path(sys.executable).with_name("autoglm")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "toolkit.cli", *args]
    print("$ autoglm " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="mobile-cnn")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--holdout", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="digits-hard")
    ap.add_argument("--budget", default="0.15ms")
    ap.add_argument("--resolution", type=int, default=12, help="mobile-cnn input resolution (0: the dataset's)")
    ap.add_argument("--random", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-epochs", type=int, default=12)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-search")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--multi-trial", type=int, default=0, help="search by NSGA-II over N architectures instead of the supernet")
    ap.add_argument("--trial-epochs", type=int, default=4)
    a = ap.parse_args()
    t0 = time.monotonic()
    th = ("--threads", str(a.threads))
    sp = ("--space", a.space)
    autoglm("latency-model", "build", *sp, "--samples", str(a.samples), *th)
    autoglm("latency-model", "eval", *sp, "--holdout", str(a.holdout), *th)
    if not a.skip_pipeline:
        res = ("--resolution", str(a.resolution)) if a.resolution else ()
        autoglm("pipeline", *sp, "--dataset", a.dataset, "--latency-budget", a.budget, *res,
                "--random", str(a.random), "--epochs", str(a.epochs), "--train-epochs", str(a.train_epochs), "-o", str(a.work), *th,
                *(("--multi-trial", str(a.multi_trial), "--trial-epochs", str(a.trial_epochs)) if a.multi_trial else ()))
    import targets
    from toolkit.bench.sysinfo import describe_cpu
    from toolkit.search import latency

    dev = latency.Device(targets.load_target("host"), a.threads)
    doc = json.loads((latency.model_dir(dev, a.space)[0] / "model.json").read_text())
    h, f = doc["holdout_accuracy"], doc["fit_accuracy"]
    print(f"\n### Latency model ({time.strftime('%Y-%m-%d')}, {describe_cpu()}, {a.threads} thread(s), "
          f"rev {git_revision()})\n")
    print(f"Fitted on {doc['fit_count']} random `{a.space}` networks measured through compile + bench; held out: "
          f"{h['architectures']} others ({h['measured_ms_range'][0]:.3f}-{h['measured_ms_range'][1]:.3f} ms).\n")
    print("| set | networks | within ±10% | within ±5% | mean abs error | max abs error | Spearman |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in (("fit", f), ("held out", h)):
        print(f"| {name} | {r['architectures']} | {100 * r['within_10pct']:.1f}% | {100 * r['within_5pct']:.1f}% | "
              f"{r['mean_abs_pct_error']:.1f}% | {r['max_abs_pct_error']:.1f}% | {r['spearman']:.3f} |")
    if not a.skip_pipeline:
        report = (a.work / "report.md").read_text()
        print("\n### Search\n")
        print(report.split("## The searched network", 1)[1].split("## The latency model")[0].replace("![pareto](pareto.png)", ""))
    print(f"\n(bench_search.py took {time.monotonic() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
