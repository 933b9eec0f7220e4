"""Blocked activation layouts (NCHW[x]c) for CPU convolutions, end to end through the graph.

How a model gets there (all Relax passes, before legalization; see `blocked_layout_passes`):

1. `ConvertLayout` with a per-conv callback: a conv (ONNX's NCHW or TFLite's NHWC) whose output
   channels divide by the block writes NCHW[b]c; its input is NCHW[b]c too when its input channels divide by the block, else
   (the RGB stem) it reads NCHW[C]c, i.e. the whole of its few channels as one block, with no
   reorder of the input. Depthwise convs keep the block through. Elementwise ops (bias add,
   ReLU6 as max/min, residual adds) follow the layout of their inputs, so layout transforms
   are left only where a chain of convs starts or ends (graph inputs/outputs, pooling + flatten).
2. `EliminateCommonSubexpr` (ConvertLayout emits one boundary transform per consumer); weights and
   biases are repacked at compile time (OIHW[b]i[b]o, OIHW1i[b]o) by the FoldConstant that follows
   legalization.
3. `relax.nn.conv2d` in a blocked layout is legalized to this module's TE computes, whose main
   blocks `conv2d_nchwc` / `depthwise_conv2d_nchwc` the register-tiled schedules of
   `compile/schedules/nchwc.py` recognise (stride-1 3x3 convs of the shapes where it is faster: Winograd,
   `compile/winograd.py`). (TVM 0.27's default legalization refuses 5-D layouts and its
   `depthwise_conv2d_NCHWc` is a stub.)

A conversion that would leave layout transforms around the ops between the convs (more than 2 +
1 per 4 blocked convs: TFLite graphs with channel padding or PReLU, an opaque ONNX Pad) is dropped
and the model keeps its own layout; so is one that TVM's layout inference cannot do.

A tensor's block is the target's fp32 vector width (8 on AVX2, 16 on AVX-512, 4 on NEON) when its
channels divide by it, else 8 on AVX-512 (MobileNetV2's 24-channel tensors, between 144-channel ones at
16): blocks follow the channel count, so a conv reads its input in the block its producer wrote. Convs
whose channels divide by no block stay NCHW, with the NCHW rules of `compile/schedules/rules.py`.
"""

from __future__ import annotations

import os
from typing import Any

from targets import Target

from .relax_passes import FoldConstantTransforms

CONV = "relax.nn.conv2d"
NO_BLOCKED_LAYOUT_ENV = "AUTOGLM_NO_BLOCKED_LAYOUT"  # "1": every conv stays in the model's own layout


def block_candidates(target: Target) -> list[int]:
    """Channel blocks for `target`, widest first: its fp32 vector width, and half of it on 16-lane ISAs
    (a 24-channel net is blocked by 8 on AVX-512 rather than left unblocked). Empty: no blocking."""
    from .schedules import cpu_config

    lanes = cpu_config(target).lanes(32)
    if target.device != "cpu" or lanes < 4:
        return []
    return [lanes, lanes // 2] if lanes >= 16 else [lanes]


# The layouts the importers emit: ONNX NCHW/OIHW; TFLite NHWC with HWIO (regular) or HWOI (depthwise) kernels.
_SOURCE_LAYOUTS = {"NCHW": ("OIHW",), "NHWC": ("HWIO", "HWOI", "OHWI")}


def channel_block(channels: int, candidates: list[int]) -> int | None:
    """The block a tensor of `channels` channels is stored in: the widest candidate dividing it."""
    return next((b for b in candidates if channels % b == 0), None)


def _conv_layouts(call: Any, candidates: list[int]) -> list[str] | None:
    """[data, kernel, out] layouts for one fp32 conv2d (NCHW or NHWC), or None to leave it as it is.

    Every tensor's block follows from its own channel count (`channel_block`), so a conv reads its input in
    the block its producer wrote and the two need no transform between them: on AVX-512 MobileNetV2's
    24-channel tensors are NCHW8c and the 144-channel ones around them NCHW16c (one block for the whole
    model put all of it on 8-lane vectors)."""
    attrs = call.attrs
    data_layout, kernel_layout = str(attrs.data_layout), str(attrs.kernel_layout)
    if kernel_layout not in _SOURCE_LAYOUTS.get(data_layout, ()) or str(attrs.out_layout) != data_layout:
        return None
    x, w = call.args
    try:
        cin = int(x.ty.shape[data_layout.index("C")])
        cout = int(w.ty.shape[kernel_layout.index("O")])
        if str(x.ty.dtype) != "float32" or str(w.ty.dtype) != "float32":
            return None
        int(x.ty.shape[data_layout.index("H")]), int(x.ty.shape[data_layout.index("W")])
    except (AttributeError, TypeError, ValueError):
        return None
    groups = int(attrs.groups)
    ob = channel_block(cout, candidates)
    if ob is None:
        return None
    if groups == 1:
        ib = channel_block(cin, candidates)
        if ib is None:
            if cin > candidates[0]:
                return None  # many channels, not a multiple of any block: stays as it is
            ib = cin  # a few input channels (the RGB stem): read as one block, no reorder of the input
        return [f"NCHW{ib}c", f"OIHW{ib}i{ob}o", f"NCHW{ob}c"]
    if groups == cin == cout:
        return [f"NCHW{ob}c", f"OIHW1i{ob}o", f"NCHW{ob}c"]
    return None


def _conv_calls(mod) -> list:
    from tvm import relax

    calls: list = []

    def visit(expr):
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == CONV:
            calls.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return calls


def planned_layouts(mod, candidates: list[int]) -> list[list[str] | None]:
    """Per conv of the model, the [data, kernel, out] layouts it will take (None: it stays as it is)."""
    return [_conv_layouts(c, candidates) for c in _conv_calls(mod)]


def blocked_convs(mod, candidates: list[int]) -> int:
    """How many of the model's convs take a blocked layout."""
    return sum(1 for layouts in planned_layouts(mod, candidates) if layouts)


def _activation_transforms(mod) -> int:
    """Layout transforms of run-time tensors (those of constants, weights and biases, fold at compile time)."""
    import tvm
    from tvm import relax

    count = 0
    for _, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        constant: set = set()  # vars computed from constants only

        def is_const(e) -> bool:
            # tvm.ir.Constant: tensor constants (GenericConst) and scalar prim values alike
            return isinstance(e, (tvm.ir.Constant, relax.ShapeExpr)) or e in constant

        for block in getattr(func.body, "blocks", []):
            for binding in block.bindings:
                value = getattr(binding, "value", None)
                if not isinstance(value, relax.Call):
                    if value is not None and is_const(value):
                        constant.add(binding.var)
                    continue
                args = list(value.args)
                if args and all(is_const(a) for a in args):
                    constant.add(binding.var)
                elif getattr(value.op, "name", "") == "relax.layout_transform":
                    count += 1
    return count


def convert_layout_pass(candidates: list[int]):
    """Relax ConvertLayout with the per-conv callback of this module (blocks by channel count)."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="AutoglmBlockedLayout")
    def _pass(mod, _ctx):
        blocked = blocked_convs(mod, candidates)
        if blocked == 0:
            return mod

        def layout_cb(call):
            if getattr(call.op, "name", "") != CONV:
                return {}
            layouts = _conv_layouts(call, candidates)
            return {CONV: layouts} if layouts else {}

        try:
            new = relax.transform.ConvertLayout({}, layout_cb)(mod)
            new = relax.transform.EliminateCommonSubexpr()(relax.transform.Normalize()(new))
        except Exception:  # noqa: BLE001 - TVM's layout inference of some op cannot take the block
            # (e.g. 0.27 aborts on some Resize/ConvTranspose graphs): the model stays as it is, still correct
            return mod
        if _activation_transforms(new) > 2 + blocked // 4:
            # ops between the convs that do not take the blocked layout (channel padding, PReLU, ... in
            # TFLite graphs) would each sit between two transforms: slower than no blocking at all
            return mod
        return FoldConstantTransforms()(new)  # the weights' and biases' repacks, without a kernel each

    return _pass


def _padded_window(data, kh: int, kw: int, strides, padding, dilation, pad_value=0):
    """The padded NCHW[x]c input (block `pad_nchwc`, which the schedules inline) and the output H, W.

    `pad_value` is 0, or an 8-bit input's zero point (the value of 0.0 in the quantized domain)."""
    from tvm import topi

    h, w = int(data.shape[2]), int(data.shape[3])
    (sh, sw), (dh, dw) = strides, dilation
    pt, pl, pb, pr = padding
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    padded = topi.nn.pad(data, [0, 0, pt, pl, 0], [0, 0, pb, pr, 0], pad_value, name="pad_nchwc") if any(padding) else data
    return padded, oh, ow


def _product(a, b, out_dtype: str):
    """a * b in the accumulator type (8-bit operands are widened first: u8 x s8 must not wrap in 8 bits)."""
    if str(a.dtype) == out_dtype and str(b.dtype) == out_dtype:
        return a * b
    return a.astype(out_dtype) * b.astype(out_dtype)


DOT = 4  # the integer dot-product instructions (pmaddubsw+pmaddwd, vpdpbusd, sdot) reduce 4 bytes per lane


def conv_nchwc_int8(data, kernel, strides, padding, dilation, out_dtype="int32", pad_value=0, wide=False):
    """The 8-bit NCHW[x]c conv, its weight `[ob, icb, kh, kw, ib/4, oi, 4]`: the 4 products one output lane
    adds are adjacent bytes (the operand of the integer dot-product instructions), and the input's 4
    channels at a pixel one 32-bit word. The input is padded with its zero point."""
    from tvm import te

    n, icb_n, _, _, ib = (int(d) for d in data.shape)
    ob_n, _, kh, kw, _, obs, _ = (int(d) for d in kernel.shape)
    (sh, sw), (dh, dw) = strides, dilation
    padded, oh, ow = _padded_window(data, kh, kw, strides, padding, dilation, pad_value)
    icb = te.reduce_axis((0, icb_n), "icb")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ic4 = te.reduce_axis((0, ib // DOT), "ic4")
    k = te.reduce_axis((0, DOT), "k")
    return te.compute(
        (n, ob_n, oh, ow, obs),
        lambda b, ob, y, x, oi: te.sum(
            _product(padded[b, icb, y * sh + ry * dh, x * sw + rx * dw, ic4 * DOT + k], kernel[ob, icb, ry, rx, ic4, oi, k],
                     out_dtype),
            axis=[icb, ry, rx, ic4, k]),
        # `wide`: a pair of products may overflow int16 (see compile/schedules/int8.py)
        name="conv2d_nchwc_int8_wide" if wide else "conv2d_nchwc_int8")


def conv_nchwc(data, kernel, strides, padding, dilation, out_dtype, pad_value=0):
    """out[n, ob, y, x, oi] = sum_{icb, kh, kw, ici} pad(data)[n, icb, y*s + kh*d, x*s + kw*d, ici] * W[ob, icb, kh, kw, ici, oi]."""
    from tvm import te

    n, icb_n, _, _, ib = (int(d) for d in data.shape)
    ob_n, _, kh, kw, _, obs = (int(d) for d in kernel.shape)
    (sh, sw), (dh, dw) = strides, dilation
    padded, oh, ow = _padded_window(data, kh, kw, strides, padding, dilation, pad_value)
    icb = te.reduce_axis((0, icb_n), "icb")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ici = te.reduce_axis((0, ib), "ici")
    return te.compute(
        (n, ob_n, oh, ow, obs),
        lambda b, ob, y, x, oi: te.sum(
            _product(padded[b, icb, y * sh + ry * dh, x * sw + rx * dw, ici], kernel[ob, icb, ry, rx, ici, oi], out_dtype),
            axis=[icb, ry, rx, ici]),
        name="conv2d_nchwc")


def depthwise_nchwc(data, kernel, strides, padding, dilation, out_dtype, pad_value=0):
    """out[n, cb, y, x, ci] = sum_{kh, kw} pad(data)[n, cb, y*s + kh*d, x*s + kw*d, ci] * W[cb, 0, kh, kw, 0, ci]."""
    from tvm import te

    n, cb_n, _, _, bs = (int(d) for d in data.shape)
    kh, kw = int(kernel.shape[2]), int(kernel.shape[3])
    (sh, sw), (dh, dw) = strides, dilation
    padded, oh, ow = _padded_window(data, kh, kw, strides, padding, dilation, pad_value)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    return te.compute(
        (n, cb_n, oh, ow, bs),
        lambda b, c, y, x, ci: te.sum(
            _product(padded[b, c, y * sh + ry * dh, x * sw + rx * dw, ci], kernel[c, 0, ry, rx, 0, ci], out_dtype),
            axis=[ry, rx]),
        name="depthwise_conv2d_nchwc")


def legalize_conv2d(bb, call):
    """Legalize `relax.nn.conv2d`: blocked layouts to this module's computes, the rest to TVM's."""
    import tvm

    attrs = call.attrs
    data_layout, out_layout = str(attrs.data_layout), str(attrs.out_layout)
    if data_layout == "NCHW" and out_layout == "NCHW" or len(call.args[0].ty.shape) != 5:
        return tvm.ir.Op.get(CONV).get_attr("FLegalize")(bb, call)
    strides = [int(s) for s in attrs.strides]
    padding = [int(p) for p in attrs.padding]
    dilation = [int(d) for d in attrs.dilation]
    out_dtype = str(attrs.out_dtype)
    if out_dtype in ("", "void", "None"):  # "same as the input"
        out_dtype = str(call.args[0].ty.dtype)
    from .winograd import legalize_winograd

    winograd = legalize_winograd(bb, call)  # stride-1 3x3 convs where Winograd is faster (compile/winograd.py)
    if winograd is not None:
        return winograd
    compute = conv_nchwc if int(attrs.groups) == 1 else depthwise_nchwc
    return bb.call_te(compute, call.args[0], call.args[1], strides, padding, dilation, out_dtype,
                      primfunc_name_hint="conv2d_nchwc" if int(attrs.groups) == 1 else "depthwise_conv2d_nchwc")


def ClipToMinMax():  # noqa: N802 - a pass constructor
    """`relax.clip(x, lo, hi)` -> `minimum(maximum(x, lo), hi)` with scalar constants.

    ConvertLayout propagates layouts through `maximum`/`minimum` but not through `clip`, which the
    ONNX importer emits for HardSwish and HardSigmoid: without this every such activation would sit
    between two layout transforms.
    """
    import math

    from tvm import relax

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            if getattr(call.op, "name", "") != "relax.clip" or len(call.args) != 3:
                return call
            x, lo, hi = call.args
            dtype = str(getattr(x.ty, "dtype", ""))
            if not dtype.startswith("float"):
                return call
            try:
                lo_v, hi_v = float(lo.value), float(hi.value)
            except (AttributeError, TypeError, ValueError):
                return call
            out = x
            if not math.isinf(lo_v):
                out = relax.op.maximum(out, relax.const(lo_v, dtype))
            if not math.isinf(hi_v):
                out = relax.op.minimum(out, relax.const(hi_v, dtype))
            return out

    from .relax_passes import mutator_pass

    return mutator_pass(_Rewrite, "AutoglmClipToMinMax")


def FoldPadIntoConv():  # noqa: N802 - a pass constructor
    """`conv2d(pad(x, zeros around H and W), padding=p)` -> `conv2d(x, padding=p + the pad)`.

    TFLite files from litert-torch (and TF's stride-2 convs with asymmetric padding) carry a PAD in front
    of the convs whose torch padding TFLite's SAME cannot express. As an op of its own the pad is a full
    copy of the activation, and ConvertLayout gives it no blocked layout, so each would sit between two
    layout transforms and the whole model stayed unblocked (ResNet18 from TFLite: 1.5x LiteRT). The conv
    reads its padding in place (compile/layout.py's computes), so the pad folds into it.
    """
    from tvm import relax

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            if getattr(call.op, "name", "") != CONV:
                return call
            value = call.args[0]
            try:
                bound = self.lookup_binding(value) if isinstance(value, relax.Var) else None
            except Exception:  # noqa: BLE001 - a function parameter has no binding
                bound = None
            if not (isinstance(bound, relax.Call) and getattr(bound.op, "name", "") == "relax.nn.pad"):
                return call
            a = bound.attrs
            layout = str(call.attrs.data_layout)
            widths = [int(w) for w in a.pad_width]
            if str(a.pad_mode) != "constant" or float(a.pad_value) != 0.0 or len(widths) != 8 or layout not in ("NCHW", "NHWC"):
                return call
            h, w = layout.index("H"), layout.index("W")
            if any(widths[2 * i] or widths[2 * i + 1] for i in range(4) if i not in (h, w)):
                return call   # pads the batch or the channels: not a conv's padding
            top, left, bottom, right = (int(p) for p in call.attrs.padding)
            padding = [top + widths[2 * h], left + widths[2 * w], bottom + widths[2 * h + 1], right + widths[2 * w + 1]]
            attrs = call.attrs
            return relax.op.nn.conv2d(bound.args[0], call.args[1], strides=attrs.strides, padding=padding,
                                      dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                                      kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                                      out_dtype=attrs.out_dtype)

    from .relax_passes import mutator_pass

    return mutator_pass(_Rewrite, "AutoglmFoldPadIntoConv")


_BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum", "relax.minimum")


def RankMatchedConstants():  # noqa: N802 - a pass constructor
    """A constant operand of an elementwise binary op with fewer axes than the 4-D tensor it meets (TFLite's
    bias add of a [C] vector after an NHWC conv) reshaped to 4-D with leading ones: the same broadcast, but
    one ConvertLayout can move into the blocked layout. Left 1-D, the add refused it, and every conv of
    ResNet18 from TFLite sat between two layout transforms."""
    import numpy as np
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            if getattr(call.op, "name", "") not in _BINARY or len(call.args) != 2:
                return call
            args = list(call.args)
            ranks = [getattr(getattr(a, "ty", None), "ndim", -1) for a in args]
            for i, (a, other) in enumerate(((args[0], ranks[1]), (args[1], ranks[0]))):
                value = a.value.numpy() if isinstance(a, tvm.ir.GenericConst) and hasattr(a.value, "numpy") else None
                if value is not None and other == 4 and 1 <= value.ndim < 4:
                    args[i] = relax.const(value.reshape((1,) * (4 - value.ndim) + value.shape), str(value.dtype))
            if all(x.same_as(y) for x, y in zip(args, call.args)):
                return call
            return relax.Call(call.op, args, call.attrs)

    from .relax_passes import mutator_pass

    del np
    return mutator_pass(_Rewrite, "AutoglmRankMatchedConstants")


def blocked_layout_passes(target: Target) -> list:
    """The passes that put the model's convs into NCHW[b]c (empty where the target has no vectors)."""
    from tvm import relax

    candidates = block_candidates(target)
    if not candidates or os.environ.get(NO_BLOCKED_LAYOUT_ENV):
        return []
    return [
        ClipToMinMax(),
        RankMatchedConstants(),
        FoldPadIntoConv(),
        relax.transform.DeadCodeElimination(),
        convert_layout_pass(candidates),
        # the weights' and biases' layout transforms fold with the FoldConstant after legalization
    ]


def legalize_map() -> dict:
    """The LegalizeOps customisations the blocked layout needs."""
    return {CONV: legalize_conv2d}
