"""How repeatable a latency measurement is on this machine: the BENCHMARKS.md "Measurement repeatability" rows.

Held-out random networks of a space are measured in two passes, a few minutes apart, by two methods
(each pass: every network by the first, then every network by the second):
- `paired`: what the latency model uses (`latency.measure_all`: compiled, chunks interleaved with the
  reference network, fastest chunk scaled to the reference's best); each pass has its own empty store
  (its own reference, calibration and best), as two `latency-model build` runs on two machines would;
- `harness p50`: `autoglm bench`'s harness (the C++ runner, blocks of runner processes, the median of
  400 runs), what spec-1 latency models used.
Reports, per method, the fraction of networks whose two measurements are within ±5% and ±10% of each
other and the range of their ratios.

    python benchmarks/bench_latency_repeat.py [--space mobile-cnn] [--nets 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import targets  # noqa: E402
from toolkit.bench.config import BenchConfig  # noqa: E402
from toolkit.bench.harness import run_bench  # noqa: E402
from toolkit.bench.sysinfo import describe_cpu  # noqa: E402
from toolkit.search import latency  # noqa: E402


def harness_p50(art: Path, threads: int) -> float:
    cfg = BenchConfig(artifact=art, threads=[threads], warmup=40, repeat=400, block=100, check_outputs=False)
    run = run_bench(cfg)
    return float(np.median(next(r for r in run.results if r.role == "toolkit").samples_ms))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", default="mobile-cnn")
    ap.add_argument("--nets", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    host = targets.load_target("host", None)
    device = latency.Device(host, a.threads)
    archs = latency.holdout_architectures(a.nets, a.space)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autoglm-repeat-") as tmp:
        work = Path(tmp)
        arts = [latency.compile_network(arch, host, work / f"net{i}") for i, arch in enumerate(archs)]
        paired = np.zeros((2, len(archs)))
        harness = np.zeros((2, len(archs)))
        for p in range(2):
            store = latency.MeasurementStore(work / f"store{p}", a.space)
            recs = latency.measure_all(archs, device, store, lambda m: print(m, file=sys.stderr, flush=True), f"pass {p + 1}")
            paired[p] = [r["latency_ms"] for r in recs]
            for i, art in enumerate(arts):
                harness[p, i] = harness_p50(art, a.threads)
            for r, h in zip(recs, harness[p]):
                print(f"pass {p + 1}: {r['latency_ms']:.4f} ms (fastest chunk {r['min_ms']:.4f}, reference "
                      f"{r['ref_min_ms']:.4f} of best {store.ref_best_ms:.4f}, {r['chunks']} chunks); harness p50 {h:.4f}",
                      file=sys.stderr)
    print(f"\n{time.strftime('%Y-%m-%d')}, {describe_cpu()}, {a.space}, {len(archs)} held-out networks, "
          f"{a.threads} thread(s), {time.monotonic() - t0:.0f} s\n")
    print("| method | within ±5% of itself | within ±10% | ratio range (pass 1 / pass 2) |")
    print("|---|---|---|---|")
    for name, m in (("paired (reference-scaled fastest chunk)", paired), ("harness p50", harness)):
        q = m[0] / m[1]
        print(f"| {name} | {np.mean(np.abs(q - 1) <= 0.05):.0%} | {np.mean(np.abs(q - 1) <= 0.10):.0%} | "
              f"{q.min():.2f}-{q.max():.2f} |")


if __name__ == "__main__":
    main()
