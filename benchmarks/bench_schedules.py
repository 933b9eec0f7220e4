"""Default CPU schedules vs unscheduled TVM vs onnxruntime, on the zoo's edge models.

For each model (MobileNetV2-224, ResNet18-224, BERT-mini seq 128, the small ConvNet) this builds two
host artifacts with the toolkit — with the default schedules, and with AUTOGLM_NO_SCHEDULES=1 —
both verified against onnxruntime, then times onnxruntime and both artifacts in the same process,
interleaved (one call of each per round, order rotating), for each thread count (a fresh process
per count: TVM_NUM_THREADS sizes TVM's pool, intra_op_num_threads onnxruntime's). Prints a
Markdown table of medians and ratios.

    python benchmarks/bench_schedules.py [--models mobilenetv2 resnet18 bert-mini convnet]
                                         [--threads 1 2] [--repeat 30] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ["mobilenetv2", "resnet18", "bert-mini", "convnet"]
LABELS = {"mobilenetv2": "MobileNetV2-224", "resnet18": "ResNet18-224", "bert-mini": "BERT-mini (seq 128)",
          "convnet": "ConvNet (32x32)"}
SLOW_ROUNDS = 5  # unscheduled builds are 10-40x slower: time them in the first rounds only


def _build(model: str, work: Path, rebuild: bool) -> dict[str, Path]:
    import targets
    from compile import compile_model
    from compile.schedule import NO_SCHEDULES_ENV
    from toolkit.export import export_zoo_model

    onnx_path = work / f"{model}.onnx"
    if rebuild or not onnx_path.exists():
        export_zoo_model(model, onnx_path)
    host = targets.load_target("host")
    arts = {"onnx": onnx_path}
    for variant, env in (("scheduled", None), ("unscheduled", "1")):
        out = work / f"{model}-{variant}"
        if rebuild or not (out / "manifest.json").exists():
            if out.exists():
                import shutil

                shutil.rmtree(out)
            old = os.environ.pop(NO_SCHEDULES_ENV, None)
            if env:
                os.environ[NO_SCHEDULES_ENV] = env
            try:
                t0 = time.perf_counter()
                compile_model(onnx_path, host, out)
                print(f"  built {out.name} in {time.perf_counter() - t0:.1f} s (verified against onnxruntime)", file=sys.stderr)
            finally:
                os.environ.pop(NO_SCHEDULES_ENV, None)
                if old is not None:
                    os.environ[NO_SCHEDULES_ENV] = old
        arts[variant] = out
    return arts


def _worker(model: str, work: Path, threads: int, repeat: int) -> dict:
    """Runs in a fresh process with TVM_NUM_THREADS set: interleaved timings of the three runtimes."""
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
    for variant in ("scheduled", "unscheduled"):
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(work / f"{model}-{variant}" / "model.so")), dev)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "autoglm-bench-schedules")
    ap.add_argument("--rebuild", action="store_true", help="re-export and rebuild even if artifacts exist")
    ap.add_argument("--_worker", nargs=3, metavar=("MODEL", "THREADS", "REPEAT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        model, threads, repeat = args._worker
        print(json.dumps(_worker(model, args.work, int(threads), int(repeat))))
        return 0

    import tvm

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models:
        print(f"{model}: building", file=sys.stderr)
        _build(model, args.work, args.rebuild)
        for threads in args.threads:
            env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--_worker", model, str(threads),
                                   str(args.repeat)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"benchmark worker failed for {model} ({threads} threads)")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append((model, threads, res))
            print(f"  {threads} thread(s): {json.dumps(res)}", file=sys.stderr)

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"Host: {cpu}, {os.cpu_count()} cores; TVM {tvm.__version__}; medians of interleaved runs "
          f"({args.repeat} rounds; unscheduled: first {SLOW_ROUNDS}).\n")
    print("| model | threads | onnxruntime ms | TVM scheduled ms | TVM unscheduled ms | scheduled / onnxruntime | "
          "speed-up from schedules |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model, threads, res in rows:
        ort_ms, s_ms, u_ms = res["onnxruntime"], res["scheduled"], res["unscheduled"]
        print(f"| {LABELS[model]} | {threads} | {ort_ms:.2f} | {s_ms:.2f} | {u_ms:.1f} | {s_ms / ort_ms:.2f}x | "
              f"{u_ms / s_ms:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
