"""Full-integer TFLite models -> QDQ ONNX, so they compile to the toolkit's integer kernels.

TVM 0.27's TFLite frontend cannot read quantized tensors (it calls a `_qnn` module that no longer
exists: apache/tvm issue 19534). A quantized TFLite model (as written by LiteRT's post-training
quantizer or litert-torch) is rewritten here into the QDQ form onnxruntime's `quantize_static`
writes, which the rest of the pipeline already turns into 8-bit x 8-bit -> int32 kernels
(`compile/int8.py`):

- every 8-bit activation is an 8-bit ONNX tensor; an operator reads it through DequantizeLinear
  (its scale and zero point), computes in float and writes through QuantizeLinear with the output
  tensor's scale and zero point; fused activations (RELU, RELU6, ...) are clamps before that quantize;
- constant weights stay int8 with their per-channel scales (DequantizeLinear on `axis`), int32 biases
  are dequantized with their own scales (TFLite stores `s_input * s_weight`);
- TFLite is NHWC, ONNX convolutions NCHW: each 4-D tensor is kept in whichever layout its producer
  wrote (NCHW after a conv or pool) and transposed only where a consumer needs the other one (reshape,
  fully-connected, graph outputs), so a chain of convs has transposes only at its ends.

The QDQ semantics (float math between an exact dequantize and a round-to-nearest quantize) equal
TFLite's fixed-point integer kernels up to the rounding of requantization ties and of the lookup
tables LiteRT uses for some activations: outputs a step or two apart (`compile` verifies against
LiteRT within INT8_VERIFY_STEPS output steps). Operators outside `SUPPORTED` are named in one line.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ModelFormatError, UnsupportedOperatorError

__all__ = ["SUPPORTED", "QdqConversion", "check_operators_against_litert", "is_quantized_tflite", "output_steps",
           "to_qdq_onnx"]

OPSET = 17
NHWC, NCHW = "NHWC", "NCHW"
_TO_NCHW, _TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
_NHWC_AXIS_IN_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}   # an NHWC axis's position in the NCHW tensor
_EIGHT_BIT = ("int8", "uint8")


def _tensor_type_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}


def _op_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


_DTYPES = {"FLOAT32": "float32", "INT8": "int8", "UINT8": "uint8", "INT32": "int32", "INT64": "int64",
           "INT16": "int16", "FLOAT16": "float16", "BOOL": "bool"}


@dataclass(frozen=True)
class _Quant:
    scale: np.ndarray       # float32, one or per channel
    zero_point: np.ndarray  # int64, same length
    axis: int

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1


def _builtin_code(model, op) -> int:
    code = model.OperatorCodes(op.OpcodeIndex())
    # TFLite >= 2.4 keeps the builtin code in a 32-bit field and a deprecated 8-bit one
    return max(code.DeprecatedBuiltinCode(), code.BuiltinCode())


def _quant(tensor) -> _Quant | None:
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    scale = q.ScaleAsNumpy().astype(np.float32)
    zp = q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() else np.zeros(scale.shape, np.int64)
    if zp.size != scale.size or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ModelFormatError(f"TFLite tensor {tensor.Name().decode(errors='replace')!r} has invalid quantization "
                               f"parameters ({scale.size} scales, {zp.size} zero points)")
    return _Quant(scale, zp, int(q.QuantizedDimension()))


def is_quantized_tflite(model) -> bool:
    """Whether any operator of the main graph reads or writes an 8-bit quantized activation (a full-integer or
    integer-activation model), as opposed to a float model (possibly with int8/fp16 weights dequantized)."""
    names = _tensor_type_names()
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for idx in list(op.InputsAsNumpy()) + list(op.OutputsAsNumpy()):
            if idx < 0:
                continue
            t = graph.Tensors(int(idx))
            if names.get(t.Type()) in ("INT8", "UINT8") and model.Buffers(t.Buffer()).DataLength() == 0 \
                    and _quant(t) is not None:
                return True
    return False


def output_steps(model) -> list[float]:
    """Per graph output, its quantization step in the output's own units: 1 for an 8-bit output (integer
    values), the scale of a float output that a DEQUANTIZE writes, 0 for any other float output."""
    names, ops = _tensor_type_names(), _op_names()
    graph = model.Subgraphs(0)
    producer = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        for o in op.OutputsAsNumpy():
            producer[int(o)] = op
    steps = []
    for idx in graph.OutputsAsNumpy():
        t = graph.Tensors(int(idx))
        if names.get(t.Type()) in ("INT8", "UINT8"):
            steps.append(1.0)
            continue
        op = producer.get(int(idx))
        src = graph.Tensors(int(op.Inputs(0))) if op is not None and ops.get(_builtin_code(model, op)) == "DEQUANTIZE" else None
        q = _quant(src) if src is not None else None
        steps.append(float(q.scale.max()) if q is not None else 0.0)
    return steps


def activation_ranges(model) -> dict[str, list[float]]:
    """Per 8-bit activation tensor of the main graph, the float range its scale and zero point cover."""
    names = _tensor_type_names()
    graph = model.Subgraphs(0)
    out: dict[str, list[float]] = {}
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        q = _quant(t)
        dtype = _DTYPES.get(names.get(t.Type(), ""), "")
        if q is None or not q.per_tensor or dtype not in _EIGHT_BIT or model.Buffers(t.Buffer()).DataLength():
            continue
        info = np.iinfo(dtype)
        s, z = float(q.scale[0]), int(q.zero_point[0])
        out[t.Name().decode(errors="replace")] = [round((info.min - z) * s, 6), round((info.max - z) * s, 6)]
    return out


class _Converter:
    """One TFLite subgraph -> one ONNX graph (see the module doc)."""

    def __init__(self, model, buf: bytes, input_shapes: dict[str, tuple[int, ...]]):
        self.model, self.buf, self.graph = model, buf, model.Subgraphs(0)
        self.input_shapes = input_shapes
        self.type_names, self.op_names = _tensor_type_names(), _op_names()
        self.nodes: list = []
        self.initializers: list = []
        self.stored: dict[int, dict[str, str]] = {}   # tensor -> {layout: ONNX name} of its value as TFLite stores it
        self.written: dict[int, tuple[str, str]] = {}  # tensor an operator wrote -> (layout, ONNX name it wrote)
        # a PAD folded into the convs that read it: its output -> (its input, [top, left, bottom, right])
        self.folded_pads: dict[int, tuple[int, list[int]]] = {}
        self.readers: dict[int, list] = {}
        for i in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(i)
            for pos, t in enumerate(op.InputsAsNumpy()):
                self.readers.setdefault(int(t), []).append((op, pos))
        self.floats: dict[tuple[int, str], str] = {}  # (tensor, layout) -> ONNX name of its float value
        self._n = 0

    # ------------------------------------------------------------------ tensors

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}__{self._n}"

    def tensor(self, idx: int):
        return self.graph.Tensors(int(idx))

    def dtype(self, idx: int) -> str:
        t = self.tensor(idx)
        name = self.type_names.get(t.Type(), str(t.Type()))
        if name not in _DTYPES:
            raise UnsupportedOperatorError(f"TFLite tensor {t.Name().decode(errors='replace')!r} has type {name}, which "
                                           f"the full-integer import does not support")
        return _DTYPES[name]

    def shape(self, idx: int) -> list[int]:
        return [int(d) for d in self.tensor(idx).ShapeAsNumpy()] if self.tensor(idx).ShapeLength() else []

    def rank(self, idx: int) -> int:
        return len(self.shape(idx))

    def quant(self, idx: int) -> _Quant | None:
        return _quant(self.tensor(idx))

    def quantized(self, idx: int) -> bool:
        return self.dtype(idx) in _EIGHT_BIT and self.quant(idx) is not None

    def constant(self, idx: int) -> np.ndarray | None:
        t = self.tensor(idx)
        b = self.model.Buffers(t.Buffer())
        if b.DataLength():
            raw = b.DataAsNumpy().tobytes()
        elif b.Offset() > 1:   # large models keep buffers after the flatbuffer
            off, size = int(b.Offset()), int(b.Size())
            if off + size > len(self.buf):
                raise ModelFormatError(f"TFLite buffer of tensor {t.Name().decode(errors='replace')!r} lies past the end "
                                       f"of the file (truncated?)")
            raw = self.buf[off:off + size]
        else:
            return None
        dt = np.dtype(self.dtype(idx))
        shape = self.shape(idx)
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise ModelFormatError(f"TFLite tensor {t.Name().decode(errors='replace')!r}: its buffer holds {len(raw)} "
                                   f"bytes, its shape {shape} of {dt} needs {int(np.prod(shape)) * dt.itemsize}")
        return np.frombuffer(raw, dt).reshape(shape).copy()

    def init(self, arr: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        from onnx import helper

        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def layouts(self, idx: int) -> dict[str, str]:
        return self.stored.get(int(idx), {})

    def prefers(self, idx: int) -> str:
        """The layout a 4-D activation is already available in (NCHW when both are)."""
        have = self.layouts(idx)
        return NCHW if NCHW in have else NHWC

    def value(self, idx: int, layout: str = NHWC) -> str:
        """The tensor as TFLite stores it (8-bit for quantized tensors), in `layout` for 4-D tensors."""
        idx = int(idx)
        have = self.stored.get(idx)
        if have is None:
            c = self.constant(idx)
            if c is None:
                raise ModelFormatError(f"TFLite tensor {self.tensor(idx).Name().decode(errors='replace')!r} is read "
                                       f"before any operator writes it")
            have = self.stored[idx] = {NHWC: self.init(c, "const")}
        if self.rank(idx) != 4:
            return next(iter(have.values()))
        if layout not in have:
            src = NCHW if layout == NHWC else NHWC
            if layout == NCHW and NHWC in have and have[NHWC] in {i.name for i in self.initializers}:
                arr = next(i for i in self.initializers if i.name == have[NHWC])
                from onnx import numpy_helper

                have[NCHW] = self.init(numpy_helper.to_array(arr).transpose(_TO_NCHW), "const_nchw")
            else:
                have[layout] = self.node("Transpose", [have[src]], "transpose",
                                         perm=_TO_NCHW if layout == NCHW else _TO_NHWC)
        return have[layout]

    def qparams(self, q: _Quant, dtype: str, axis_shape: list[int] | None = None) -> tuple[str, str]:
        zp = q.zero_point.astype(dtype)
        scale = q.scale
        if q.per_tensor:
            return self.init(scale.reshape(()), "scale"), self.init(zp.reshape(()), "zero_point")
        return self.init(scale, "scale"), self.init(zp, "zero_point")

    def float_value(self, idx: int, layout: str = NHWC) -> str:
        """The tensor's float value (dequantized when it is quantized), in `layout` for 4-D tensors."""
        idx = int(idx)
        key = (idx, layout if self.rank(idx) == 4 else NHWC)
        if key in self.floats:
            return self.floats[key]
        stored = self.value(idx, key[1])
        dtype = self.dtype(idx)
        q = self.quant(idx)
        if dtype == "float32":
            out = stored
        elif dtype == "float16":
            out = self.node("Cast", [stored], "to_float", to=1)
        elif q is not None and dtype in ("int8", "uint8", "int32", "int16"):
            axis = q.axis
            if self.rank(idx) == 4 and key[1] == NCHW:
                axis = _NHWC_AXIS_IN_NCHW[axis]
            s, z = self.qparams(q, dtype)
            extra = {} if q.per_tensor else {"axis": axis}
            out = self.node("DequantizeLinear", [stored, s, z], "dequantize", **extra)
        else:
            out = stored   # integer data (shapes, indices): used as it is
        self.floats[key] = out
        return out

    def write(self, idx: int, float_name: str, layout: str = NHWC) -> None:
        """Give tensor `idx` the float value `float_name` (in `layout`): quantized with its own parameters
        when it is an 8-bit tensor, so that the next operator dequantizes exactly what TFLite stores."""
        idx = int(idx)
        layout = layout if self.rank(idx) == 4 else NHWC
        dtype = self.dtype(idx)
        q = self.quant(idx)
        if dtype in _EIGHT_BIT and q is not None:
            if not q.per_tensor:
                raise UnsupportedOperatorError(f"TFLite activation {self.tensor(idx).Name().decode(errors='replace')!r} is "
                                               f"quantized per channel; only per-tensor activations are supported")
            s, z = self.qparams(q, dtype)
            self.store(idx, layout, self.node("QuantizeLinear", [float_name, s, z], "quantize"))
        elif dtype == "float32":
            self.store(idx, layout, float_name)
            self.floats[(idx, layout)] = float_name
        else:
            raise UnsupportedOperatorError(f"TFLite tensor {self.tensor(idx).Name().decode(errors='replace')!r} of type "
                                           f"{dtype} is an operator's output; the full-integer import handles 8-bit and "
                                           f"float32 activations")

    def store(self, idx: int, layout: str, name: str) -> None:
        """Tensor `idx` is the ONNX value `name` (in `layout`), as an operator wrote it."""
        self.stored[int(idx)] = {layout: name}
        self.written[int(idx)] = (layout, name)

    def same_quant(self, a: int, b: int) -> bool:
        qa, qb = self.quant(a), self.quant(b)
        if (qa is None) != (qb is None) or self.dtype(a) != self.dtype(b):
            return False
        return qa is None or (np.array_equal(qa.scale, qb.scale) and np.array_equal(qa.zero_point, qb.zero_point))

    # ------------------------------------------------------------------ operators

    def options(self, op, cls_name: str):
        import tflite

        table = op.BuiltinOptions()
        opts = getattr(tflite, cls_name)()
        if table is not None:
            opts.Init(table.Bytes, table.Pos)
        return opts

    def activation(self, x: str, code: int) -> str:
        import tflite

        act = tflite.ActivationFunctionType
        if code == act.NONE:
            return x
        if code == act.RELU:
            return self.node("Relu", [x], "relu")
        bounds = {act.RELU6: (0.0, 6.0), act.RELU_N1_TO_1: (-1.0, 1.0)}
        if code in bounds:
            lo, hi = bounds[code]
            return self.node("Clip", [x, self.init(np.float32(lo), "lo"), self.init(np.float32(hi), "hi")], "clip")
        if code == act.TANH:
            return self.node("Tanh", [x], "tanh")
        raise UnsupportedOperatorError(f"fused activation {code} is not supported by the full-integer TFLite import")

    def same_pads(self, size: list[int], kernel: list[int], strides: list[int], dilations: list[int],
                  padding: int) -> list[int]:
        """ONNX pads [top, left, bottom, right] for TFLite's SAME (0) / VALID (1) padding."""
        import tflite

        if padding == tflite.Padding.VALID:
            return [0, 0, 0, 0]
        before, after = [], []
        for n, k, s, d in zip(size, kernel, strides, dilations):
            out = -(-n // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return before + after

    def weight(self, idx: int, transpose: list[int] | None, axis_after: int) -> str:
        """A constant weight, dequantized (per channel along `axis_after` once transposed)."""
        arr = self.constant(idx)
        if arr is None:
            raise UnsupportedOperatorError(f"TFLite weight {self.tensor(idx).Name().decode(errors='replace')!r} is not a "
                                           f"constant; the full-integer import needs constant weights")
        if transpose is not None:
            arr = arr.transpose(transpose)
        dtype = self.dtype(idx)
        q = self.quant(idx)
        w = self.init(arr, "weight")
        if dtype == "float32":
            return w
        if dtype == "float16":
            return self.node("Cast", [w], "to_float", to=1)
        if q is None:
            raise UnsupportedOperatorError(f"TFLite weight {self.tensor(idx).Name().decode(errors='replace')!r} is "
                                           f"{dtype} without quantization parameters")
        s, z = self.qparams(q, dtype)
        return self.node("DequantizeLinear", [w, s, z], "dequantize", **({} if q.per_tensor else {"axis": axis_after}))

    def bias(self, idx: int) -> str | None:
        if idx < 0:
            return None
        return self.weight(idx, None, 0)

    def conv(self, op, depthwise: bool) -> None:
        o = self.options(op, "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
        x_idx, w_idx = int(op.Inputs(0)), int(op.Inputs(1))
        b_idx = int(op.Inputs(2)) if op.InputsLength() > 2 else -1
        _, h, w_, cin = self.shape(x_idx)
        wshape = self.shape(w_idx)
        kh, kw = wshape[1], wshape[2]
        strides = [int(o.StrideH()), int(o.StrideW())]
        dil = [int(o.DilationHFactor()), int(o.DilationWFactor())]
        pads = self.same_pads([h, w_], [kh, kw], strides, dil, o.Padding())
        if x_idx in self.folded_pads:   # the PAD in front is this conv's own padding (see pad())
            x_idx, extra = self.folded_pads[x_idx]
            pads = [p + e for p, e in zip(pads, extra)]
        x = self.float_value(x_idx, NCHW)
        if depthwise:
            # [1, H, W, C*M] -> [C*M, 1, H, W]; per-channel scales are on TFLite's axis 3 -> ONNX axis 0
            wt = self.weight(w_idx, [3, 0, 1, 2], 0)
            group = cin
        else:
            wt = self.weight(w_idx, [0, 3, 1, 2], 0)   # OHWI -> OIHW
            group = 1
        inputs = [x, wt] + ([self.bias(b_idx)] if b_idx >= 0 else [])
        y = self.node("Conv", inputs, "conv", strides=strides, dilations=dil, pads=pads, group=group,
                      kernel_shape=[kh, kw])
        self.write(op.Outputs(0), self.activation(y, o.FusedActivationFunction()), NCHW)

    def fully_connected(self, op) -> None:
        o = self.options(op, "FullyConnectedOptions")
        x_idx, w_idx = int(op.Inputs(0)), int(op.Inputs(1))
        b_idx = int(op.Inputs(2)) if op.InputsLength() > 2 else -1
        out_f, in_f = self.shape(w_idx)
        if self.shape(x_idx)[-1] != in_f or self.rank(x_idx) != 2:
            x = self.float_value_as(x_idx, lambda v: self.node("Reshape", [v, self.init(np.array([-1, in_f], np.int64),
                                                                                        "shape")], "flatten"))
        else:
            x = self.float_value(x_idx, NHWC)
        y = self.node("MatMul", [x, self.weight(w_idx, [1, 0], 1)], "matmul")   # [O, I] -> [I, O]: scales on axis 1
        if b_idx >= 0:
            y = self.node("Add", [y, self.bias(b_idx)], "bias")
        y = self.activation(y, o.FusedActivationFunction())
        out_shape = self.shape(op.Outputs(0))
        if out_shape != [int(np.prod(self.shape(x_idx)) // in_f), out_f]:
            y = self.node("Reshape", [y, self.init(np.array(out_shape, np.int64), "shape")], "reshape")
        self.write(op.Outputs(0), y, NHWC)

    def pool(self, op, kind: str) -> None:
        o = self.options(op, "Pool2DOptions")
        x_idx = int(op.Inputs(0))
        _, h, w_, _ = self.shape(x_idx)
        k = [int(o.FilterHeight()), int(o.FilterWidth())]
        strides = [int(o.StrideH()), int(o.StrideW())]
        pads = self.same_pads([h, w_], k, strides, [1, 1], o.Padding())
        if x_idx in self.folded_pads:   # max pool only (see _conv_padding)
            x_idx, more = self.folded_pads[x_idx]
            pads = [p + e for p, e in zip(pads, more)]
        extra = {"count_include_pad": 0} if kind == "AveragePool" else {}
        out = int(op.Outputs(0))
        if kind == "AveragePool" and self.raw_domain(x_idx, out) and o.FusedActivationFunction() == 0:
            self.raw_op(x_idx, out, NCHW, lambda v: self.node(kind, [v], "avgpool", kernel_shape=k, strides=strides,
                                                              pads=pads, **extra))
            return
        x = self.float_value(x_idx, NCHW)
        y = self.node(kind, [x], kind.lower(), kernel_shape=k, strides=strides, pads=pads, **extra)
        self.write(out, self.activation(y, o.FusedActivationFunction()), NCHW)

    def raw_domain(self, x: int, out: int) -> bool:
        """Input and output are 8-bit with the same scale and zero point (TFLite's rule for averaging ops)."""
        return self.quantized(x) and self.quant(x).per_tensor and self.same_quant(x, out)

    def raw_op(self, x: int, out: int, layout: str, build: Callable[[str], str]) -> None:
        """An averaging operator on the stored 8-bit values themselves, rounded half away from zero as
        TFLite's integer kernels round (`(sum + count/2) / count`). In the float QDQ form the average lands
        on a rounding tie of the quantize for many elements (a quarter of a step with 2x2 windows), which
        onnxruntime and the compiled kernel may resolve differently at the last bit; here the sums are
        exact in float32 and the rounding is spelled out, so there is nothing left to resolve."""
        # (de)quantized with scale 1 and zero point 0, i.e. the stored values as floats and back: the QDQ form
        # the pipeline compiles to plain elementwise ops (an ONNX Cast to int8 imports as a wrap-around emulation)
        one = self.init(np.float32(1.0), "one")
        zero = self.init(np.zeros((), self.dtype(out)), "zero")
        v = self.node("DequantizeLinear", [self.value(x, layout), one, zero], "raw")
        y = build(v)
        half = self.node("Floor", [self.node("Add", [self.node("Abs", [y], "abs"), self.init(np.float32(0.5), "half")],
                                             "add")], "floor")
        y = self.node("Mul", [self.node("Sign", [y], "sign"), half], "round_away")
        self.store(out, layout, self.node("QuantizeLinear", [y, one, zero], "raw"))

    def common_layout(self, idxs: list[int]) -> str:
        """NCHW when a 4-D activation among the operands is in NCHW (the others are transposed to it: a
        conv chain keeps its layout through residual adds and concats), else NHWC."""
        acts = [i for i in idxs if self.rank(i) == 4 and self.constant(i) is None]
        return NCHW if any(NCHW in self.layouts(i) for i in acts) else NHWC

    def broadcast_operand(self, idx: int, layout: str, rank: int) -> str:
        """A binary operand's float value, a lower-rank constant expanded to 4-D first so that NHWC
        broadcasting (trailing channel axis) survives the move to NCHW."""
        if layout == NCHW and self.rank(idx) < rank and self.constant(idx) is not None:
            v = self.float_value(idx)
            shape = [1] * (4 - self.rank(idx)) + (self.shape(idx) or [])
            v = self.node("Reshape", [v, self.init(np.array(shape, np.int64), "shape")], "expand")
            return self.node("Transpose", [v], "transpose", perm=_TO_NCHW)
        return self.float_value(idx, layout)

    def binary(self, op, onnx_op: str, options: str | None) -> None:
        a, b = int(op.Inputs(0)), int(op.Inputs(1))
        out = int(op.Outputs(0))
        layout = self.common_layout([a, b]) if self.rank(out) == 4 else NHWC
        y = self.node(onnx_op, [self.broadcast_operand(a, layout, self.rank(out)),
                                self.broadcast_operand(b, layout, self.rank(out))], onnx_op.lower())
        if options is not None:
            y = self.activation(y, self.options(op, options).FusedActivationFunction())
        self.write(out, y, layout)

    def unary(self, op, build: Callable[[str], str]) -> None:
        x = int(op.Inputs(0))
        layout = self.prefers(x) if self.rank(x) == 4 else NHWC
        self.write(op.Outputs(0), build(self.float_value(x, layout)), layout)

    def axis_in(self, axis: int, rank: int, layout: str) -> int:
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis < rank:
            raise ModelFormatError(f"TFLite axis {axis} is out of range for a rank-{rank} tensor")
        return _NHWC_AXIS_IN_NCHW[axis] if rank == 4 and layout == NCHW else axis

    def concat(self, op) -> None:
        o = self.options(op, "ConcatenationOptions")
        idxs = [int(i) for i in op.InputsAsNumpy()]
        out = int(op.Outputs(0))
        rank = self.rank(out)
        layout = self.common_layout(idxs) if rank == 4 else NHWC
        y = self.node("Concat", [self.float_value(i, layout) for i in idxs], "concat",
                      axis=self.axis_in(int(o.Axis()), rank, layout))
        self.write(out, self.activation(y, o.FusedActivationFunction()), layout)

    def mean(self, op, onnx_op: str) -> None:
        o = self.options(op, "ReducerOptions")
        x = int(op.Inputs(0))
        axes = self.constant(int(op.Inputs(1)))
        if axes is None:
            raise UnsupportedOperatorError("a TFLite reduction over axes computed at run time is not supported")
        rank = self.rank(x)
        layout = self.prefers(x) if rank == 4 else NHWC
        keep = bool(o.KeepDims())
        if not keep and rank == 4 and layout == NCHW and sorted(self.axis_in(int(a), 4, NCHW) for a in axes.ravel()) != [2, 3]:
            layout = NHWC   # the result's axis order would differ from TFLite's: reduce in NHWC
        ax = sorted({self.axis_in(int(a), rank, layout) for a in axes.ravel()})
        y = self.node(onnx_op, [self.float_value(x, layout)], onnx_op.lower(), axes=ax, keepdims=int(keep))
        self.write(op.Outputs(0), y, layout if self.rank(op.Outputs(0)) == 4 else NHWC)

    def _conv_padding(self, op, pads: np.ndarray) -> list[int] | None:
        """[top, left, bottom, right] when this PAD only pads H and W with zeros (the zero point) for convs with
        VALID padding (how litert-torch writes a torch conv's padding): those convs then pad themselves, in
        place, and the graph keeps no Pad between two convs (one would stop the blocked layout there).

        A VALID max pool may read the PAD too (litert-torch's form of a torch max pool's padding) when no value
        of the tensor is below the padded zero, i.e. its zero point is the type's minimum (a ReLU's output): a
        zero in a window then never exceeds the window's real maximum, so the pool's own padding (which
        never wins) computes the same. Kept as a Pad, it ran in float between two layout transforms."""
        import tflite

        x, out = int(op.Inputs(0)), int(op.Outputs(0))
        graph_outputs = {int(i) for i in self.graph.OutputsAsNumpy()}
        if self.rank(x) != 4 or pads.shape != (4, 2) or np.any(pads[[0, 3]]) or np.any(pads < 0) \
                or not self.same_quant(x, out) or out in graph_outputs or op.InputsLength() > 2:
            return None
        readers = self.readers.get(out, [])
        for reader, pos in readers:
            name = self.op_names.get(_builtin_code(self.model, reader), "")
            if name == "MAX_POOL_2D" and pos == 0 and self._never_below_zero(x):
                if self.options(reader, "Pool2DOptions").Padding() != tflite.Padding.VALID:
                    return None
                continue
            if name not in ("CONV_2D", "DEPTHWISE_CONV_2D") or pos != 0:
                return None
            o = self.options(reader, "DepthwiseConv2DOptions" if name == "DEPTHWISE_CONV_2D" else "Conv2DOptions")
            if o.Padding() != tflite.Padding.VALID:
                return None
        if not readers:
            return None
        return [int(pads[1, 0]), int(pads[2, 0]), int(pads[1, 1]), int(pads[2, 1])]

    def _never_below_zero(self, idx: int) -> bool:
        """Every value tensor `idx` can hold is >= 0: 8-bit, per-tensor, zero point at the type's minimum."""
        if not self.quantized(idx):
            return False
        q = self.quant(idx)
        lowest = {"int8": -128, "uint8": 0}.get(self.dtype(idx))
        return q.per_tensor and lowest is not None and int(q.zero_point[0]) == lowest

    def pad(self, op) -> None:
        x = int(op.Inputs(0))
        pads = self.constant(int(op.Inputs(1)))
        if pads is None:
            raise UnsupportedOperatorError("a TFLite PAD with paddings computed at run time is not supported")
        folded = self._conv_padding(op, pads.reshape(-1, 2))
        if folded is not None:
            self.folded_pads[int(op.Outputs(0))] = (x, folded)
            return
        rank = self.rank(x)
        layout = self.prefers(x) if rank == 4 else NHWC
        pads = pads.reshape(rank, 2).astype(np.int64)
        if rank == 4 and layout == NCHW:
            pads = pads[_TO_NCHW]
        inputs = [self.float_value(x, layout), self.init(np.concatenate([pads[:, 0], pads[:, 1]]), "pads")]
        if op.InputsLength() > 2 and int(op.Inputs(2)) >= 0:   # PADV2: the constant value
            v = self.float_value(int(op.Inputs(2)))
            inputs.append(self.node("Reshape", [v, self.init(np.array([], np.int64), "shape")], "scalar"))
        self.write(op.Outputs(0), self.node("Pad", inputs, "pad", mode="constant"), layout)

    def reshape(self, op) -> None:
        x, out = int(op.Inputs(0)), int(op.Outputs(0))
        shape = self.init(np.array(self.shape(out), np.int64), "shape")
        if self.same_quant(x, out):
            self.store(out, NHWC, self.node("Reshape", [self.value(x, NHWC), shape], "reshape"))
        else:
            self.write(out, self.node("Reshape", [self.float_value(x, NHWC), shape], "reshape"), NHWC)

    def transpose(self, op) -> None:
        x, out = int(op.Inputs(0)), int(op.Outputs(0))
        perm = self.constant(int(op.Inputs(1)))
        if perm is None:
            raise UnsupportedOperatorError("a TFLite TRANSPOSE with a permutation computed at run time is not supported")
        perm = [int(p) for p in perm.ravel()]
        if self.rank(x) == 4 and self.rank(out) == 4 and [perm[p] for p in _TO_NCHW] == [0, 1, 2, 3] \
                and self.same_quant(x, out):
            # NCHW -> NHWC (litert-torch's first op): the input as it is *is* the output in NCHW
            self.store(out, NCHW, self.value(x, NHWC))
            return
        if self.same_quant(x, out):
            self.store(out, NHWC, self.node("Transpose", [self.value(x, NHWC)], "transpose", perm=perm))
        else:
            self.write(out, self.node("Transpose", [self.float_value(x, NHWC)], "transpose", perm=perm), NHWC)

    def softmax(self, op) -> None:
        beta = float(self.options(op, "SoftmaxOptions").Beta())
        x = int(op.Inputs(0))
        rank = self.rank(x)
        layout = self.prefers(x) if rank == 4 else NHWC
        v = self.float_value(x, layout)
        if beta != 1.0:
            v = self.node("Mul", [v, self.init(np.float32(beta), "beta")], "beta")
        self.write(op.Outputs(0), self.node("Softmax", [v], "softmax", axis=self.axis_in(-1, rank, layout)), layout)

    def resize(self, op, nearest: bool) -> None:
        o = self.options(op, "ResizeNearestNeighborOptions" if nearest else "ResizeBilinearOptions")
        x, out = int(op.Inputs(0)), int(op.Outputs(0))
        n, oh, ow, c = self.shape(out)
        if o.AlignCorners():
            mode, nearest_mode = "align_corners", "round_prefer_ceil"
        elif o.HalfPixelCenters():
            mode, nearest_mode = ("tf_half_pixel_for_nn", "floor") if nearest else ("half_pixel", "floor")
        else:
            mode, nearest_mode = "asymmetric", "floor"
        sizes = self.init(np.array([n, c, oh, ow], np.int64), "sizes")
        extra = {"nearest_mode": nearest_mode} if nearest else {}

        def resize(v: str) -> str:
            return self.node("Resize", [v, "", "", sizes], "resize", mode="nearest" if nearest else "linear",
                             coordinate_transformation_mode=mode, **extra)

        if nearest:
            # picks stored values: the rows and columns TFLite picks, computed here as it computes them (an ONNX
            # Resize divides by the float scale where TFLite multiplies: a 14 -> 8 downscale picked other rows)
            _, ih, iw, _ = self.shape(x)
            rows = _nearest_indices(ih, oh, bool(o.AlignCorners()), bool(o.HalfPixelCenters()))
            cols = _nearest_indices(iw, ow, bool(o.AlignCorners()), bool(o.HalfPixelCenters()))
            src = self.value(x, NCHW) if self.same_quant(x, out) else self.float_value(x, NCHW)
            y = self.node("Gather", [src, self.init(rows, "rows")], "rows", axis=2)
            y = self.node("Gather", [y, self.init(cols, "cols")], "cols", axis=3)
            if self.same_quant(x, out):
                self.store(out, NCHW, y)
            else:
                self.write(out, y, NCHW)
        elif self.raw_domain(x, out):
            self.raw_op(x, out, NCHW, resize)
        else:
            self.write(out, resize(self.float_value(x, NCHW)), NCHW)

    def prelu(self, op) -> None:
        x, alpha = int(op.Inputs(0)), int(op.Inputs(1))
        layout = self.prefers(x) if self.rank(x) == 4 else NHWC
        a = self.broadcast_operand(alpha, layout, self.rank(x))
        self.write(op.Outputs(0), self.node("PRelu", [self.float_value(x, layout), a], "prelu"), layout)

    def float_value_as(self, idx: int, move: Callable[[str], str]) -> str:
        """The float value of tensor `idx` (TFLite layout) moved by `move` (a reshape or transpose). A per-tensor
        quantized tensor is moved as stored, before its dequantize, so that a matmul reading the result still
        reads a dequantize directly (the form the integer rewrite turns into an 8-bit x 8-bit kernel)."""
        q = self.quant(idx)
        if self.quantized(idx) and q.per_tensor:
            s, z = self.qparams(q, self.dtype(idx))
            return self.node("DequantizeLinear", [move(self.value(idx, NHWC)), s, z], "dequantize")
        return move(self.float_value(idx, NHWC))

    def last_two_swapped(self, idx: int) -> str:
        """The float value of a tensor with its last two axes swapped (a matmul operand's adjoint)."""
        rank = self.rank(idx)
        if rank < 2:
            raise ModelFormatError(f"TFLite BATCH_MATMUL operand {self.tensor(idx).Name().decode(errors='replace')!r} has "
                                   f"rank {rank}; it needs at least 2")
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        return self.float_value_as(idx, lambda v: self.node("Transpose", [v], "adjoint", perm=perm))

    def batch_matmul(self, op) -> None:
        o = self.options(op, "BatchMatMulOptions")
        a, b = int(op.Inputs(0)), int(op.Inputs(1))
        x = self.last_two_swapped(a) if o.AdjX() else self.float_value(a, NHWC)
        y = self.last_two_swapped(b) if o.AdjY() else self.float_value(b, NHWC)
        self.write(op.Outputs(0), self.node("MatMul", [x, y], "batch_matmul"), NHWC)

    def gather(self, op) -> None:
        o = self.options(op, "GatherOptions")
        params, indices, out = int(op.Inputs(0)), int(op.Inputs(1)), int(op.Outputs(0))
        if int(o.BatchDims()) != 0:
            raise UnsupportedOperatorError(f"a TFLite GATHER with batch_dims {int(o.BatchDims())} is not supported "
                                           f"(batch_dims 0 is)")
        if self.dtype(indices) not in ("int32", "int64"):
            raise UnsupportedOperatorError(f"a TFLite GATHER with {self.dtype(indices)} indices is not supported "
                                           f"(int32 or int64 are)")
        axis = self.axis_in(int(o.Axis()), self.rank(params), NHWC)
        ids = self.value(indices, NHWC)
        if self.same_quant(params, out):   # picks stored values: no requantization (TFLite copies the bytes)
            self.store(out, NHWC, self.node("Gather", [self.value(params, NHWC), ids], "gather", axis=axis))
        else:
            self.write(out, self.node("Gather", [self.float_value(params, NHWC), ids], "gather", axis=axis), NHWC)

    def convert_op(self, op) -> None:
        name = self.op_names.get(_builtin_code(self.model, op), "?")
        handler = _HANDLERS[name]
        handler(self, op)

    # ------------------------------------------------------------------ the graph

    def run(self):
        import onnx
        from onnx import helper

        graph = self.graph
        unsupported: dict[str, int] = {}
        for i in range(graph.OperatorsLength()):
            name = self.op_names.get(_builtin_code(self.model, graph.Operators(i)), "?")
            if name not in _HANDLERS:
                unsupported[name] = unsupported.get(name, 0) + 1
        if unsupported:
            names = ", ".join(f"{k} (x{v})" if v > 1 else k for k, v in sorted(unsupported.items()))
            raise UnsupportedOperatorError(
                f"the full-integer TFLite import does not support {names}; supported: {', '.join(sorted(SUPPORTED))}")
        if self.model.SubgraphsLength() != 1:
            raise UnsupportedOperatorError(f"the full-integer TFLite import handles one subgraph; this model has "
                                           f"{self.model.SubgraphsLength()} (control flow or resource variables)")
        inputs = []
        for idx in graph.InputsAsNumpy():
            idx = int(idx)
            t_name = self.tensor(idx).Name().decode()
            shape = list(self.input_shapes.get(t_name, self.shape(idx)))
            if shape != self.shape(idx):
                raise UnsupportedOperatorError(
                    f"the full-integer TFLite import keeps the model's own input shapes ({t_name}: {self.shape(idx)}); "
                    f"--input-shape {t_name}={','.join(map(str, shape))} would need a re-quantized model")
            inputs.append(helper.make_tensor_value_info(t_name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype(idx))),
                                                        shape))
            self.stored[idx] = {NHWC: t_name}
        for i in range(graph.OperatorsLength()):
            self.convert_op(graph.Operators(i))
        outputs = []
        for idx in graph.OutputsAsNumpy():
            idx = int(idx)
            t_name = self.tensor(idx).Name().decode()
            v = self.value(idx, NHWC)
            self.nodes.append(helper.make_node("Identity", [v], [t_name], name=f"output_{t_name}"))
            outputs.append(helper.make_tensor_value_info(
                t_name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype(idx))), self.shape(idx)))
        g = helper.make_graph(self.nodes, "tflite_int8", inputs, outputs, self.initializers)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="autoglm-tflite-int8")
        model.ir_version = 8
        graph_inputs = {int(i) for i in graph.InputsAsNumpy()}
        written: dict[int, tuple[str, str]] = {}
        names_seen = {self.stored[i][NHWC] for i in graph_inputs}
        for idx, (layout, name) in self.written.items():
            if name not in names_seen:   # an alias of another tensor's value is checked through that tensor
                names_seen.add(name)
                written[idx] = (layout, name)
        return QdqConversion(model, written, {idx: self._op_of(idx) for idx in written})

    def _op_of(self, idx: int) -> str:
        for i in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(i)
            if idx in {int(o) for o in op.OutputsAsNumpy()}:
                return f"{self.op_names.get(_builtin_code(self.model, op), '?')} #{i}"
        return "?"


@dataclass
class QdqConversion:
    """The QDQ ONNX model of a full-integer TFLite model, and which ONNX value holds each tensor an
    operator wrote (for the per-operator check against LiteRT)."""

    model: Any                              # onnx.ModelProto
    written: dict[int, tuple[str, str]]     # TFLite tensor index -> (layout, ONNX value name)
    producers: dict[int, str]               # TFLite tensor index -> "OPERATOR #index" that wrote it

    def forced_model(self):
        """The model with every written tensor cut loose from its consumers: each operator reads its
        inputs from new graph inputs (`forced:<tensor>`) and its output is a graph output, so one run
        computes every operator on inputs given from elsewhere (LiteRT's own intermediate tensors)."""
        import onnx
        from onnx import helper

        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        rename = {name: f"forced:{idx}" for idx, (_, name) in self.written.items()}
        dtypes = {}
        for node in m.graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
        inferred = onnx.shape_inference.infer_shapes(self.model)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            dtypes[vi.name] = vi.type.tensor_type.elem_type
        for idx, (_, name) in self.written.items():
            m.graph.input.append(helper.make_tensor_value_info(rename[name], dtypes[name], None))
            m.graph.output.append(helper.make_tensor_value_info(name, dtypes[name], None))
        return m


def _nearest_indices(in_size: int, out_size: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """The input index TFLite's RESIZE_NEAREST_NEIGHBOR reads for each output index (its float32 arithmetic,
    rounding half away from zero with align_corners)."""
    f32 = np.float32
    scale = f32(in_size - 1) / f32(out_size - 1) if align_corners and out_size > 1 else f32(in_size) / f32(out_size)
    pos = (np.arange(out_size, dtype=f32) + f32(0.5 if half_pixel else 0.0)) * scale
    idx = np.sign(pos) * np.floor(np.abs(pos) + f32(0.5)) if align_corners else np.floor(pos)
    idx = np.minimum(idx.astype(np.int64), in_size - 1)
    return np.maximum(idx, 0) if half_pixel else idx


def _quantize_op(conv: _Converter, op) -> None:
    x, out = int(op.Inputs(0)), int(op.Outputs(0))
    layout = conv.prefers(x) if conv.rank(x) == 4 else NHWC
    conv.write(out, conv.float_value(x, layout), layout)   # float -> 8-bit, or a requantize 8-bit -> 8-bit


def _dequantize_op(conv: _Converter, op) -> None:
    x, out = int(op.Inputs(0)), int(op.Outputs(0))
    layout = conv.prefers(x) if conv.rank(x) == 4 else NHWC
    conv.write(out, conv.float_value(x, layout), layout)


def _act(onnx_op: str, **attrs):
    return lambda c, op: c.unary(op, lambda x: c.node(onnx_op, [x], onnx_op.lower(), **attrs))


def _clip(lo: float, hi: float):
    return lambda c, op: c.unary(op, lambda x: c.node(
        "Clip", [x, c.init(np.float32(lo), "lo"), c.init(np.float32(hi), "hi")], "clip"))


def _leaky_relu(c: _Converter, op) -> None:
    alpha = float(c.options(op, "LeakyReluOptions").Alpha())
    c.unary(op, lambda x: c.node("LeakyRelu", [x], "leaky_relu", alpha=alpha))


def _squeeze(c: _Converter, op) -> None:
    c.reshape(op)


_HANDLERS: dict[str, Callable[[_Converter, Any], None]] = {
    "CONV_2D": lambda c, op: c.conv(op, depthwise=False),
    "DEPTHWISE_CONV_2D": lambda c, op: c.conv(op, depthwise=True),
    "FULLY_CONNECTED": _Converter.fully_connected,
    "BATCH_MATMUL": _Converter.batch_matmul,
    "GATHER": _Converter.gather,
    "AVERAGE_POOL_2D": lambda c, op: c.pool(op, "AveragePool"),
    "MAX_POOL_2D": lambda c, op: c.pool(op, "MaxPool"),
    "ADD": lambda c, op: c.binary(op, "Add", "AddOptions"),
    "SUB": lambda c, op: c.binary(op, "Sub", "SubOptions"),
    "MUL": lambda c, op: c.binary(op, "Mul", "MulOptions"),
    "MAXIMUM": lambda c, op: c.binary(op, "Max", None),
    "MINIMUM": lambda c, op: c.binary(op, "Min", None),
    "CONCATENATION": _Converter.concat,
    "MEAN": lambda c, op: c.mean(op, "ReduceMean"),
    "REDUCE_MAX": lambda c, op: c.mean(op, "ReduceMax"),
    "PAD": _Converter.pad,
    "PADV2": _Converter.pad,
    "RESHAPE": _Converter.reshape,
    "SQUEEZE": _squeeze,
    "EXPAND_DIMS": _squeeze,
    "TRANSPOSE": _Converter.transpose,
    "SOFTMAX": _Converter.softmax,
    "RESIZE_NEAREST_NEIGHBOR": lambda c, op: c.resize(op, nearest=True),
    "RESIZE_BILINEAR": lambda c, op: c.resize(op, nearest=False),
    "PRELU": _Converter.prelu,
    "QUANTIZE": _quantize_op,
    "DEQUANTIZE": _dequantize_op,
    "RELU": _act("Relu"),
    "RELU6": _clip(0.0, 6.0),
    "RELU_N1_TO_1": _clip(-1.0, 1.0),
    "LOGISTIC": _act("Sigmoid"),
    "TANH": _act("Tanh"),
    "HARD_SWISH": _act("HardSwish"),
    "LEAKY_RELU": _leaky_relu,
}
SUPPORTED = frozenset(_HANDLERS)


def to_qdq_onnx(model, buf: bytes, input_shapes: dict[str, tuple[int, ...]] | None = None) -> QdqConversion:
    """The ONNX QDQ model computing what the quantized TFLite `model` (read from `buf`) computes."""
    return _Converter(model, buf, input_shapes or {}).run()


# An operator of the QDQ graph, given LiteRT's own inputs, may round a requantization (or an average,
# a bilinear weight) the other way: LiteRT's kernels use fixed-point multipliers, XNNPACK's even 8-bit
# ones (measured on generated graphs: QUANTIZE, AVERAGE_POOL_2D, RESIZE_BILINEAR 1 step apart on 1-15% of
# the elements; convs, depthwise convs, adds, concats, pools exact). A conversion error is many steps off.
OPERATOR_STEPS = 1


def _step(graph, idx: int, conversion: QdqConversion) -> float:
    """One quantization step of tensor `idx` in its own units: 1 for 8-bit values; for a float output of a
    DEQUANTIZE (or any float tensor) the scale of the quantized tensor it came from (else a tiny float step)."""
    t = graph.Tensors(idx)
    if _quant(t) is not None and _DTYPES.get(_tensor_type_names().get(t.Type())) in _EIGHT_BIT:
        return 1.0
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if idx in {int(o) for o in op.OutputsAsNumpy()} and op.InputsLength():
            q = _quant(graph.Tensors(int(op.Inputs(0))))
            if q is not None:
                return float(q.scale.max())
    return 1e-5


def check_operators_against_litert(tflite_path, conversion: QdqConversion, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every operator of the QDQ graph against LiteRT's integer kernels, each fed LiteRT's own inputs (so a
    step of rounding one operator does not travel on): per operator, the largest difference in output steps."""
    import onnxruntime as ort
    import tflite

    from .reference import tflite_interpreter_class
    from .native_stderr import quiet_native_stderr

    Interpreter = tflite_interpreter_class()
    with quiet_native_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "intended for debugging purposes only": it is what this check needs
        # every intermediate tensor kept (LiteRT's built-in integer kernels then run the whole graph)
        interp = Interpreter(model_path=str(tflite_path), experimental_preserve_all_tensors=True)
        interp.allocate_tensors()
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], inputs[d["name"]])
        interp.invoke()
    model = tflite.Model.GetRootAsModel(open(tflite_path, "rb").read(), 0)
    graph = model.Subgraphs(0)
    feeds = dict(inputs)
    litert: dict[int, np.ndarray] = {}
    for idx, (layout, _) in conversion.written.items():
        v = interp.get_tensor(idx)
        litert[idx] = v
        feeds[f"forced:{idx}"] = v.transpose(_TO_NCHW) if layout == NCHW and v.ndim == 4 else v
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(conversion.forced_model().SerializeToString(), opts, providers=["CPUExecutionProvider"])
    wanted = {name: idx for idx, (_, name) in conversion.written.items()}
    names = [o.name for o in sess.get_outputs() if o.name in wanted]
    results = dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})))
    worst, worst_op, exact = 0.0, None, 0
    for name, idx in wanted.items():
        layout = conversion.written[idx][0]
        ours = results[name]
        if layout == NCHW and ours.ndim == 4:
            ours = ours.transpose(_TO_NHWC)
        step = _step(graph, idx, conversion)
        diff = float(np.abs(ours.astype(np.float64) - litert[idx].astype(np.float64)).max(initial=0.0)) / step
        exact += diff == 0
        if diff > worst:
            worst, worst_op = diff, conversion.producers[idx]
    return {"operators": len(wanted), "exact": int(exact), "max_steps": round(worst, 3), "worst_operator": worst_op,
            "passed": worst <= OPERATOR_STEPS + 1e-6, "tolerance_steps": OPERATOR_STEPS,
            "how": "each operator of the QDQ graph (onnxruntime, as written) fed LiteRT's own intermediate tensors"}
