"""Seeded random small graphs for differential testing of the default schedules.

Two writers, one per layout the toolkit meets in real files:

- TFLite, NHWC (what MediaPipe-style models are): CONV_2D (strided, dilated, every padding mode,
  fused RELU/RELU6/RELU_N1_TO_1, weights in float32 or float16 behind DEQUANTIZE),
  DEPTHWISE_CONV_2D (multiplier 1/2), PRELU, HARD_SWISH, PAD (spatial and channel axis),
  MAX/AVERAGE_POOL_2D, RESIZE_BILINEAR / NEAREST_NEIGHBOR, CONCATENATION and residual ADD.
  Written with LiteRT's own flatbuffer schema (`ai_edge_litert.schema_py_generated`), checked
  against LiteRT.
- ONNX, NCHW: Conv (grouped, depthwise, dilated, strided, explicit asymmetric pads and every
  auto_pad mode), PRelu, HardSwish, Clip, Relu, MaxPool/AveragePool (ceil mode, padding),
  Resize, Pad (constant, reflect, edge), Concat and residual Add, checked against onnxruntime.

Channel counts are odd and small on purpose (1..21): vector-width multiples are where rules are
easy to get right. Every graph is deterministic in its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ACTS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")


@dataclass
class GeneratedGraph:
    """One corpus member: the file written and the ops it holds (for failure messages)."""

    name: str
    path: Path
    fmt: str
    ops: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.name} ({self.fmt}): " + " -> ".join(self.ops)


def _odd_channels(rng: random.Random, lo: int = 1, hi: int = 21) -> int:
    return rng.choice([c for c in range(lo, hi + 1) if c % 2] + [2, 6, 12])


def _same_pad(size: int, k: int, s: int, d: int = 1) -> tuple[int, int, int]:
    """TFLite/TF SAME padding: output size, pad before, pad after."""
    eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max(0, (out - 1) * s + eff - size)
    return out, total // 2, total - total // 2


# ------------------------------------------------------------------------------------------ TFLite


class _TfliteWriter:
    """A minimal TFLite model writer over LiteRT's object API (one subgraph)."""

    def __init__(self) -> None:
        import ai_edge_litert.schema_py_generated as s

        self.s = s
        self.tensors: list = []
        self.buffers = [s.BufferT()]
        self.operators: list = []
        self.codes: dict[int, int] = {}
        self.code_list: list = []

    def tensor(self, shape, dtype: str = "float32", data: np.ndarray | None = None) -> int:
        s = self.s
        t = s.TensorT()
        t.shape = [int(d) for d in shape]
        t.type = {"float32": s.TensorType.FLOAT32, "float16": s.TensorType.FLOAT16, "int32": s.TensorType.INT32}[dtype]
        t.name = f"t{len(self.tensors)}"
        if data is not None:
            buf = s.BufferT()
            buf.data = list(np.ascontiguousarray(data.astype(dtype)).tobytes())
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        else:
            t.buffer = 0
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, arr: np.ndarray, dtype: str = "float32") -> int:
        return self.tensor(arr.shape, dtype, arr)

    def weight(self, arr: np.ndarray, fp16: bool) -> int:
        """A float32 weight, stored as float16 behind DEQUANTIZE when `fp16` (as MediaPipe ships them)."""
        if not fp16:
            return self.const(arr)
        half = self.const(arr, "float16")
        out = self.tensor(arr.shape)
        self.op("DEQUANTIZE", [half], [out])
        return out

    def op(self, name: str, inputs: list[int], outputs: list[int], opt_name: str | None = None, **opts) -> None:
        s = self.s
        code = getattr(s.BuiltinOperator, name)
        if code not in self.codes:
            oc = s.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = 1
            self.codes[code] = len(self.code_list)
            self.code_list.append(oc)
        o = s.OperatorT()
        o.opcodeIndex = self.codes[code]
        o.inputs = list(inputs)
        o.outputs = list(outputs)
        if opt_name is not None:
            options = getattr(s, f"{opt_name}T")()
            for k, v in opts.items():
                setattr(options, k, v)
            o.builtinOptionsType = getattr(s.BuiltinOptions, opt_name)
            o.builtinOptions = options
        self.operators.append(o)

    def finish(self, inputs: list[int], outputs: list[int]) -> bytes:
        import flatbuffers

        s = self.s
        sg = s.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = self.tensors, inputs, outputs, self.operators, "main"
        m = s.ModelT()
        m.version = 3
        m.operatorCodes = self.code_list
        m.subgraphs = [sg]
        m.buffers = self.buffers
        m.description = "autoglm generated corpus"
        b = flatbuffers.Builder(1024)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def tflite_graph(seed: int, path: Path, n_ops: int | None = None, float_weights: bool = False) -> GeneratedGraph:
    """A random NHWC TFLite graph of 3..6 blocks, written to `path`; `float_weights`: no float16 weights
    (LiteRT's post-training quantizer refuses their DEQUANTIZE), the same graph otherwise."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    w = _TfliteWriter()
    s = w.s
    pad_code = {"SAME": s.Padding.SAME, "VALID": s.Padding.VALID}
    act_code = {a: getattr(s.ActivationFunctionType, a) for a in ACTS}
    h, wd, c = rng.randint(6, 17), rng.randint(6, 17), _odd_channels(rng, 1, 9)
    x = w.tensor([1, h, wd, c])
    inp = x
    shape = [1, h, wd, c]
    ops: list[str] = []

    def rnd(*shp, scale=0.5):
        return (nrng.standard_normal(shp) * scale).astype(np.float32)

    def conv(src, shp, *, k, stride, dil, padding, cout, act, fp16):
        _, hh, ww, cc = shp
        if padding == "SAME":
            oh, ow = -(-hh // stride), -(-ww // stride)
        else:
            eff = (k - 1) * dil + 1
            oh, ow = (hh - eff) // stride + 1, (ww - eff) // stride + 1
        wt = w.weight(rnd(cout, k, k, cc, scale=1.0 / np.sqrt(k * k * cc)), fp16)
        bias = w.const(rnd(cout, scale=0.1))
        out = w.tensor([1, oh, ow, cout])
        w.op("CONV_2D", [src, wt, bias], [out], "Conv2DOptions", padding=pad_code[padding], strideW=stride, strideH=stride,
             dilationWFactor=dil, dilationHFactor=dil, fusedActivationFunction=act_code[act])
        return out, [1, oh, ow, cout]

    blocks = n_ops or rng.randint(3, 6)
    for _ in range(blocks):
        _, hh, ww, cc = shape
        kind = rng.choice(["conv", "conv", "depthwise", "depthwise", "prelu", "hswish", "pad", "pool", "resize",
                           "concat", "residual"])
        if kind == "conv":
            k = rng.choice([1, 3, 3, 5])
            stride = rng.choice([1, 1, 2])
            dil = rng.choice([1, 2]) if stride == 1 and k > 1 else 1
            padding = rng.choice(["SAME", "VALID"])
            if padding == "VALID" and (k - 1) * dil + 1 > min(hh, ww):
                padding = "SAME"
            cout, act, fp16 = _odd_channels(rng), rng.choice(ACTS), rng.random() < 0.3 and not float_weights
            x, shape = conv(x, shape, k=k, stride=stride, dil=dil, padding=padding, cout=cout, act=act, fp16=fp16)
            ops.append(f"conv{k}x{k}/s{stride}/d{dil}/{padding}/{cc}->{cout}/{act}{'/fp16' if fp16 else ''}")
        elif kind == "depthwise":
            k = rng.choice([3, 3, 5])
            stride = rng.choice([1, 2])
            mult = rng.choice([1, 1, 2])
            padding = rng.choice(["SAME", "VALID"]) if min(hh, ww) >= k else "SAME"
            act, fp16 = rng.choice(ACTS), rng.random() < 0.3 and not float_weights
            if padding == "SAME":
                oh, ow = -(-hh // stride), -(-ww // stride)
            else:
                oh, ow = (hh - k) // stride + 1, (ww - k) // stride + 1
            wt = w.weight(rnd(1, k, k, cc * mult, scale=1.0 / k), fp16)
            bias = w.const(rnd(cc * mult, scale=0.1))
            out = w.tensor([1, oh, ow, cc * mult])
            w.op("DEPTHWISE_CONV_2D", [x, wt, bias], [out], "DepthwiseConv2DOptions", padding=pad_code[padding],
                 strideW=stride, strideH=stride, depthMultiplier=mult, dilationWFactor=1, dilationHFactor=1,
                 fusedActivationFunction=act_code[act])
            x, shape = out, [1, oh, ow, cc * mult]
            ops.append(f"depthwise{k}x{k}/s{stride}/m{mult}/{padding}/{cc}/{act}{'/fp16' if fp16 else ''}")
        elif kind == "prelu":
            alpha = w.const(rnd(1, 1, cc, scale=0.3))
            out = w.tensor(shape)
            w.op("PRELU", [x, alpha], [out])
            x = out
            ops.append(f"prelu/{cc}")
        elif kind == "hswish":
            out = w.tensor(shape)
            w.op("HARD_SWISH", [x], [out])
            x = out
            ops.append("hard-swish")
        elif kind == "pad":
            if rng.random() < 0.5:
                pads = [[0, 0], [0, 0], [0, 0], [0, rng.randint(1, 7)]]   # channel axis (MediaPipe's residual widening)
            else:
                pads = [[0, 0], [rng.randint(0, 2), rng.randint(0, 2)], [rng.randint(0, 2), rng.randint(0, 2)], [0, 0]]
            pt = w.const(np.array(pads, dtype=np.int32), "int32")
            shape = [d + a + b for d, (a, b) in zip(shape, pads)]
            out = w.tensor(shape)
            w.op("PAD", [x, pt], [out], "PadOptions")
            x = out
            ops.append(f"pad{pads}")
        elif kind == "pool":
            f = rng.choice([2, 3])
            stride = rng.choice([1, 2, 2])
            padding = rng.choice(["SAME", "VALID"]) if min(hh, ww) >= f else "SAME"
            kind_op = rng.choice(["MAX_POOL_2D", "AVERAGE_POOL_2D"])
            if padding == "SAME":
                oh, ow = -(-hh // stride), -(-ww // stride)
            else:
                oh, ow = (hh - f) // stride + 1, (ww - f) // stride + 1
            shape = [1, oh, ow, cc]
            out = w.tensor(shape)
            w.op(kind_op, [x], [out], "Pool2DOptions", padding=pad_code[padding], strideW=stride, strideH=stride,
                 filterWidth=f, filterHeight=f, fusedActivationFunction=act_code["NONE"])
            x = out
            ops.append(f"{kind_op.lower()}{f}/s{stride}/{padding}")
        elif kind == "resize":
            nearest = rng.random() < 0.5
            oh, ow = (hh * 2, ww * 2) if rng.random() < 0.6 else (rng.randint(3, 20), rng.randint(3, 20))
            # Nearest with align_corners is left out: TVM 0.27's TFLite frontend rounds it differently from
            # LiteRT (0.29 max abs error with or without schedules): a frontend bug, not a schedule one.
            mode = rng.choice(["plain", "half"] if nearest else ["plain", "align", "half"])
            size = w.const(np.array([oh, ow], dtype=np.int32), "int32")
            shape = [1, oh, ow, cc]
            out = w.tensor(shape)
            if nearest:
                w.op("RESIZE_NEAREST_NEIGHBOR", [x, size], [out], "ResizeNearestNeighborOptions",
                     alignCorners=mode == "align", halfPixelCenters=mode == "half")
            else:
                w.op("RESIZE_BILINEAR", [x, size], [out], "ResizeBilinearOptions",
                     alignCorners=mode == "align", halfPixelCenters=mode == "half")
            x = out
            ops.append(f"resize-{'nearest' if nearest else 'bilinear'}/{mode}/{hh}x{ww}->{oh}x{ow}")
        elif kind == "concat":
            branch, bshape = conv(x, shape, k=1, stride=1, dil=1, padding="SAME", cout=_odd_channels(rng, 1, 7),
                                  act="RELU", fp16=False)
            shape = [1, hh, ww, cc + bshape[3]]
            out = w.tensor(shape)
            w.op("CONCATENATION", [x, branch], [out], "ConcatenationOptions", axis=3,
                 fusedActivationFunction=act_code["NONE"])
            x = out
            ops.append(f"concat({cc}+{bshape[3]})")
        else:  # residual: x + depthwise/conv(x), MediaPipe's block shape
            if rng.random() < 0.5:
                branch, _ = conv(x, shape, k=3, stride=1, dil=1, padding="SAME", cout=cc, act="NONE", fp16=False)
            else:
                wt = w.const(rnd(1, 3, 3, cc, scale=0.3))
                bias = w.const(rnd(cc, scale=0.1))
                branch = w.tensor(shape)
                w.op("DEPTHWISE_CONV_2D", [x, wt, bias], [branch], "DepthwiseConv2DOptions", padding=pad_code["SAME"],
                     strideW=1, strideH=1, depthMultiplier=1, dilationWFactor=1, dilationHFactor=1,
                     fusedActivationFunction=act_code["NONE"])
            out = w.tensor(shape)
            w.op("ADD", [x, branch], [out], "AddOptions", fusedActivationFunction=act_code[rng.choice(["NONE", "RELU"])])
            x = out
            ops.append(f"residual-add/{cc}")
    path.write_bytes(w.finish([inp], [x]))
    return GeneratedGraph(path.stem, path, "tflite", ops)


# ------------------------------------------------------------------------------------------ ONNX


def onnx_graph(seed: int, path: Path, n_ops: int | None = None) -> GeneratedGraph:
    """A random NCHW ONNX graph of 3..6 blocks (opset 17), written to `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    ops: list[str] = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def const(arr: np.ndarray) -> str:
        n = name("c")
        inits.append(numpy_helper.from_array(arr, n))
        return n

    def rnd(*shp, scale=0.5):
        return (nrng.standard_normal(shp) * scale).astype(np.float32)

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv_out(size, k, s, d, pa, pb):
        return (size + pa + pb - ((k - 1) * d + 1)) // s + 1

    h, wd, c = rng.randint(6, 17), rng.randint(6, 17), _odd_channels(rng, 1, 9)
    shape = [1, c, h, wd]
    x = "x"
    blocks = n_ops or rng.randint(3, 6)
    for _ in range(blocks):
        _, cc, hh, ww = shape
        kind = rng.choice(["conv", "conv", "grouped", "depthwise", "prelu", "hswish", "clip", "pad", "pool", "resize",
                           "concat", "residual"])
        if kind in ("conv", "grouped", "depthwise"):
            k = rng.choice([1, 3, 3, 5]) if kind == "conv" else rng.choice([3, 5])
            stride = rng.choice([1, 1, 2])
            dil = rng.choice([1, 2]) if stride == 1 and k > 1 else 1
            if kind == "depthwise":
                g, cout = cc, cc * rng.choice([1, 1, 2])
            elif kind == "grouped" and cc > 1:
                g = next((d for d in (3, 2, 5) if cc % d == 0), 1)
                cout = g * rng.randint(1, 4)
            else:
                g, cout = 1, _odd_channels(rng)
            mode = rng.choice(["explicit", "SAME_UPPER", "SAME_LOWER", "VALID"])
            eff = (k - 1) * dil + 1
            if (mode == "VALID" and eff > min(hh, ww)) or (mode.startswith("SAME") and dil > 1):
                mode = "explicit"  # onnxruntime has no dilated SAME_* convolution
            attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "dilations": [dil, dil], "group": g}
            if mode == "explicit":
                pads = [rng.randint(0, k // 2 + 1) for _ in range(4)]  # asymmetric: top, left, bottom, right
                attrs["pads"] = pads
                oh, ow = conv_out(hh, k, stride, dil, pads[0], pads[2]), conv_out(ww, k, stride, dil, pads[1], pads[3])
            elif mode == "VALID":
                attrs["auto_pad"] = "VALID"
                oh, ow = conv_out(hh, k, stride, dil, 0, 0), conv_out(ww, k, stride, dil, 0, 0)
            else:
                attrs["auto_pad"] = mode
                oh, ow = -(-hh // stride), -(-ww // stride)
            if min(oh, ow) < 1:
                continue
            wt = const(rnd(cout, cc // g, k, k, scale=1.0 / np.sqrt(k * k * cc / g)))
            x = node("Conv", [x, wt, const(rnd(cout, scale=0.1))], **attrs)
            shape = [1, cout, oh, ow]
            ops.append(f"{kind}{k}x{k}/s{stride}/d{dil}/g{g}/{mode}/{cc}->{cout}")
        elif kind == "prelu":
            x = node("PRelu", [x, const(rnd(cc, 1, 1, scale=0.3))])
            ops.append(f"prelu/{cc}")
        elif kind == "hswish":
            x = node("HardSwish", [x])
            ops.append("hard-swish")
        elif kind == "clip":
            lo, hi = rng.choice([(0.0, 6.0), (-1.0, 1.0), (-0.5, 3.0)])
            x = node("Clip", [x, const(np.array(lo, np.float32)), const(np.array(hi, np.float32))])
            ops.append(f"clip[{lo},{hi}]")
        elif kind == "pad":
            mode = rng.choice(["constant", "reflect", "edge"])
            if mode == "constant" and rng.random() < 0.5:
                pads = [0, 0, 0, 0, 0, rng.randint(1, 5), 0, 0]   # channel axis
            else:
                lim = 2 if mode != "reflect" else min(2, hh - 1, ww - 1)
                pads = [0, 0, rng.randint(0, lim), rng.randint(0, lim), 0, 0, rng.randint(0, lim), rng.randint(0, lim)]
            inputs = [x, const(np.array(pads, np.int64))]
            if mode == "constant":
                inputs.append(const(np.array(rng.choice([0.0, 0.5]), np.float32)))
            x = node("Pad", inputs, mode=mode)
            shape = [d + pads[i] + pads[i + 4] for i, d in enumerate(shape)]
            ops.append(f"pad-{mode}{pads}")
        elif kind == "pool":
            f = rng.choice([2, 3])
            stride = rng.choice([1, 2, 2])
            p = rng.randint(0, f // 2)
            ceil = int(rng.random() < 0.3)
            op = rng.choice(["MaxPool", "AveragePool"])
            attrs = {"kernel_shape": [f, f], "strides": [stride, stride], "pads": [p, p, p, p], "ceil_mode": ceil}
            if op == "AveragePool":
                attrs["count_include_pad"] = rng.choice([0, 1])

            def pool_out(size):
                span = size + 2 * p - f
                o = (-(-span // stride) if ceil else span // stride) + 1
                if ceil and (o - 1) * stride >= size + p:
                    o -= 1
                return o

            oh, ow = pool_out(hh), pool_out(ww)
            if min(oh, ow) < 1:
                continue
            x = node(op, [x], **attrs)
            shape = [1, cc, oh, ow]
            ops.append(f"{op}{f}/s{stride}/p{p}/ceil{ceil}")
        elif kind == "resize":
            mode = rng.choice(["nearest", "linear"])
            ctm = rng.choice(["half_pixel", "asymmetric", "align_corners"]) if mode == "linear" else "asymmetric"
            x = node("Resize", [x, "", const(np.array([1, 1, 2, 2], np.float32))], mode=mode,
                     coordinate_transformation_mode=ctm, **({"nearest_mode": "floor"} if mode == "nearest" else {}))
            shape = [1, cc, hh * 2, ww * 2]
            ops.append(f"resize-{mode}/{ctm}")
        elif kind == "concat":
            bc = _odd_channels(rng, 1, 7)
            branch = node("Relu", [node("Conv", [x, const(rnd(bc, cc, 1, 1, scale=0.5))], kernel_shape=[1, 1])])
            x = node("Concat", [x, branch], axis=1)
            shape = [1, cc + bc, hh, ww]
            ops.append(f"concat({cc}+{bc})")
        else:
            branch = node("Conv", [x, const(rnd(cc, cc, 3, 3, scale=0.3)), const(rnd(cc, scale=0.1))],
                          kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            x = node("Add", [x, branch])
            if rng.random() < 0.5:
                x = node("Relu", [x])
            ops.append(f"residual-add/{cc}")
    graph = helper.make_graph(
        nodes, "generated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, wd])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="autoglm-corpus")
    model.ir_version = 8
    onnx.save(model, str(path))
    return GeneratedGraph(path.stem, path, "onnx", ops)


def corpus(size: int, seed: int, out_dir: Path) -> list[GeneratedGraph]:
    """`size` graphs, alternating TFLite (NHWC) and ONNX (NCHW), seeds derived from `seed`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    graphs = []
    for i in range(size):
        s = seed * 1000 + i
        if i % 2 == 0:
            graphs.append(tflite_graph(s, out_dir / f"gen-{s}-nhwc.tflite"))
        else:
            graphs.append(onnx_graph(s, out_dir / f"gen-{s}-nchw.onnx"))
    return graphs


# ------------------------------------------------------------------------------ full-integer TFLite


def int8_tflite_graph(seed: int, path: Path, n_ops: int | None = None) -> GeneratedGraph:
    """A generated TFLite graph (float32 weights) quantized to full integer by LiteRT's own post-training
    quantizer, calibrated on 8 seeded random inputs; odd seeds keep int8 inputs and outputs, even seeds float
    ones (QUANTIZE / DEQUANTIZE at the edges)."""
    from ai_edge_litert.interpreter import Interpreter

    from compile.native_stderr import quiet_native_stderr
    from compile.quantize import quantize_tflite

    float_path = path.with_name(f"{path.stem}-float.tflite")
    graph = tflite_graph(seed, float_path, n_ops, float_weights=True)
    with quiet_native_stderr():
        interp = Interpreter(model_path=str(float_path))
    shapes = [d["shape"] for d in interp.get_input_details()]
    rng = np.random.default_rng(seed)
    samples = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(8)]
    path.write_bytes(quantize_tflite(float_path.read_bytes(), samples, "int8" if seed % 2 else "float32"))
    return GeneratedGraph(path.stem, path, "tflite", graph.ops + [f"int8 ({'int8' if seed % 2 else 'float'} I/O)"])


def int8_corpus(size: int, seed: int, out_dir: Path) -> list[GeneratedGraph]:
    """`size` full-integer TFLite graphs, seeds derived from `seed`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [int8_tflite_graph(seed * 1000 + i, out_dir / f"gen-{seed * 1000 + i}-int8.tflite") for i in range(size)]
