"""QDQ -> integer operators: the Relax rewrites that make quantized models compute in 8-bit integers.

A QDQ model (onnxruntime's `quantize_static`, NNCF, Quark, or `compile --int8`) imports into Relax
as `dequantize(q) -> conv2d/matmul -> quantize` chains whose arithmetic is float32. Two passes:

1. `QdqElementwise` (before the blocked-layout passes): every per-tensor quantize / dequantize of
   an activation becomes plain elementwise ops (`round(x * (1/s)) + z` clamped and cast;
   `float(q - z) * s`): TVM's own lowering, but for the reciprocal (a division per output costs
   more than a small integer conv; it moves a value by one step only at a rounding tie). Layout conversion sees
   through them (quantize/dequantize have no layout inference: each would sit between two layout
   transforms) and fusion puts them into the neighbouring kernels. A requantization around data
   movement, `quantize(M(dequantize(q, s, z)), s, z)` for M a reshape, transpose, split, squeeze...
   (onnxruntime's QDQ format quantizes around each), is `M(q)` bit for bit: the move is done on the
   8-bit tensor (a transformer's head split/merge: a quarter of the bytes, no float round trip).
2. `IntegerOps` (after the layout passes, before legalization) rewrites

       conv2d(dequant(xq, sx, zx), [layout_transform](dequantize(Wq, sw, 0)))     NCHW or NCHW[x]c
       matmul(dequant(xq, sx, zx), [permute_dims](dequantize(Wq, sw, 0)))

   (activations per-tensor, constant weights symmetric per-tensor or per output channel) into

       acc = conv2d_int(xq padded with zx, Wq) -> int32        8-bit x 8-bit, int32 accumulation
       y   = float(acc - zx * sum(Wq)) * (sx * sw)             zero-point correction precomputed

   The float graph pads with 0.0, which is `zx` in the quantized domain, so the padding is the zero
   point and `zx * sum(W)` is one constant per output channel. Blocked convs get the toolkit's
   8-bit NCHW[x]c computes (`compile/layout.py`), weights repacked here at compile time; NCHW ones
   Relax's integer conv2d. Bias, activation clamps and the next quantize stay as they are and
   fuse into the integer kernel's epilogue: requantization by a float scale, one multiply per
   output on these CPUs.

   A matmul of two per-tensor quantized activations (attention's Q.K^T and softmax.V, any batch
   dims) becomes an integer batch-matmul with the zero points corrected at run time:

       sum_k (a - za)(b - zb) = sum_k a b' - (zb - t) sum_k a - za (sum_k b' + K (t - zb)),   b' = b - t

   t = 128 for uint8 b (b' is then the signed operand of vpdpbusd; 0 for int8). b is packed at run
   time into the dense weights' layout (`pack_int8`; a transpose of b, K^T, is read in place, not
   materialised); the row sums of a come from a small vectorised kernel (`row_sums_int8`), the
   column sums of b' from a dot product of a row of ones with the packed operand. Each term is
   dropped when its zero point makes it 0 (softmax outputs have za = 0).

   Then (`FloatRequantize`) a requantization whose 8-bit tensor only feeds float ops again (a QDQ
   GELU or attention scaling requantizes after every op) stays in float, `clamp(round(x/s) + z) - z`,
   without the four conversions to 8 bits and back: the same values, bit for bit.

`Int8Report` says what became integer and what stayed float (and why), for the manifest and
`compile --explain`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FloatRequantize", "Int8Report", "IntegerOps", "QdqElementwise", "is_quantized"]

CONV = "relax.nn.conv2d"
MATMUL = "relax.matmul"
QUANTIZE = "relax.quantize"
DEQUANTIZE = "relax.dequantize"
PERMUTE = "relax.permute_dims"
LAYOUT_TRANSFORM = "relax.layout_transform"
EIGHT_BIT = ("uint8", "int8")


@dataclass
class Int8Report:
    """What the rewrite did: integer operators made, and the compute operators left in float."""

    integer_ops: dict[str, int] = field(default_factory=dict)
    float_ops: dict[str, str] = field(default_factory=dict)  # "conv2d #3" -> why it stayed float
    _seen: dict[str, int] = field(default_factory=dict)

    def integer(self, kind: str) -> None:
        self._seen[kind] = self._seen.get(kind, 0) + 1
        self.integer_ops[kind] = self.integer_ops.get(kind, 0) + 1

    def float(self, kind: str, why: str) -> None:
        self._seen[kind] = self._seen.get(kind, 0) + 1
        self.float_ops[f"{kind} #{self._seen[kind]}"] = why

    def to_json(self) -> dict[str, Any]:
        return {"integer_ops": dict(self.integer_ops), "float_ops": dict(self.float_ops)}


def _const_value(expr) -> np.ndarray | None:
    import tvm

    if isinstance(expr, tvm.ir.GenericConst) and hasattr(expr.value, "numpy"):
        return expr.value.numpy()
    return None


def _op_name(expr) -> str:
    return str(getattr(getattr(expr, "op", None), "name", ""))


def _scalar(expr) -> float | None:
    v = _const_value(expr)
    return None if v is None or v.size != 1 else v.reshape(()).item()


def _bound_value(mutator, expr, steps: int = 64):
    """What a dataflow variable is bound to in `mutator`'s output (every call is bound to a var in a
    dataflow block); `expr` itself for a function parameter or a non-variable."""
    from tvm import relax

    for _ in range(steps):
        if not isinstance(expr, relax.Var):
            break
        try:
            value = mutator.lookup_binding(expr)
        except Exception:  # noqa: BLE001 - a function parameter has no binding
            value = None
        if value is None:
            break
        expr = value
    return expr


def _dequantized(mutator, expr) -> tuple[Any, float, int] | str:
    """(q, s, z) where `expr` is `float(astype(q, int32) [- z]) * s` (QdqElementwise's dequantize of an
    8-bit tensor, s and z per-tensor constants), else why not."""
    from tvm import relax

    def call(e, name: str):
        e = _bound_value(mutator, e)
        return e if isinstance(e, relax.Call) and _op_name(e) == name else None

    mul = call(expr, "relax.multiply")
    if mul is None:
        return "its input is not a dequantized 8-bit tensor"
    s = _scalar(mul.args[1])
    to_float = call(mul.args[0], "relax.astype")
    if s is None or to_float is None:
        return "its input is not a per-tensor dequantized 8-bit tensor"
    inner, z = to_float.args[0], 0
    sub = call(inner, "relax.subtract")
    if sub is not None:
        zv = _scalar(sub.args[1])
        if zv is None:
            return "its input's zero point is not a constant"
        inner, z = sub.args[0], int(zv)
    widen = call(inner, "relax.astype")
    if widen is None or str(widen.args[0].ty.dtype) not in EIGHT_BIT:
        return "its input is not a dequantized 8-bit tensor"
    return widen.args[0], float(s), z


# Ops that only move or regroup values: quantize(M(dequantize(q, s, z)), s, z) is M(q) bit for bit
# (|float(q - z) * s * (1/s) - (q - z)| stays ~1e-4 below a rounding step for any 8-bit q)
MOVEMENT = ("relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.flatten",
            "relax.split")
# Ops that commute with a dequantize (increasing in its input): max pooling picks the same element of the
# 8-bit tensor as of its float value (its padding, the dtype's minimum, never wins). ResNet18 int8: the
# stem's output stayed float for its max pool, which padded and pooled 3.2 MB of float (0.43 ms).
MONOTONIC = ("relax.nn.max_pool2d",)


def _then_cleaned(rewrite):
    """`rewrite`, then its leftovers cleaned: bindings nothing uses any more removed and aliases (`y = x`,
    a rewrite that returns an existing tensor) resolved.

    Until then the old operands' chains (a dequantize the integer op no longer reads) count as
    consumers and an alias as an op: FuseOps stops an epilogue there, which left a scale multiply as
    a kernel of its own (ResNet18's stem, 25 us)."""
    import tvm
    from tvm import relax

    canonicalize = relax.transform.CanonicalizeBindings()

    @tvm.transform.module_pass(opt_level=0, name=f"{rewrite.info.name}+Cleanup")
    def _pass(mod, _ctx):
        mod = canonicalize(rewrite(mod))
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                mod[gv] = relax.analysis.remove_all_unused(func)
        return mod

    return _pass


def QdqElementwise():  # noqa: N802 - a pass constructor
    """Per-tensor quantize / dequantize of activations as elementwise ops (see the module doc, 1)."""
    from tvm import relax

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def __init__(self, mod=None):
            super().__init__(mod)
            self._moved: dict = {}  # a movement op's var -> the same op replayed on the 8-bit tensor

        def _requantized_movement(self, call):
            """`quantize(M(dequantize(q, s, z)), s, z)` -> `M(q)` for data movement M (reshape, transpose,
            split, squeeze...) and max pooling (MONOTONIC): a QDQ graph quantizes around each (onnxruntime's QDQ format does), and as
            float ops each would be its own dequantize-move-quantize kernel over the tensor; None if not that."""
            steps = []
            var = call.args[0]
            while isinstance(var, relax.Var):
                value = _bound_value(self, var, steps=1)
                if isinstance(value, relax.TupleGetItem):
                    steps.append((var, value))
                    var = value.tuple_value
                elif isinstance(value, relax.Call) and _op_name(value) in MOVEMENT + MONOTONIC:
                    steps.append((var, value))
                    var = value.args[0]
                else:
                    break
            if not steps:
                return None
            src = _dequantized(self, var)
            if isinstance(src, str):
                return None
            q, s, z = src
            s_out, z_out = _scalar(call.args[1]), _scalar(call.args[2])
            if (str(q.ty.dtype) != str(call.attrs.out_dtype) or s_out is None or z_out is None
                    or np.float32(s_out) != np.float32(s) or int(z_out) != z or not 1e-30 < abs(s) < 1e30):
                return None
            out = q
            for step_var, value in reversed(steps):
                if step_var in self._moved:
                    out = self._moved[step_var]
                    continue
                if isinstance(value, relax.TupleGetItem):
                    moved = relax.TupleGetItem(out, value.index)
                else:
                    moved = relax.Call(value.op, [out, *value.args[1:]], value.attrs)
                # bound once (a split's outputs are three quantizes that share its replay)
                out = self._moved[step_var] = self.builder_.emit(moved)
            return out

        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            name = _op_name(call)
            if name not in (QUANTIZE, DEQUANTIZE):
                return call
            if name == QUANTIZE:
                moved = self._requantized_movement(call)
                if moved is not None:
                    return moved
            x = call.args[0]
            s, z = _scalar(call.args[1]), _scalar(call.args[2])
            if s is None or z is None or _const_value(x) is not None:
                return call  # per-channel (weights) or constant: folded at compile time as it is
            dtype = str(call.attrs.out_dtype)
            if name == QUANTIZE:
                if str(x.ty.dtype) != "float32" or dtype not in EIGHT_BIT:
                    return call
                lo, hi = (0.0, 255.0) if dtype == "uint8" else (-128.0, 127.0)
                # x * (1/s), not x / s: a division per output costs more than the integer conv itself on
                # small layers; the two differ only where x / s is within an ulp of a rounding tie
                q = relax.op.round(relax.op.multiply(x, relax.const(np.float32(1.0) / np.float32(s), "float32")))
                if z:
                    q = relax.op.add(q, relax.const(float(z), "float32"))
                # maximum/minimum, not clip: layout conversion propagates through them
                q = relax.op.minimum(relax.op.maximum(q, relax.const(lo, "float32")), relax.const(hi, "float32"))
                return relax.op.astype(q, dtype)
            if str(x.ty.dtype) not in EIGHT_BIT or dtype != "float32":
                return call
            d = relax.op.astype(x, "int32")
            if z:
                d = relax.op.subtract(d, relax.const(int(z), "int32"))
            return relax.op.multiply(relax.op.astype(d, "float32"), relax.const(s, "float32"))

    from .relax_passes import mutator_pass

    return _then_cleaned(mutator_pass(_Rewrite, "AutoglmQdqElementwise"))


_BLOCKED_KERNEL = re.compile(r"^OIHW(\d+)i(\d+)o$")


def _pack_kernel(w: np.ndarray, layout: str) -> np.ndarray | None:
    """OIHW -> the blocked kernel layout OIHW[ib]i[ob]o ([O/ob, I/ib, H, W, ib, ob]); None if not that."""
    m = _BLOCKED_KERNEL.match(layout)
    if layout == "OIHW":
        return w
    if m is None:
        return None
    ib, ob = int(m.group(1)), int(m.group(2))
    o, i, h, k = w.shape
    if o % ob or i % ib:
        return None
    return np.ascontiguousarray(w.reshape(o // ob, ob, i // ib, ib, h, k).transpose(0, 2, 4, 5, 3, 1))


def _pairs_overflow_int16(dot4: np.ndarray) -> bool:
    """Whether u8 x s8 products of adjacent weight pairs (the last axis, 4 per lane) can leave int16:
    `vpmaddubsw` would saturate them (weights quantized with reduce_range never do)."""
    w = np.abs(dot4.astype(np.int32))
    return bool((255 * (w[..., 0::2] + w[..., 1::2])).max(initial=0) > 32767)


def dense_int8(data, packed, wide: bool = False, name: str = "dense_int8"):
    """out[..., m, n] = sum_k data[..., m, k] * W[k, n], W read as `packed` [N/L, K/4, L, 4] (see IntegerOps):
    per output lane 4 adjacent products, the operand of the 4-way integer dot products. A run-time B
    (`pack_int8`, a batch-matmul of two activations) has the leading dims of `data` before those four."""
    from tvm import te

    from .layout import DOT, _product

    nb, k4_n, lanes, _ = (int(d) for d in packed.shape[-4:])
    batch = len(packed.shape) - 4
    *lead, m = (d for d in data.shape[:-1])
    k4 = te.reduce_axis((0, k4_n), "k4")
    k = te.reduce_axis((0, DOT), "k")

    def acc(*i):
        b = packed[(*i[len(i) - 2 - batch:len(i) - 2], i[-1] // lanes, k4, i[-1] % lanes, k)]
        return te.sum(_product(data[(*i[:-1], k4 * DOT + k)], b, "int32"), axis=[k4, k])

    return te.compute((*lead, m, nb * lanes), acc, name=f"{name}_wide" if wide else name)


def pack_int8(b, lanes: int, transposed: bool, shift: int):
    """A run-time 8-bit B operand [..., K, N] ([..., N, K] if `transposed`) in `dense_int8`'s layout
    [..., N/L, K/4, L, 4], as int8 `b - shift` (128: uint8 becomes the signed operand of vpdpbusd).
    The block's name says the source layout (`pack_int8_kn` / `pack_int8_nk`) to the schedule."""
    from tvm import te

    from .layout import DOT

    *lead, rows, cols = (int(d) for d in b.shape)
    k_dim, n = (cols, rows) if transposed else (rows, cols)

    def value(*i):
        *ld, nb, k4, lane, j = i
        v = b[(*ld, nb * lanes + lane, k4 * DOT + j)] if transposed else b[(*ld, k4 * DOT + j, nb * lanes + lane)]
        return (v.astype("int32") - shift).astype("int8") if shift else v.astype("int8")

    return te.compute((*lead, n // lanes, k_dim // DOT, lanes, DOT), value,
                      name="pack_int8_nk" if transposed else "pack_int8_kn")


def row_sums_int8(x, coef: int, lanes: int):
    """coef * sum_k x[..., r, k] as int32 [..., R, 1] (zero-point corrections): partial sums of `lanes`
    adjacent columns first (`row_sums_int8_part`, contiguous vector adds), then across the lanes."""
    from tvm import te

    *lead, rows, k_dim = (int(d) for d in x.shape)
    v_n = lanes if lanes > 1 and k_dim % lanes == 0 else 1
    ko = te.reduce_axis((0, k_dim // v_n), "ko")
    part = te.compute((*lead, rows, v_n), lambda *i: te.sum(x[(*i[:-1], ko * v_n + i[-1])].astype("int32"), axis=ko),
                      name="row_sums_int8_part")
    v = te.reduce_axis((0, v_n), "v")
    sums = te.compute((*lead, rows, 1), lambda *i: te.sum(part[(*i[:-1], v)], axis=v), name="row_sums_int8")
    return te.compute(sums.shape, lambda *i: sums[i] * coef, name="row_sums_int8_coef") if coef != 1 else sums


def _swaps_last_two(permute) -> bool:
    """Whether a permute_dims only swaps its input's last two axes (a matrix transpose, batched or not)."""
    n = len(permute.args[0].ty.shape)
    axes = permute.attrs.axes
    if axes is None:
        return n == 2
    return n >= 2 and [int(a) for a in axes] == [*range(n - 2), n - 1, n - 2]


def IntegerOps(report: Int8Report | None = None, lanes: int | None = None,  # noqa: N802 - a pass constructor
               unsigned_activations: bool = False):
    """Dequantize -> conv2d / matmul chains to integer operators (see the module doc, 2).

    `lanes`: the target's int32 vector width; dense layers and batch-matmuls then get the packed
    `dense_int8` compute (without: Relax's integer matmul). `unsigned_activations`: the target's dot
    product multiplies u8 by s8 (x86): an int8 activation of a conv or dense layer is moved up by 128, its
    zero point with it (the same values), so int8-activation models (full-integer TFLite, QInt8 QDQ) run
    on it too instead of on widening multiplies."""
    import tvm
    from tvm import relax

    from .layout import DOT, conv_nchwc_int8, depthwise_nchwc

    rep = report if report is not None else Int8Report()

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def _bound(self, expr):
            return _bound_value(self, expr)

        def _call(self, expr, name: str):
            e = self._bound(expr)
            return e if isinstance(e, relax.Call) and _op_name(e) == name else None

        def _activation(self, expr):
            """(q, sx, zx) for `float(astype(q, int32) [- zx]) * sx`, QdqElementwise's dequantize, or why not.

            A layout transform of the dequantized tensor (ConvertLayout puts one where a blocked chain
            starts or ends) moves onto the 8-bit tensor: the same reorder, a quarter of the bytes."""
            moved = self._call(expr, LAYOUT_TRANSFORM)
            if moved is not None:
                act, why = self._activation(moved.args[0])
                if act is None:
                    return act, why
                xq, sx, zx = act
                # bound to a var (call_te takes vars); unused if the op stays float: dead code, removed
                return (self.builder_.emit(relax.Call(moved.op, [xq], moved.attrs)), sx, zx), ""
            found = _dequantized(self, expr)
            return (None, found) if isinstance(found, str) else (found, "")

        def _unsigned(self, xq, zx: int):
            """(the activation as u8, its zero point) where the target's dot product wants u8 (see above)."""
            if not unsigned_activations or str(xq.ty.dtype) != "int8":
                return xq, zx
            wide = relax.op.add(relax.op.astype(xq, "int16"), relax.const(128, "int16"))
            return self.builder_.emit(relax.op.astype(wide, "uint8")), zx + 128

        def _weight(self, expr, allow: str):
            """(W int8 OIHW / [out, in] numpy, per-output scales or scalar, scale axis, wrapper call) or why not."""
            call = self._bound(expr)
            wrapper = None
            if isinstance(call, relax.Call) and _op_name(call) == allow:
                wrapper, call = call, self._bound(call.args[0])
            if not (isinstance(call, relax.Call) and _op_name(call) == DEQUANTIZE):
                return None, "its weight is not a dequantized constant"
            w = _const_value(self._bound(call.args[0]))
            scale, zp = _const_value(call.args[1]), _const_value(call.args[2])
            if w is None or scale is None or zp is None or w.dtype != np.int8:
                return None, "its weight is not a constant int8 tensor"
            if np.any(zp != 0):
                return None, "its weight zero point is not 0 (asymmetric weights)"
            return (w, scale.astype(np.float64).reshape(-1), int(call.attrs.axis), wrapper), ""

        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            name = _op_name(call)
            if name == CONV:
                return self._conv(call)
            if name == MATMUL:
                return self._matmul(call)
            return call

        def _operands(self, call, kind: str, weight_wrapper: str):
            """(activation, weight) of a conv / matmul whose operands are both quantized, else None
            (and the reason recorded)."""
            act, why = self._activation(call.args[0])
            wt = None
            if act is not None:
                wt, why = self._weight(call.args[1], weight_wrapper)
            if wt is None:
                rep.float(kind, why)
                return None
            return act, wt

        def _conv(self, call):
            a = call.attrs
            ops = self._operands(call, "conv2d", LAYOUT_TRANSFORM)
            if ops is None:
                return call
            (xq, sx, zx), (w, sw, axis, _) = ops
            out_ch, groups = w.shape[0], int(a.groups)
            if sw.size not in (1, out_ch) or (sw.size > 1 and axis != 0):
                rep.float("conv2d", "its weight scale is not per output channel")
                return call
            packed = _pack_kernel(w, str(a.kernel_layout))
            layout = str(a.data_layout)
            blocked = re.compile(r"^NCHW\d+c$")
            out_layout = str(a.out_layout)
            if packed is None or not (layout == out_layout == "NCHW" or blocked.match(layout) and blocked.match(out_layout)):
                rep.float("conv2d", f"layout {layout}/{a.kernel_layout}")
                return call
            strides, dilation = [int(s) for s in a.strides], [int(d) for d in a.dilation]
            padding = [int(p) for p in a.padding]  # top, left, bottom, right
            scale = (sx * np.broadcast_to(sw, (out_ch,))).astype(np.float32)
            if layout == "NCHW":
                data = xq
                if any(padding):
                    data = relax.op.nn.pad(xq, [0, 0, 0, 0, padding[0], padding[2], padding[1], padding[3]],
                                           pad_value=float(zx))
                acc = relax.op.nn.conv2d(data, relax.const(w, "int8"), strides=strides, padding=[0, 0, 0, 0],
                                         dilation=dilation, groups=groups, out_dtype="int32")
                shape = (1, out_ch, 1, 1)
            else:
                ob = packed.shape[-1]
                shape = (1, out_ch // ob, 1, 1, ob)
                # (top, left, bottom, right) as the computes take it
                pads = [padding[0], padding[1], padding[2], padding[3]]
                if groups == 1:
                    xq, zx = self._unsigned(xq, zx)
                if groups == 1 and packed.shape[1] == 1 and packed.shape[4] % DOT:
                    # a few input channels in one block (the RGB stem): padded with zero channels (zero
                    # weights) to a multiple of 4, so the stem too runs on the dot product, not on
                    # widening multiplies (ResNet18's 7x7 stem: a sixth of the int8 model's time)
                    extra = DOT - packed.shape[4] % DOT
                    xq = self.builder_.emit(relax.op.nn.pad(xq, [0, 0] * 4 + [0, extra], pad_value=0.0))
                    packed = np.concatenate([packed, np.zeros(packed.shape[:4] + (extra, packed.shape[5]), np.int8)],
                                            axis=4)
                if groups == 1 and packed.shape[4] % DOT == 0:
                    o_b, i_b, kh, kw, ib, obs = packed.shape
                    dot4 = np.ascontiguousarray(packed.reshape(o_b, i_b, kh, kw, ib // DOT, DOT, obs).transpose(0, 1, 2, 3, 4, 6, 5))
                    acc = self.builder_.call_te(conv_nchwc_int8, xq, relax.const(dot4, "int8"), strides, pads, dilation,
                                                "int32", zx, _pairs_overflow_int16(dot4),
                                                primfunc_name_hint="conv2d_nchwc_int8")
                elif groups == 1:
                    from .layout import conv_nchwc

                    acc = self.builder_.call_te(conv_nchwc, xq, relax.const(packed, "int8"), strides, pads, dilation,
                                                "int32", zx, primfunc_name_hint="conv2d_nchwc")
                elif groups == out_ch == int(xq.ty.shape[1]) * int(xq.ty.shape[4]):
                    acc = self.builder_.call_te(depthwise_nchwc, xq, relax.const(packed, "int8"), strides, pads, dilation,
                                                "int32", zx, primfunc_name_hint="depthwise_conv2d_nchwc")
                else:
                    rep.float("conv2d", f"grouped conv ({groups} groups) in {layout}")
                    return call
            rep.integer("conv2d")
            corr = (zx * w.astype(np.int64).reshape(out_ch, -1).sum(axis=1)).astype(np.int32)
            return self._rescale(acc, corr.reshape(shape), scale.reshape(shape), call)

        def _matmul(self, call):
            act, why = self._activation(call.args[0])
            if act is None:
                rep.float("matmul", why)
                return call
            wt, why = self._weight(call.args[1], PERMUTE)
            if wt is None:
                other, why_b = self._activation_operand(call.args[1])
                if other is None:
                    rep.float("matmul", why if why_b is None else
                              f"its second operand is neither a dequantized constant nor an 8-bit activation ({why_b})")
                    return call
                return self._matmul_activations(call, act, other)
            (xq, sx, zx), (w, sw, axis, permute) = act, wt
            if w.ndim != 2 or (permute is not None and permute.attrs.axes is not None
                               and [int(x) for x in permute.attrs.axes] != [1, 0]):
                rep.float("matmul", "its weight is not a 2-D matrix (or is permuted other than transposed)")
                return call
            w_kn = np.ascontiguousarray(w.T if permute is not None else w)  # [K, N]
            n = w_kn.shape[1]
            out_axis = 0 if permute is not None else 1  # the weight's axis that is the output feature
            if sw.size not in (1, n) or (sw.size > 1 and axis != out_axis):
                rep.float("matmul", "its weight scale is not per output feature")
                return call
            k_dim = w_kn.shape[0]
            if lanes and k_dim % DOT == 0 and xq.ty.ndim >= 2:
                xq, zx = self._unsigned(xq, zx)
                # [K, N] -> [N/L, K/4, L, 4]: the dot-product operand of compile/schedules/int8.py; N padded
                # with zero columns to whole panels (a 1000-class classifier otherwise fell back to Relax's
                # integer matmul: 0.23 ms, 7% of MobileNetV2's int8 time) and the result sliced back
                n_pad = -(-n // lanes) * lanes
                w_pad = np.pad(w_kn, ((0, 0), (0, n_pad - n)))
                packed = np.ascontiguousarray(w_pad.reshape(k_dim // DOT, DOT, n_pad // lanes, lanes).transpose(2, 0, 3, 1))
                acc = self.builder_.call_te(dense_int8, xq, relax.const(packed, "int8"), _pairs_overflow_int16(packed),
                                            primfunc_name_hint="dense_int8")
                if n_pad != n:
                    acc = relax.op.strided_slice(acc, axes=[int(xq.ty.ndim) - 1], begin=[0], end=[n])
            else:
                acc = relax.op.matmul(xq, relax.const(w_kn, "int8"), out_dtype="int32")
            corr = (zx * w_kn.astype(np.int64).sum(axis=0)).astype(np.int32)
            scale = (sx * np.broadcast_to(sw, (n,))).astype(np.float32)
            rep.integer("matmul")
            return self._rescale(acc, corr, scale, call)

        def _activation_operand(self, expr):
            """((q, s, z, transposed), "") for a matmul's second operand that is a per-tensor dequantized
            8-bit activation, `transposed` when q is [..., N, K] (a permute_dims of the last two axes
            on either side of the dequantize); (None, why) if a dequantize of something else; (None, None)
            if no dequantize at all."""
            transposed = False
            perm = self._call(expr, PERMUTE)
            if perm is not None:
                if not _swaps_last_two(perm):
                    return None, "it is permuted other than transposed"
                transposed, expr = True, perm.args[0]
            found = _dequantized(self, expr)
            if isinstance(found, str):
                return None, found.replace("its input", "it")
            q, s, z = found
            inner = self._call(q, PERMUTE)
            if inner is not None and _swaps_last_two(inner):
                # the packing reads the untransposed tensor: the transpose (K^T of attention) needs no kernel
                q, transposed = inner.args[0], not transposed
            return (q, s, z, transposed), ""

        def _matmul_activations(self, call, act, other):
            """matmul(dequant(a, sa, za), dequant(b, sb, zb)) of two 8-bit activations (attention's Q.K^T
            and softmax.V): 8-bit x 8-bit -> int32, zero points corrected with sums taken at run time,

                sum_k (a - za)(b - zb) = sum_k a b' - (zb - t) sum_k a - za (sum_k b - K zb),   b = b' + t

            b' = b - 128 (t = 128) for uint8 b: the signed operand of the dot products."""
            aq, sa, za = act
            bq, sb, zb, transposed = other
            if aq.ty.ndim < 2 or bq.ty.ndim < 2:
                rep.float("matmul", "an operand is a vector")
                return call
            try:
                *lead_a, m, k_dim = (int(d) for d in aq.ty.shape)
                *lead_b, rows, cols = (int(d) for d in bq.ty.shape)
            except (TypeError, ValueError, AttributeError):
                rep.float("matmul", "its operands' shapes are not static")
                return call
            kb, n = (cols, rows) if transposed else (rows, cols)
            if kb != k_dim or (lead_b and lead_b != lead_a):
                rep.float("matmul", "its operands' batch dims broadcast")
                return call
            shift = 128 if str(bq.ty.dtype) == "uint8" else 0
            swap = [*range(len(lead_b)), len(lead_b) + 1, len(lead_b)]
            packed_path = bool(lanes) and n % lanes == 0 and k_dim % DOT == 0
            if packed_path:
                packed = self.builder_.emit(self.builder_.call_te(pack_int8, bq, lanes, transposed, shift,
                                                                  primfunc_name_hint="pack_int8"))
                # b' spans the whole int8 range: vpmaddubsw's int16 pairs could saturate ("wide")
                acc = self.builder_.call_te(dense_int8, aq, packed, True, "batch_matmul_int8",
                                            primfunc_name_hint="batch_matmul_int8")
            else:
                b = self.builder_.emit(relax.op.permute_dims(bq, swap)) if transposed else bq
                acc, shift = relax.op.matmul(aq, b, out_dtype="int32"), 0
            if zb - shift:
                rows_corr = self.builder_.call_te(row_sums_int8, aq, zb - shift, lanes or 1,
                                                  primfunc_name_hint="row_sums_int8")
                acc = relax.op.subtract(acc, rows_corr)
            if za:
                if packed_path:
                    # sum_k b' per column: a dot product of a row of ones with the packed operand, one
                    # instruction per 4 x L bytes ([..., 1, N], the broadcast the correction needs)
                    ones = relax.const(np.ones((*lead_a, 1, k_dim), str(aq.ty.dtype)))
                    # pairs of 1 x b' never leave int16: exact on vpmaddubsw too (not "wide")
                    col_sums = self.builder_.call_te(dense_int8, ones, packed, False, "batch_matmul_int8",
                                                     primfunc_name_hint="col_sums_int8")
                    col_sums = relax.op.add(col_sums, relax.const(k_dim * (shift - zb), "int32"))
                else:
                    nk = bq if transposed else self.builder_.emit(relax.op.permute_dims(bq, swap))
                    col_sums = relax.op.reshape(self.builder_.call_te(row_sums_int8, nk, 1, 1,
                                                                      primfunc_name_hint="row_sums_int8"),
                                                [*lead_b, 1, n])
                    col_sums = relax.op.subtract(col_sums, relax.const(k_dim * zb, "int32"))
                acc = relax.op.subtract(acc, relax.op.multiply(col_sums, relax.const(za, "int32")))
            rep.integer("matmul")
            return self._rescale(acc, np.zeros(1, np.int32), np.asarray(sa * sb, np.float32), call)

        def _rescale(self, acc, corr: np.ndarray, scale: np.ndarray, original):
            if np.any(corr):
                acc = relax.op.subtract(acc, relax.const(corr, "int32"))
            out = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale, "float32"))
            dtype = str(original.ty.dtype)
            return out if dtype == "float32" else relax.op.astype(out, dtype)

    from .relax_passes import mutator_pass

    # after the integer rewrite, which reads the 8-bit tensors the casts make
    return tvm.transform.Sequential([_then_cleaned(mutator_pass(_Rewrite, "AutoglmIntegerOps")), FloatRequantize()],
                                    name="AutoglmIntegerOpsAndRequantize")


def FloatRequantize():  # noqa: N802 - a pass constructor
    """`dequantize(quantize(x))` where the 8-bit tensor feeds nothing else: in float, without the casts.

    QdqElementwise's quantize is `astype(F, int8|uint8)` with F = clamp(round(x * (1/s)) [+ z]), an
    integer in the 8-bit range held in a float, so `float(astype(astype(F, 8-bit), int32) - z)` is
    F - z exactly. The casts cost four conversions per value in every requantization a fused
    epilogue chains (a QDQ GELU or attention scaling requantizes after each op); an 8-bit tensor
    that an integer operator, another kernel or a second op reads is left as it is."""
    import tvm
    from tvm import relax

    def uses(mod) -> dict:
        count: dict = {}

        def visit(expr):
            if isinstance(expr, relax.Var):
                count[expr] = count.get(expr, 0) + 1

        for _, func in mod.functions_items():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func, visit)
        return count

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def __init__(self, mod=None):
            super().__init__(mod)
            self._uses = uses(mod) if mod is not None else {}

        def _only_use(self, var, name: str):
            """The call `var` is bound to if it is `name` and `var` has no other use, else None."""
            if not isinstance(var, relax.Var) or self._uses.get(var, 0) != 1:
                return None
            value = _bound_value(self, var, steps=1)
            return value if isinstance(value, relax.Call) and _op_name(value) == name else None

        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            if _op_name(call) != "relax.astype" or str(call.attrs.dtype) != "float32":
                return call
            inner, z = call.args[0], 0.0
            sub = self._only_use(inner, "relax.subtract")
            if sub is not None:
                zv = _scalar(sub.args[1])
                if zv is None:
                    return call
                inner, z = sub.args[0], float(zv)
            widen = self._only_use(inner, "relax.astype")
            if widen is None or str(widen.attrs.dtype) != "int32":
                return call
            narrow = self._only_use(widen.args[0], "relax.astype")
            if narrow is None or str(narrow.attrs.dtype) not in EIGHT_BIT:
                return call
            lo, hi = (0.0, 255.0) if str(narrow.attrs.dtype) == "uint8" else (-128.0, 127.0)
            f = narrow.args[0]
            # F must be QdqElementwise's clamp(round(...) [+ z]): an integer in range, which the casts keep
            hi_call = _bound_value(self, f, steps=1)
            if not (isinstance(hi_call, relax.Call) and _op_name(hi_call) == "relax.minimum" and _scalar(hi_call.args[1]) == hi):
                return call
            lo_call = _bound_value(self, hi_call.args[0], steps=1)
            if not (isinstance(lo_call, relax.Call) and _op_name(lo_call) == "relax.maximum" and _scalar(lo_call.args[1]) == lo):
                return call
            rounded = _bound_value(self, lo_call.args[0], steps=1)
            if isinstance(rounded, relax.Call) and _op_name(rounded) == "relax.add" and _scalar(rounded.args[1]) is not None \
                    and float(_scalar(rounded.args[1])).is_integer():
                rounded = _bound_value(self, rounded.args[0], steps=1)
            if not (isinstance(rounded, relax.Call) and _op_name(rounded) == "relax.round"):
                return call
            return relax.op.subtract(f, relax.const(z, "float32")) if z else f

    from .relax_passes import mutator_pass

    del tvm
    return _then_cleaned(mutator_pass(_Rewrite, "AutoglmFloatRequantize"))


def is_quantized(mod) -> bool:
    """Whether the module has any dequantize (a QDQ model)."""
    from tvm import relax

    found = False

    def visit(expr):
        nonlocal found
        if isinstance(expr, relax.Call) and _op_name(expr) == DEQUANTIZE:
            found = True

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found
