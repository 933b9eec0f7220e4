"""onnxruntime vs TVM with the default schedules vs TVM tuned (vs TVM unscheduled), in one run, interleaved.

For each model (MobileNetV2-224, ResNet18-224, BERT-mini seq 128, a member of the search space, the
small ConvNet) this builds host artifacts with the toolkit, each verified against onnxruntime:

- default:     the rule-based default schedules (no tuning);
- tuned:       after `autoglm tune MODEL --budget B --db DB` (one database shared by all models, so a
               workload tuned for one model is reused by the next), compiled with `--tuning-db DB`;
- unscheduled: AUTOGLM_NO_SCHEDULES=1, TVM's default pipeline (10-40x slower: first rounds only).

Then, per thread count, in a fresh process (TVM_NUM_THREADS sizes TVM's pool, intra_op_num_threads
onnxruntime's), it times onnxruntime and every artifact in the same process, interleaved (one call of
each per round, order rotating), and prints a Markdown table of medians, ratios and the fraction of
the CPU's peak FLOP/s that each reaches.

    python benchmarks/bench_schedules.py [--models ...] [--variants default tuned unscheduled]
                                         [--tune-budget 10m] [--tune-threads N] [--threads 1 2] [--repeat 30]
                                         [--work DIR]

`--tune-threads 1 --threads 1` tunes at the thread count it then measures (records measured at the host's
2 threads made BERT-mini's 1-thread run 7% slower than its defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["mobilenetv2", "resnet18", "bert-mini", "searchnet", "convnet"]
LABELS = {"mobilenetv2": "MobileNetV2-224", "resnet18": "ResNet18-224", "bert-mini": "BERT-mini (seq 128)",
          "searchnet": "search-space net (mbconv-v1 sample, 224)", "convnet": "ConvNet (32x32)"}
VARIANTS = ["default", "tuned", "unscheduled"]
SLOW_ROUNDS = 5  # unscheduled builds are 10-40x slower: time them in the first rounds only
MAC_KERNELS = ("conv2d", "conv1d", "conv2d_transpose", "matmul", "dense", "batch_matmul")
# Peak FLOP/s assumes two FMA pipes per core, each one vector wide (AVX2: 2 x 8 lanes x 2 = 32 FLOP/cycle).
FMA_PIPES = 2


def _compile(onnx_path: Path, out: Path, rebuild: bool, *, no_schedules: bool = False, tuning_db: Path | None = None):
    import targets
    from compile import compile_model
    from compile.schedule import NO_SCHEDULES_ENV

    if not rebuild and (out / "manifest.json").exists():
        return
    if out.exists():
        shutil.rmtree(out)
    old = os.environ.pop(NO_SCHEDULES_ENV, None)
    if no_schedules:
        os.environ[NO_SCHEDULES_ENV] = "1"
    try:
        t0 = time.perf_counter()
        compile_model(onnx_path, targets.load_target("host"), out, tuning_db=tuning_db)
        print(f"  built {out.name} in {time.perf_counter() - t0:.1f} s (verified against onnxruntime)", file=sys.stderr)
    finally:
        os.environ.pop(NO_SCHEDULES_ENV, None)
        if old is not None:
            os.environ[NO_SCHEDULES_ENV] = old


def _tune(onnx_path: Path, model: str, work: Path, db: Path, budget: str, threads: int | None = None) -> dict:
    """`autoglm tune` through the real CLI, once per model, budget and thread count (its summary is kept in
    the work dir)."""
    from compile.fileio import write_atomic

    tag = f"{budget}-{threads}t" if threads else budget
    done = work / f"{model}.tune-{tag}.json"
    if done.exists():
        return json.loads(done.read_text())
    print(f"  tuning {model} for {budget}" + (f" at {threads} thread(s)" if threads else "") + f" into {db}", file=sys.stderr)
    proc = subprocess.run([str(Path(sys.executable).parent / "autoglm"), "tune", str(onnx_path), "--target", "host",
                           "--budget", budget, "--db", str(db), "--json", *(["--threads", str(threads)] if threads else [])],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        raise SystemExit(f"autoglm tune failed for {model}")
    summary = json.loads(proc.stdout)
    write_atomic(done, json.dumps(summary, indent=2) + "\n")  # a killed run must not leave a cache that breaks the next
    return summary


def _build(model: str, work: Path, variants: list[str], budget: str, db: Path, rebuild: bool,
           tune_threads: int | None = None) -> dict:
    from toolkit.export import export_zoo_model

    onnx_path = work / f"{model}.onnx"
    if rebuild or not onnx_path.exists():
        export_zoo_model(model, onnx_path)
    info: dict = {}
    for variant in variants:
        if variant == "tuned":
            info["tune"] = _tune(onnx_path, model, work, db, budget, tune_threads)
            out = work / (f"{model}-tuned-{budget}-{tune_threads}t" if tune_threads else f"{model}-tuned-{budget}")
            _compile(onnx_path, out, rebuild, tuning_db=db)
        else:
            out = work / f"{model}-{variant}"
            _compile(onnx_path, out, rebuild, no_schedules=variant == "unscheduled")
        manifest = json.loads((out / "manifest.json").read_text())
        info.setdefault("artifacts", {})[variant] = str(out)
        # multiply-add work only (conv/matmul kernels): elementwise FLOP estimates (a polynomial erf) would inflate it
        info["flops"] = sum((k["flops"] or 0) * k.get("launches", 1) for k in manifest["fusion"]["kernel_table"]
                            if k["pattern"].split("+")[0] in MAC_KERNELS)
        if variant == "tuned":
            info["tuned_kernels"] = manifest["tuning"]["records_applied"]
            info["kernels"] = len(manifest["tuning"]["kernels"])
    return info


def _worker(model: str, work: Path, artifacts: dict[str, str], threads: int, repeat: int) -> dict:
    """Runs in a fresh process with TVM_NUM_THREADS set: interleaved timings of all runtimes."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from compile import load_model, random_inputs

    onnx_path = work / f"{model}.onnx"
    spec = load_model(onnx_path)
    inputs = random_inputs(spec.inputs, 0)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Both runtimes live in one process on possibly few cores: onnxruntime's spinning workers would steal
    # the cores TVM's pool waits for (and TVM's would do the same to onnxruntime). Neither spins here.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    dev = tvm.cpu()
    runners = {"onnxruntime": lambda: sess.run(None, inputs)}
    for variant, path in artifacts.items():
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(Path(path) / "model.so")), dev)
        args = [tvm.runtime.tensor(inputs[s.name], dev) for s in spec.inputs]
        main = vm["main"]
        runners[variant] = (lambda m=main, a=args: m(*a))
    for run in runners.values():  # warm-up
        run()
        run()
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(repeat):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if name == "unscheduled" and r >= SLOW_ROUNDS:
                continue
            t0 = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()} | {"n": {k: len(v) for k, v in times.items()}}


def _harness(model: str, artifacts: dict[str, str], threads: list[int], repeat: int) -> dict:
    """Each artifact in the C++ runner against onnxruntime, each runtime in its own process, interleaved blocks.

    In one process TVM's pool workers spin after every parallel region while onnxruntime runs, taking
    the second core from it, so the in-process 2-thread onnxruntime numbers are too slow; these are not.
    """
    from toolkit.bench import BenchConfig, run_bench, to_document

    out: dict = {}
    for variant, path in artifacts.items():
        if variant == "unscheduled":
            continue
        cfg = BenchConfig(artifact=Path(path), baseline="auto", threads=threads, warmup=5, repeat=repeat,
                          command=f"benchmarks/bench_schedules.py --harness ({model} {variant})")
        doc = to_document(run_bench(cfg, progress=lambda m: None))
        for r in doc["results"]:
            key = "onnxruntime" if r["role"] == "baseline" else variant
            out.setdefault(str(r["threads"]), {}).setdefault(key, []).append(r["latency_ms"]["p50"])
        if not all(c["passed"] for c in doc["correctness"]["comparisons"]):
            raise SystemExit(f"{model} {variant}: outputs differ from onnxruntime in the harness")
    # onnxruntime ran once per variant: its median over those runs
    return {t: {k: float(np.median(v)) for k, v in row.items()} for t, row in out.items()}


def _cpu_mhz() -> float | None:
    """The clock /proc/cpuinfo reports (nominal in a VM; the core may boost above it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1])
    except OSError:
        pass
    return None


def _peak_gflops_per_core(mhz: float | None) -> float | None:
    import targets
    from compile.schedules import cpu_config

    lanes = cpu_config(targets.load_target("host")).lanes(32)
    return None if mhz is None else mhz / 1e3 * lanes * 2 * FMA_PIPES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS[:4], choices=MODELS)
    ap.add_argument("--variants", nargs="+", default=["default", "tuned"], choices=VARIANTS)
    ap.add_argument("--tune-budget", default="10m", help="wall-clock tuning budget per model (autoglm tune --budget)")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "autoglm-bench-schedules")
    ap.add_argument("--db", type=Path, help="tuning database (default WORK/tuning-db, WORK/tuning-db-<N>t with --tune-threads N)")
    ap.add_argument("--tune-threads", type=int, help="measure the tuning candidates at this many threads (autoglm tune "
                                                     "--threads; default the host's): the thread count benchmarked")
    ap.add_argument("--rebuild", action="store_true", help="re-export and rebuild even if artifacts exist")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument("--harness", action="store_true",
                    help="also time each artifact in the C++ runner against onnxruntime in separate processes")
    ap.add_argument("--_worker", nargs=4, metavar=("MODEL", "ARTIFACTS", "THREADS", "REPEAT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        model, artifacts, threads, repeat = args._worker
        print(json.dumps(_worker(model, args.work, json.loads(artifacts), int(threads), int(repeat))))
        return 0

    import tvm

    args.work.mkdir(parents=True, exist_ok=True)
    db = args.db or args.work / (f"tuning-db-{args.tune_threads}t" if args.tune_threads else "tuning-db")
    started = time.time()
    rows, builds = [], {}
    for model in args.models:
        print(f"{model}: building", file=sys.stderr)
        builds[model] = info = _build(model, args.work, args.variants, args.tune_budget, db, args.rebuild, args.tune_threads)
        for threads in args.threads:
            env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--_worker", model,
                                   json.dumps(info["artifacts"]), str(threads), str(args.repeat)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"benchmark worker failed for {model} ({threads} threads)")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((model, threads, res))
            print(f"  {threads} thread(s): {json.dumps(res)}", file=sys.stderr)
        if args.harness:
            info["harness"] = _harness(model, info["artifacts"], args.threads, args.repeat)
            print(f"  harness: {json.dumps(info['harness'])}", file=sys.stderr)

    from toolkit.bench.sysinfo import describe_cpu

    cpu, mhz = describe_cpu(), _cpu_mhz()
    peak = _peak_gflops_per_core(mhz)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "mhz": mhz, "peak_gflops_per_core": peak, "builds": builds,
                                         "rows": [{"model": m, "threads": t, **r} for m, t, r in rows]}, indent=2) + "\n")
    print(f"Host: {cpu}, {os.cpu_count()} cores at {mhz or '?'} MHz; TVM {tvm.__version__}; medians of "
          f"interleaved runs ({args.repeat} rounds" + (f"; unscheduled: first {SLOW_ROUNDS}" if "unscheduled" in args.variants else "")
          + f"); tuning budget {args.tune_budget} per model; {(time.time() - started) / 60:.0f} min in all.\n")
    head = ["model", "threads", "conv/matmul GFLOP", "onnxruntime ms", *[f"TVM {v} ms" for v in args.variants],
            *[f"{v} / onnxruntime" for v in args.variants if v != "unscheduled"],
            *[f"% peak {v}" for v in ("onnxruntime", *args.variants) if v != "unscheduled"]]
    if "tuned" in args.variants:
        head.append("kernels tuned")
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for model, threads, res in rows:
        info = builds[model]
        gflop = info["flops"] / 1e9
        cells = [LABELS[model], str(threads), f"{gflop:.2f}", f"{res['onnxruntime']:.2f}"]
        cells += [f"{res[v]:.2f}" for v in args.variants]
        cells += [f"{res[v] / res['onnxruntime']:.2f}x" for v in args.variants if v != "unscheduled"]
        for v in ("onnxruntime", *args.variants):
            if v == "unscheduled":
                continue
            cells.append("-" if peak is None else f"{100 * gflop / (res[v] / 1e3) / (peak * threads):.0f}%")
        if "tuned" in args.variants:
            cells.append(f"{info['tuned_kernels']}/{info['kernels']}")
        print("| " + " | ".join(cells) + " |")
    if args.harness:
        variants = [v for v in args.variants if v != "unscheduled"]
        print("\nSeparate processes (the benchmark harness: C++ runner vs onnxruntime, interleaved blocks, p50):\n")
        print("| model | threads | onnxruntime ms | " + " | ".join(f"{v} ms" for v in variants) + " | "
              + " | ".join(f"{v} / onnxruntime" for v in variants) + " |")
        print("|---|" + "---:|" * (2 + 2 * len(variants)))
        for model, info in builds.items():
            for threads, res in info["harness"].items():
                print(f"| {LABELS[model]} | {threads} | {res['onnxruntime']:.2f} | "
                      + " | ".join(f"{res[v]:.2f}" for v in variants) + " | "
                      + " | ".join(f"{res[v] / res['onnxruntime']:.2f}x" for v in variants) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
