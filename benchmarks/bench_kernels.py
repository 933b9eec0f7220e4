"""Kernel-level comparison with onnxruntime: per operator class, time, GFLOP/s and % of peak, both runtimes.

For each zoo model: compile for `host` (verified against onnxruntime), profile the artifact's kernels
in this process (`toolkit.bench.profile`, the code behind `autoglm bench --profile`), and take
onnxruntime's own per-node profile (`SessionOptions.enable_profiling`, the NCHWc-transformed graph it
really runs) of the same model at the same thread count. Kernels and nodes are grouped into classes
that both sides have (1x1 conv, kxk conv, depthwise conv, matmul/gemm, the rest); each class's FLOPs
are counted once, from the ONNX graph (2 x MACs), and both runtimes' times are divided by them.
Both profiles time each kernel/node with instrumentation, so their sums run above end-to-end latency. Peak = nominal MHz x fp32 lanes x 2 (FMA)
x 2 FMA pipes per core; cores boost above the nominal clock, so the % are upper bounds.

    python benchmarks/bench_kernels.py [--models mobilenetv2 resnet18 searchnet] [--threads 1]
                                       [--repeat 20] [--work build/bench-kernels]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CLASSES = ["conv 1x1", "conv kxk", "depthwise", "matmul/gemm", "other"]


def log(msg: str) -> None:
    print(f"[bench_kernels {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _conv_class(weight_shape: list[int], groups: int) -> str:
    if groups > 1:
        return "depthwise"
    return "conv 1x1" if weight_shape[-2:] == [1, 1] else "conv kxk"


def onnx_class_flops(model_path: Path) -> dict[str, float]:
    """2 x MACs per class, from the ONNX graph (shapes inferred): the one FLOP count both runtimes are divided by."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(model_path)))
    g = model.graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*g.value_info, *g.output, *g.input]}
    shapes.update({t.name: list(numpy_helper.to_array(t).shape) for t in g.initializer})
    out: dict[str, float] = collections.defaultdict(float)
    for node in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        y = shapes.get(node.output[0])
        if not y or not all(y):
            continue
        if node.op_type == "Conv":
            w = shapes[node.input[1]]
            out[_conv_class(w, int(attrs.get("group", 1)))] += 2.0 * float(np.prod(y)) * w[1] * w[2] * w[3]
        elif node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            k = a[0] if node.op_type == "Gemm" and attrs.get("transA") else a[-1]
            out["matmul/gemm"] += 2.0 * float(np.prod(y)) * k
    return out


def tvm_kernel_classes(model_path: Path) -> dict[str, str]:
    """Kernel name -> class, from the kernels' weight parameters after the real pipeline."""
    import tvm

    import targets
    from compile.build import relax_pipeline
    from compile.frontend import load_model

    target = targets.load_target("host")
    tt = tvm.target.Target(target.tvm)
    with tt:
        lowered = relax_pipeline(target)(load_model(model_path).mod)
    out = {}
    for gv, func in lowered.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        name = gv.name_hint
        shapes = [[int(d) for d in p.shape] for p in func.params]
        if "depthwise" in name:
            out[name] = "depthwise"
        elif "conv2d" in name:
            w = next((s for s in shapes if len(s) in (5, 6) and s != shapes[0]), shapes[1] if len(shapes) > 1 else [])
            # NCHWc weight [OB, ICB, KH, KW, IB, OBS]; NCHW prepacked [F/v, C, KH, KW, v]; plain OIHW
            kh_kw = w[2:4] if len(w) >= 5 else w[-2:]
            out[name] = "conv 1x1" if kh_kw == [1, 1] else "conv kxk"
        elif "matmul" in name or "dense" in name:
            out[name] = "matmul/gemm"
        else:
            out[name] = "other"
    return out


def ort_profile(model_path: Path, x: np.ndarray, input_name: str, threads: int, repeat: int) -> list[dict]:
    """onnxruntime's per-node medians: [{"class", "ms", "flops"}]."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        for _ in range(repeat + 3):
            sess.run(None, {input_name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list] = collections.defaultdict(list)
    info: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        per_node[e["name"]].append(e["dur"] / 1e3)
        info[e["name"]] = e.get("args", {})
    rows = []
    for name, durs in per_node.items():
        args = info[name]
        op = args.get("op_name", "")
        shapes = [list(next(iter(s.values()))) for s in args.get("input_type_shape", []) if s]
        out_shapes = [list(next(iter(s.values()))) for s in args.get("output_type_shape", []) if s]
        flops = 0.0
        cls = "other"
        if op in ("Conv", "NchwcConv", "FusedConv") and len(shapes) >= 2 and out_shapes:
            w = shapes[1]
            out = out_shapes[0]
            cin = shapes[0][1] if len(shapes[0]) >= 2 else 0
            groups = cin // w[1] if w[1] and cin and cin // w[1] > 1 else 1
            # NCHWc outputs are [N, C/b, H, W, b]: the element count is what matters
            flops = 2.0 * float(np.prod(out)) * w[1] * w[2] * w[3]
            cls = _conv_class(w, groups)
        elif op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm") and len(shapes) >= 2 and out_shapes:
            flops = 2.0 * float(np.prod(out_shapes[0])) * shapes[0][-1]
            cls = "matmul/gemm"
        rows.append({"class": cls, "ms": float(np.median(durs[3:] or durs)), "flops": flops, "op": op})
    return rows


def main(argv: list[str] | None = None) -> int:
    from bench_schedules import _cpu_mhz, _peak_gflops_per_core

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mobilenetv2", "resnet18", "searchnet"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-kernels")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import targets
    from compile import compile_model
    from toolkit.bench.profile import profile_library
    from toolkit.export import export_zoo_model

    peak = _peak_gflops_per_core(_cpu_mhz())
    peak_t = peak * args.threads if peak else None
    lines = [f"| model | class | onnxruntime ms | autoglm ms | ratio | onnxruntime GFLOP/s | autoglm GFLOP/s | "
             f"% peak onnxruntime | % peak autoglm |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model in args.models:
        work = args.work / model
        work.mkdir(parents=True, exist_ok=True)
        onnx_path = export_zoo_model(model, work / f"{model}.onnx")
        log(f"{model}: compiling")
        result = compile_model(onnx_path, targets.load_target("host"), work / "artifact")
        spec = result.manifest["inputs"][0]
        x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(np.float32)
        classes = tvm_kernel_classes(onnx_path)
        log(f"{model}: profiling both runtimes")
        prof = profile_library(str(result.artifact / "model.so"), [x], iterations=args.repeat)
        ours: dict[str, list[float]] = {c: [0.0, 0.0] for c in CLASSES}
        for k in prof["kernels"]:
            ours[classes.get(k["name"], "other")][0] += k["ms_per_run"]
        theirs: dict[str, list[float]] = {c: [0.0, 0.0] for c in CLASSES}
        for r in ort_profile(onnx_path, x, spec["name"], args.threads, args.repeat):
            theirs[r["class"]][0] += r["ms"]
            theirs[r["class"]][1] += r["flops"]
        class_flops = onnx_class_flops(onnx_path)
        for cls in [*CLASSES, "total"]:
            if cls == "total":
                o = [sum(v[0] for v in ours.values()), sum(class_flops.values())]
                t = [sum(v[0] for v in theirs.values()), sum(class_flops.values())]
            else:
                o, t = [ours[cls][0], class_flops.get(cls, 0.0)], [theirs[cls][0], class_flops.get(cls, 0.0)]
            if not o[0] and not t[0]:
                continue

            def gf(v):
                return v[1] / (v[0] / 1e3) / 1e9 if v[0] and v[1] else None

            cells = [model, cls, f"{t[0]:.2f}", f"{o[0]:.2f}", f"{o[0] / t[0]:.2f}x" if t[0] else "-"]
            for v in (t, o):
                g = gf(v)
                cells.append("-" if g is None else f"{g:.1f}")
            for v in (t, o):
                g = gf(v)
                cells.append("-" if g is None or not peak_t else f"{100 * g / peak_t:.0f}%")
            lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
