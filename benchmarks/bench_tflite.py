"""TFLite models against LiteRT, float and full integer: the BENCHMARKS.md "TFLite" section for this host.

The zoo's MobileNetV2 and ResNet18 are written as NHWC TFLite flatbuffers (`onnx_to_tflite` below: the
ONNX export's Conv / Clip / Relu / Add / MaxPool / ReduceMean / Gemm as CONV_2D (+ PAD where ONNX pads
differ from TFLite's SAME), DEPTHWISE_CONV_2D, ADD, MAX_POOL_2D, MEAN, FULLY_CONNECTED with fused
activations; checked against onnxruntime on the ONNX file), then quantized to full integer by LiteRT's
own post-training quantizer (int8 activations and weights, float input and output, 16 random calibration
inputs). Each TFLite file is compiled for `host` (verified: the float one against LiteRT, the integer one
against its QDQ graph and per operator against LiteRT's kernels) and timed by the benchmark harness
against LiteRT (XNNPACK, its default CPU path) on the same file, interleaved, each in its own process.

    python benchmarks/bench_tflite.py [--models mobilenetv2 resnet18] [--threads 1,2] [--repeat 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_zoo import LABELS, git_revision, log, ms  # noqa: E402

MODELS = ["mobilenetv2", "resnet18"]
CALIBRATION_SAMPLES = 16


def onnx_to_tflite(onnx_path: Path, out: Path) -> Path:
    """The NHWC TFLite flatbuffer of a zoo CNN's ONNX export (the op set above only)."""
    import ai_edge_litert.schema_py_generated as s
    import flatbuffers
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    tensors, buffers, operators, codes, code_list = [], [s.BufferT()], [], {}, []
    shapes: dict[str, list[int]] = {}

    def tensor(shape, data=None, dtype="float32") -> int:
        t = s.TensorT()
        t.shape = [int(d) for d in shape]
        t.type = {"float32": s.TensorType.FLOAT32, "int32": s.TensorType.INT32}[dtype]
        t.name = f"t{len(tensors)}"
        if data is not None:
            b = s.BufferT()
            b.data = list(np.ascontiguousarray(data.astype(dtype)).tobytes())
            buffers.append(b)
            t.buffer = len(buffers) - 1
        else:
            t.buffer = 0
        tensors.append(t)
        return len(tensors) - 1

    def op(name: str, inputs, outputs, opt: str | None = None, **opts) -> None:
        code = getattr(s.BuiltinOperator, name)
        if code not in codes:
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            codes[code] = len(code_list)
            code_list.append(oc)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = codes[code], list(inputs), list(outputs)
        if opt is not None:
            options = getattr(s, f"{opt}T")()
            for k, v in opts.items():
                setattr(options, k, v)
            o.builtinOptionsType, o.builtinOptions = getattr(s.BuiltinOptions, opt), options
        operators.append(o)

    act = s.ActivationFunctionType
    ids: dict[str, int] = {}
    (inp,) = g.input
    n_, c_, h_, w_ = (d.dim_value for d in inp.type.tensor_type.shape.dim)
    ids[inp.name] = tensor([n_, h_, w_, c_])
    shapes[inp.name] = [n_, h_, w_, c_]
    fused: dict[str, int] = {}   # an activation's output name -> the producer it was fused into
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def fusable_act(out_name: str):
        """(activation code, its output name) when `out_name`'s only consumer is a ReLU / ReLU6."""
        users = consumers.get(out_name, [])
        if len(users) != 1:
            return act.NONE, out_name
        u = users[0]
        if u.op_type == "Relu":
            return act.RELU, u.output[0]
        if u.op_type == "Clip" and [float(consts[x]) for x in u.input[1:3]] == [0.0, 6.0]:
            return act.RELU6, u.output[0]
        return act.NONE, out_name

    for n in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Constant" or n.output[0] in fused:
            continue
        if n.op_type == "Conv":
            x = ids[n.input[0]]
            _, hh, ww, cc = shapes[n.input[0]]
            w = consts[n.input[1]]
            b = consts[n.input[2]] if len(n.input) > 2 else np.zeros(w.shape[0], np.float32)
            k, st, pads, group = attrs["kernel_shape"][0], attrs["strides"][0], attrs.get("pads", [0] * 4), attrs["group"]
            code, out_name = fusable_act(n.output[0])
            if out_name != n.output[0]:
                fused[out_name] = 1
            oh, ow = (hh + pads[0] + pads[2] - k) // st + 1, (ww + pads[1] + pads[3] - k) // st + 1
            same_out = (-(-hh // st), -(-ww // st))
            total = max((same_out[0] - 1) * st + k - hh, 0)
            if any(pads) and (same_out == (oh, ow) and [total // 2, total - total // 2] == [pads[0], pads[2]]):
                padding = s.Padding.SAME
            else:
                padding = s.Padding.VALID
                if any(pads):   # explicit padding as TFLite writes it for a torch conv (litert-torch does too)
                    pt = tensor([4, 2], np.array([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]), "int32")
                    padded = tensor([1, hh + pads[0] + pads[2], ww + pads[1] + pads[3], cc])
                    op("PAD", [x, pt], [padded], "PadOptions")
                    x = padded
            y = tensor([1, oh, ow, w.shape[0]])
            if group == 1:
                op("CONV_2D", [x, tensor(w.shape[:1] + w.shape[2:] + w.shape[1:2], w.transpose(0, 2, 3, 1)),
                               tensor(b.shape, b)], [y], "Conv2DOptions", padding=padding, strideW=st, strideH=st,
                   dilationWFactor=1, dilationHFactor=1, fusedActivationFunction=code)
            else:
                wd = w.transpose(1, 2, 3, 0)   # [C, 1, kh, kw] -> [1, kh, kw, C]
                op("DEPTHWISE_CONV_2D", [x, tensor(wd.shape, wd), tensor(b.shape, b)], [y], "DepthwiseConv2DOptions",
                   padding=padding, strideW=st, strideH=st, depthMultiplier=1, dilationWFactor=1, dilationHFactor=1,
                   fusedActivationFunction=code)
            ids[out_name], shapes[out_name] = y, [1, oh, ow, w.shape[0]]
        elif n.op_type == "Add":
            code, out_name = fusable_act(n.output[0])
            if out_name != n.output[0]:
                fused[out_name] = 1
            y = tensor(shapes[n.input[0]])
            op("ADD", [ids[n.input[0]], ids[n.input[1]]], [y], "AddOptions", fusedActivationFunction=code)
            ids[out_name], shapes[out_name] = y, shapes[n.input[0]]
        elif n.op_type in ("Relu", "Clip"):
            y = tensor(shapes[n.input[0]])
            op("RELU" if n.op_type == "Relu" else "RELU6", [ids[n.input[0]]], [y])
            ids[n.output[0]], shapes[n.output[0]] = y, shapes[n.input[0]]
        elif n.op_type == "MaxPool":
            _, hh, ww, cc = shapes[n.input[0]]
            k, st, pads = attrs["kernel_shape"][0], attrs["strides"][0], attrs.get("pads", [0] * 4)
            x = ids[n.input[0]]
            if any(pads):   # -inf padding: values after a ReLU are >= 0, so 0 pads the same
                pt = tensor([4, 2], np.array([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]), "int32")
                hh, ww = hh + pads[0] + pads[2], ww + pads[1] + pads[3]
                padded = tensor([1, hh, ww, cc])
                op("PAD", [x, pt], [padded], "PadOptions")
                x = padded
            oh, ow = (hh - k) // st + 1, (ww - k) // st + 1
            y = tensor([1, oh, ow, cc])
            op("MAX_POOL_2D", [x], [y], "Pool2DOptions", padding=s.Padding.VALID, strideW=st, strideH=st,
               filterWidth=k, filterHeight=k, fusedActivationFunction=act.NONE)
            ids[n.output[0]], shapes[n.output[0]] = y, [1, oh, ow, cc]
        elif n.op_type == "ReduceMean":
            cc = shapes[n.input[0]][3]
            y = tensor([1, cc])
            op("MEAN", [ids[n.input[0]], tensor([2], np.array([1, 2]), "int32")], [y], "ReducerOptions", keepDims=False)
            ids[n.output[0]], shapes[n.output[0]] = y, [1, cc]
        elif n.op_type == "Gemm":
            w, b = consts[n.input[1]], consts[n.input[2]]
            w = w if attrs.get("transB", 0) else w.T
            y = tensor([1, w.shape[0]])
            op("FULLY_CONNECTED", [ids[n.input[0]], tensor(w.shape, w), tensor(b.shape, b)], [y],
               "FullyConnectedOptions", fusedActivationFunction=act.NONE)
            ids[n.output[0]], shapes[n.output[0]] = y, [1, w.shape[0]]
        else:
            raise ValueError(f"{onnx_path.name}: {n.op_type} is not in onnx_to_tflite's op set")
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = tensors, [ids[inp.name]], [ids[g.output[0].name]], operators, "main"
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, code_list, [sg], buffers
    m.description = f"autoglm benchmarks: {onnx_path.name} as NHWC TFLite"
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    out.write_bytes(bytes(b.Output()))
    return out


def check_against_onnx(onnx_path: Path, tfl: Path) -> float:
    """Max abs difference between LiteRT on the TFLite file and onnxruntime on the ONNX file (same input)."""
    import onnxruntime as ort

    from compile.reference import ReferenceRuntime

    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    ref = ReferenceRuntime.open(tfl, "tflite")
    name = ref.session.get_input_details()[0]["name"]
    ours = ref.run({name: x})[0]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {sess.get_inputs()[0].name: x.transpose(0, 3, 1, 2)})[0]
    return float(np.abs(ours - theirs).max())


def build(model: str, work: Path) -> dict[str, Path]:
    """{"fp32": artifact, "int8": artifact} of the model's TFLite files (reused when they exist)."""
    import targets
    from compile import compile_model
    from compile.quantize import quantize_tflite
    from toolkit.export import export_zoo_model

    onnx_path = work / f"{model}.onnx"
    if not onnx_path.exists():
        export_zoo_model(model, onnx_path)
    fp32_tfl, int8_tfl = work / f"{model}.tflite", work / f"{model}_int8.tflite"
    if not fp32_tfl.exists():
        onnx_to_tflite(onnx_path, fp32_tfl)
        err = check_against_onnx(onnx_path, fp32_tfl)
        log(f"{model}: TFLite written, LiteRT vs onnxruntime max abs error {err:.2g}")
        if err > 1e-3:
            raise SystemExit(f"{fp32_tfl} does not compute what {onnx_path} computes (max abs error {err:.3g})")
    if not int8_tfl.exists():
        rng = np.random.default_rng(0)
        samples = [[rng.standard_normal((1, 224, 224, 3)).astype(np.float32)] for _ in range(CALIBRATION_SAMPLES)]
        int8_tfl.write_bytes(quantize_tflite(fp32_tfl.read_bytes(), samples, "float32"))
    host = targets.load_target("host")
    arts = {}
    for kind, tfl in (("fp32", fp32_tfl), ("int8", int8_tfl)):
        art = work / f"{model}-{kind}"
        if not (art / "manifest.json").exists():
            log(f"compiling {tfl.name} for host (verified)")
            compile_model(tfl, host, art, verify=True)
        arts[kind] = art
    return arts


def bench(art: Path, args) -> dict:
    from toolkit.bench import BenchConfig, parse_threads, run_bench, to_document

    cfg = BenchConfig(artifact=art, baseline="litert", threads=parse_threads(args.threads), warmup=args.warmup,
                      repeat=args.repeat, block=args.block, command=f"benchmarks/bench_tflite.py ({art.name})")
    return to_document(run_bench(cfg, progress=lambda m: log(f"{art.name}: {m}")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-tflite")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    import json

    from toolkit.bench.sysinfo import describe_cpu, host_info
    from toolkit.bench.table import fmt_bytes

    started = time.monotonic()
    lines = ["| model | precision | threads | LiteRT ms | autoglm ms | autoglm / LiteRT | artifact | .tflite | "
             "outputs (max abs err, against) | LiteRT end to end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model in args.models:
        arts = build(model, args.work)
        for kind, art in arts.items():
            doc = bench(art, args)
            manifest = json.loads((art / "manifest.json").read_text())
            e2e = manifest["verification"].get("litert_end_to_end")
            tfl = art / "source.tflite"
            for tk in (r for r in doc["results"] if r["role"] == "toolkit"):
                t = tk["threads"]
                base = next(r for r in doc["results"] if r["role"] == "baseline" and r["threads"] == t)
                cmp = next(c for c in doc["correctness"]["comparisons"] if c["threads"] == t)
                lines.append(
                    f"| {LABELS.get(model, model)} | {kind} | {t} | {ms(base['latency_ms']['p50'])} | "
                    f"{ms(tk['latency_ms']['p50'])} | {tk['ratio_vs_baseline']['p50']:.2f}x | "
                    f"{fmt_bytes(doc['artifact']['artifact_bytes'])} | {fmt_bytes(tfl.stat().st_size)} | "
                    f"{'match' if cmp['passed'] else 'DIFFER'} ({cmp['max_abs_error']:.2g}, {cmp['against']}) | "
                    + (f"max {e2e['max_steps']:g} steps, {e2e['equal_fraction']:.1%} equal |" if e2e else "- |"))
    h = host_info()
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print("\n".join([
        "## TFLite models against LiteRT (float and full integer)",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {describe_cpu()}, {h['cores']} cores, {h['os']}",
        f"- Software: LiteRT {h['litert_version']}, TVM {h['tvm_version']}, Python {h['python']}; source {git_revision()}",
        f"- Command: `{cmd}` ({time.monotonic() - started:.0f} s)",
        f"- Method: the zoo model written as NHWC TFLite, and that file quantized to full integer by LiteRT's own "
        f"quantizer ({CALIBRATION_SAMPLES} random calibration inputs, float input/output); each compiled for host and "
        f"timed against LiteRT on the same file, interleaved in blocks of {args.block}, {args.warmup} warm-up and "
        f"{args.repeat} timed runs, each runtime in its own process; p50 latency.",
        "",
        *lines,
    ]))


if __name__ == "__main__":
    main()
