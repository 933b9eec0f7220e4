"""The toolkit's own ONNX operator converters for TVM's Relax importer (LSTM, GRU, RNN).

TVM 0.27's `tvm.relax.frontend.onnx` has no recurrent-layer converters. The classes here follow the
importer's `OnnxOpConverter` convention (`_impl_vN(bb, inputs, attr, params)` returning a Relax
expression) and are added to the importer's operator map only inside `toolkit_converters()`, so
site-packages stays untouched and nothing outside the toolkit's import sees them.

Both recurrences are unrolled over the sequence length, which shape fixing has made static. The
input projection of every time step is one matmul before the loop; only the recurrent matmul is per
step. The expressions are built without `bb.emit`, so a converter works the same inside an `If`
branch (which TVM's importer converts as nested expressions) as in the main graph.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import UnsupportedOperatorError

# Activations the unrolled cells can apply, by ONNX name (lower-cased), without alpha/beta.
_ACTIVATIONS = ("sigmoid", "tanh", "relu")

_patch_lock = threading.RLock()
_patch_depth = 0


def _relax():
    from tvm import relax

    return relax


def _node_name(attr: dict[str, Any]) -> str:
    return str(attr.get("tvm_custom", {}).get("name", "") or "?")


def _unsupported(op: str, attr: dict[str, Any], what: str) -> UnsupportedOperatorError:
    return UnsupportedOperatorError(
        f"{op} node '{_node_name(attr)}' uses {what}, which the toolkit's {op} converter does not support; "
        f"re-export the model without it (e.g. a plain torch.nn.{op} with default activations)"
    )


def _const_array(expr, params) -> np.ndarray | None:
    """The value of `expr` when it is a constant (or a parameter held as an input), else None."""
    import tvm
    from tvm.relax.frontend.onnx.onnx_frontend import get_constant

    if expr is None:
        return None
    expr = get_constant(expr, params)
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def _static_shape(expr, what: str, op: str, attr: dict[str, Any]) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in expr.ty.shape)
    except (AttributeError, TypeError, ValueError):
        raise UnsupportedOperatorError(
            f"{op} node '{_node_name(attr)}' has {what} of unknown shape; fix the model's input shapes with --input-shape"
        ) from None


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _activations(op: str, attr: dict[str, Any], defaults: tuple[str, ...], num_directions: int) -> list[list[str]]:
    """Activation names per direction, validated."""
    if attr.get("activation_alpha") or attr.get("activation_beta"):
        raise _unsupported(op, attr, "activation_alpha/activation_beta")
    names = [a.decode() if isinstance(a, bytes) else str(a) for a in attr.get("activations", ())]
    if not names:
        names = list(defaults) * num_directions
    if len(names) != len(defaults) * num_directions:
        raise UnsupportedOperatorError(
            f"{op} node '{_node_name(attr)}' lists {len(names)} activations; expected {len(defaults) * num_directions}"
        )
    bad = sorted({n for n in names if n.lower() not in _ACTIVATIONS})
    if bad:
        raise _unsupported(op, attr, f"activation(s) {', '.join(bad)} (supported: Sigmoid, Tanh, Relu)")
    k = len(defaults)
    return [[n.lower() for n in names[d * k:(d + 1) * k]] for d in range(num_directions)]


def _apply(name: str, x, clip: float | None, dtype: str):
    relax = _relax()
    if clip is not None:
        # ONNX: the clip bounds the *input* of every activation.
        x = relax.op.minimum(relax.op.maximum(x, relax.const(-clip, dtype)), relax.const(clip, dtype))
    if name == "sigmoid":
        return relax.op.sigmoid(x)
    if name == "tanh":
        return relax.op.tanh(x)
    return relax.op.nn.relu(x)


class _Recurrent:
    """What LSTM, GRU and RNN share: attribute checks, layout, per-direction weights, the unrolled loop, outputs.

    Subclasses give `_run` (one direction's steps) and, where needed, `_extra` (op-specific attributes).
    """

    OP = ""
    GATES = 0  # gate blocks stacked in W and R
    DEFAULT_ACTIVATIONS: tuple[str, ...] = ()

    @classmethod
    def _prepare(cls, inputs, attr: dict[str, Any], params) -> dict[str, Any]:
        relax = _relax()
        op = cls.OP
        x, w, r = inputs[0], inputs[1], inputs[2]
        direction = attr.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else str(direction)
        if direction not in ("forward", "reverse", "bidirectional"):
            raise UnsupportedOperatorError(f"{op} node '{_node_name(attr)}' has unknown direction {direction!r}")
        num_dir = 2 if direction == "bidirectional" else 1
        layout = int(attr.get("layout", 0))
        if layout not in (0, 1):
            raise UnsupportedOperatorError(f"{op} node '{_node_name(attr)}' has layout={layout}; ONNX allows 0 or 1")
        xs = _static_shape(x, "input X", op, attr)
        ws = _static_shape(w, "weight W", op, attr)
        if len(xs) != 3 or len(ws) != 3:
            raise UnsupportedOperatorError(f"{op} node '{_node_name(attr)}' has X of rank {len(xs)} and W of rank {len(ws)}; both must be 3")
        hidden = int(attr.get("hidden_size", ws[1] // cls.GATES))
        if ws[0] != num_dir or ws[1] != cls.GATES * hidden:
            raise UnsupportedOperatorError(
                f"{op} node '{_node_name(attr)}': W has shape {list(ws)}, expected [{num_dir}, {cls.GATES * hidden}, input_size]"
            )
        dtype = _dtype(x)
        if layout == 1:  # [batch, seq, input] -> the spec's [seq, batch, input]
            x = relax.op.permute_dims(x, [1, 0, 2])
            xs = (xs[1], xs[0], xs[2])
        seq, batch, _ = xs
        clip = attr.get("clip")
        clip = float(clip) if clip is not None else None

        # sequence_lens: only "every sequence is full length" has the fixed-shape meaning we unroll.
        if inputs[4] is not None:
            lens = _const_array(inputs[4], params)
            if lens is None:
                raise _unsupported(op, attr, "a runtime sequence_lens input (variable-length sequences)")
            if not np.all(lens == seq):
                raise _unsupported(op, attr, f"sequence_lens {lens.tolist()} shorter than the sequence ({seq})")

        def state(index: int):
            """initial_h / initial_c as one [batch, hidden] expression per direction (zeros if absent)."""
            value = inputs[index] if len(inputs) > index else None
            if value is None:
                return [relax.const(np.zeros((batch, hidden), dtype)) for _ in range(num_dir)]
            if layout == 1:  # [batch, num_dir, hidden] -> [num_dir, batch, hidden]
                value = relax.op.permute_dims(value, [1, 0, 2])
            return [_take(value, d, 0) for d in range(num_dir)] if num_dir > 1 else [relax.op.squeeze(value, [0])]

        return {
            "x": x, "w": w, "r": r, "b": inputs[3], "seq": seq, "batch": batch, "hidden": hidden,
            "num_dir": num_dir, "direction": direction, "layout": layout, "dtype": dtype, "clip": clip,
            "acts": _activations(op, attr, cls.DEFAULT_ACTIVATIONS, num_dir), "state": state,
        }

    @classmethod
    def _weights(cls, p: dict[str, Any], d: int, params):
        """W^T [input, G*H], R^T [H, G*H] and the bias pair for direction d (None when B is absent)."""
        relax = _relax()

        def transposed(expr):
            value = _const_array(expr, params)
            if value is not None:  # transpose at import time: constants stay constants
                return relax.const(np.ascontiguousarray(value[d].T))
            return relax.op.permute_dims(_take(expr, d, 0), [1, 0])

        wt, rt = transposed(p["w"]), transposed(p["r"])
        gh = cls.GATES * p["hidden"]
        bias = None
        if p["b"] is not None:
            value = _const_array(p["b"], params)
            if value is not None:
                bias = (relax.const(np.ascontiguousarray(value[d, :gh])), relax.const(np.ascontiguousarray(value[d, gh:])))
            else:
                bd = _take(p["b"], d, 0)
                bias = (_slice(bd, 0, 0, gh), _slice(bd, 0, gh, 2 * gh))
        return wt, rt, bias

    @classmethod
    def _input_projection(cls, p: dict[str, Any], wt, bias_w):
        """X_t W^T (+ Wb) for every t at once: [seq, batch, G*H], split into one tensor per step."""
        relax = _relax()
        xw = relax.op.matmul(p["x"], wt)
        if bias_w is not None:
            xw = relax.op.add(xw, bias_w)
        if p["seq"] == 1:
            return [relax.op.squeeze(xw, [0])]
        parts = relax.op.split(xw, p["seq"], axis=0)
        return [relax.op.squeeze(relax.TupleGetItem(parts, t), [0]) for t in range(p["seq"])]

    @classmethod
    def _outputs(cls, p: dict[str, Any], hs_per_dir: list[list], finals: list[tuple]):
        """Y, Y_h (and Y_c) in the node's layout from the per-direction step outputs (in time order)."""
        relax = _relax()
        steps = [relax.op.stack([hs[t] for hs in hs_per_dir], axis=0) for t in range(p["seq"])]  # [dir, batch, H]
        y = relax.op.stack(steps, axis=0)  # [seq, dir, batch, H]
        outs = [relax.op.stack([f[i] for f in finals], axis=0) for i in range(len(finals[0]))]  # [dir, batch, H]
        if p["layout"] == 1:
            y = relax.op.permute_dims(y, [2, 0, 1, 3])
            outs = [relax.op.permute_dims(o, [1, 0, 2]) for o in outs]
        return relax.Tuple([y, *outs])

    @classmethod
    def _extra(cls, p: dict[str, Any], inputs, attr: dict[str, Any], params) -> None:
        """Op-specific entries of the plan `p`."""

    @classmethod
    def _convert(cls, bb, inputs, attr, params):
        p = cls._prepare(inputs, attr, params)
        cls._extra(p, inputs, attr, params)
        hs_per_dir, finals = [], []
        for d in range(p["num_dir"]):
            reverse = p["direction"] == "reverse" or d == 1
            wt, rt, bias = cls._weights(p, d, params)
            xw = cls._input_projection(p, wt, bias[0] if bias else None)
            order = range(p["seq"] - 1, -1, -1) if reverse else range(p["seq"])
            hs, final = cls._run(p, d, xw, rt, bias[1] if bias else None, order)
            hs_per_dir.append(hs)
            finals.append(final)
        return cls._outputs(p, hs_per_dir, finals)

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        return cls._convert(bb, inputs, attr, params)

    # Opset 14 added `layout`, which _prepare reads; the importer picks the newest _impl_vN <= the model's opset.
    _impl_v14 = _impl_v7


def _take(expr, index: int, axis: int):
    relax = _relax()
    return relax.op.squeeze(_slice(expr, axis, index, index + 1), [axis])


def _slice(expr, axis: int, begin: int, end: int):
    relax = _relax()
    return relax.op.strided_slice(expr, axes=[axis], begin=[begin], end=[end])


class LSTM(_Recurrent):
    """ONNX LSTM (opsets 7 and 14): gates i, o, f, c; optional peepholes P and cell clip."""

    OP = "LSTM"
    GATES = 4
    DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")

    @classmethod
    def _run(cls, p, d, xw, rt, bias_r, order):
        relax = _relax()
        dtype, clip = p["dtype"], p["clip"]
        f_act, g_act, h_act = p["acts"][d]
        h, c = p["state"](5)[d], p["state"](6)[d]
        peep = p["peepholes"][d]
        hs: list = [None] * p["seq"]
        for t in order:
            gates = relax.op.add(xw[t], relax.op.matmul(h, rt))
            if bias_r is not None:
                gates = relax.op.add(gates, bias_r)
            split = relax.op.split(gates, 4, axis=1)
            gi, go, gf, gc = (relax.TupleGetItem(split, k) for k in range(4))
            if peep is not None:
                gi = relax.op.add(gi, relax.op.multiply(peep[0], c))
                gf = relax.op.add(gf, relax.op.multiply(peep[2], c))
            i = _apply(f_act, gi, clip, dtype)
            f = _apply(f_act, gf, clip, dtype)
            c = relax.op.add(relax.op.multiply(f, c), relax.op.multiply(i, _apply(g_act, gc, clip, dtype)))
            if peep is not None:
                go = relax.op.add(go, relax.op.multiply(peep[1], c))
            o = _apply(f_act, go, clip, dtype)
            h = relax.op.multiply(o, _apply(h_act, c, None, dtype))
            hs[t] = h
        return hs, (h, c)

    @classmethod
    def _extra(cls, p, inputs, attr, params) -> None:
        if int(attr.get("input_forget", 0)):
            raise _unsupported("LSTM", attr, "input_forget=1 (coupled input and forget gates)")
        relax = _relax()
        hidden = p["hidden"]
        p["peepholes"] = [None] * p["num_dir"]
        peep_in = inputs[7] if len(inputs) > 7 else None
        if peep_in is None:
            return
        value = _const_array(peep_in, params)
        if value is None:
            raise _unsupported("LSTM", attr, "peepholes (P) that are not constant")
        if value.shape != (p["num_dir"], 3 * hidden):
            raise UnsupportedOperatorError(
                f"LSTM node '{_node_name(attr)}': P has shape {list(value.shape)}, expected [{p['num_dir']}, {3 * hidden}]"
            )
        if not np.any(value):  # exporters often write an all-zero P: that is no peephole at all
            return
        p["peepholes"] = [
            tuple(relax.const(np.ascontiguousarray(value[d, k * hidden:(k + 1) * hidden])) for k in range(3))
            for d in range(p["num_dir"])
        ]


class GRU(_Recurrent):
    """ONNX GRU (opsets 7 and 14): gates z, r, h; linear_before_reset 0 and 1."""

    OP = "GRU"
    GATES = 3
    DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh")

    @classmethod
    def _run(cls, p, d, xw, rt, bias_r, order):
        relax = _relax()
        hidden, dtype, clip = p["hidden"], p["dtype"], p["clip"]
        f_act, g_act = p["acts"][d]
        lbr = p["linear_before_reset"]
        h = p["state"](5)[d]
        # R^T columns are [z | r | h]; without linear_before_reset the h block multiplies r*H, not H.
        rt_zr, rt_h = _slice(rt, 1, 0, 2 * hidden), _slice(rt, 1, 2 * hidden, 3 * hidden)
        rb_zr = rb_h = None
        if bias_r is not None:
            rb_zr, rb_h = _slice(bias_r, 0, 0, 2 * hidden), _slice(bias_r, 0, 2 * hidden, 3 * hidden)
        hs: list = [None] * p["seq"]
        for t in order:
            x_split = relax.op.split(xw[t], [hidden, 2 * hidden], axis=1)
            xz, xr, xh = (relax.TupleGetItem(x_split, k) for k in range(3))
            if lbr:
                rec = relax.op.matmul(h, rt)
                if bias_r is not None:
                    rec = relax.op.add(rec, bias_r)
                r_split = relax.op.split(rec, [hidden, 2 * hidden], axis=1)
                hz, hr, hh = (relax.TupleGetItem(r_split, k) for k in range(3))
            else:
                rec = relax.op.matmul(h, rt_zr)
                if rb_zr is not None:
                    rec = relax.op.add(rec, rb_zr)
                r_split = relax.op.split(rec, [hidden], axis=1)
                hz, hr = (relax.TupleGetItem(r_split, k) for k in range(2))
            z = _apply(f_act, relax.op.add(xz, hz), clip, dtype)
            r = _apply(f_act, relax.op.add(xr, hr), clip, dtype)
            if lbr:
                cand = relax.op.add(xh, relax.op.multiply(r, hh))
            else:
                cand = relax.op.matmul(relax.op.multiply(r, h), rt_h)
                if rb_h is not None:
                    cand = relax.op.add(cand, rb_h)
                cand = relax.op.add(xh, cand)
            n = _apply(g_act, cand, clip, dtype)
            # H = (1 - z) * n + z * H  ==  n + z * (H - n)
            h = relax.op.add(n, relax.op.multiply(z, relax.op.subtract(h, n)))
            hs[t] = h
        return hs, (h,)

    @classmethod
    def _extra(cls, p, inputs, attr, params) -> None:
        p["linear_before_reset"] = int(attr.get("linear_before_reset", 0))


class RNN(_Recurrent):
    """ONNX RNN (opsets 7 and 14): one gate, H = f(X W^T + H R^T + Wb + Rb)."""

    OP = "RNN"
    GATES = 1
    DEFAULT_ACTIVATIONS = ("Tanh",)

    @classmethod
    def _run(cls, p, d, xw, rt, bias_r, order):
        relax = _relax()
        (f_act,) = p["acts"][d]
        h = p["state"](5)[d]
        hs: list = [None] * p["seq"]
        for t in order:
            pre = relax.op.add(xw[t], relax.op.matmul(h, rt))
            if bias_r is not None:
                pre = relax.op.add(pre, bias_r)
            h = _apply(f_act, pre, p["clip"], p["dtype"])
            hs[t] = h
        return hs, (h,)


def _as_converter(cls: type) -> type:
    """The same class as a subclass of TVM's OnnxOpConverter (for its opset dispatch)."""
    from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter

    return type(cls.__name__, (cls, OnnxOpConverter), {"__doc__": cls.__doc__})


def _clip_override() -> type:
    """ONNX Clip as `relax.op.maximum`/`minimum` with scalar constants where its bounds are constants.

    TVM's converter emits `topi.maximum`/`minimum` through `emit_te`: opaque calls that stop layout
    conversion (NCHWc) at every ReLU6. Bounds that are run-time tensors keep TVM's converter; a NaN
    bound means "unbounded", as in onnxruntime.
    """
    from tvm import relax
    from tvm.relax.frontend.onnx.onnx_frontend import Clip as TvmClip

    def scalar(bound, params) -> float | None:
        if bound is None:
            return None
        value = _const_array(bound, params)
        if value is None or value.size != 1:
            raise LookupError  # not a constant: TVM's converter handles it
        return float(value.reshape(()))

    def clamp(x, lo: float | None, hi: float | None):
        dtype = _dtype(x)
        if lo is not None and not np.isnan(lo) and lo != -np.inf:
            x = relax.op.maximum(x, relax.const(lo, dtype))
        if hi is not None and not np.isnan(hi) and hi != np.inf:
            x = relax.op.minimum(x, relax.const(hi, dtype))
        return x

    class Clip(TvmClip):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return clamp(inputs[0], float(attr.get("min", -np.inf)), float(attr.get("max", np.inf)))

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            try:
                lo, hi = scalar(inputs[1], params), scalar(inputs[2], params)
            except LookupError:
                return TvmClip._impl_v13(bb, inputs, attr, params)
            return clamp(inputs[0], lo, hi)

        @classmethod
        def _impl_v11(cls, bb, inputs, attr, params):
            return cls._impl_v13(bb, inputs, attr, params)

    return Clip


_CONVERTERS: dict[str, type] | None = None
_OVERRIDES: dict[str, type] | None = None


def overrides() -> dict[str, type]:
    """ONNX op type -> the toolkit's converter used instead of TVM's."""
    global _OVERRIDES
    if _OVERRIDES is None:
        _OVERRIDES = {"Clip": _clip_override()}
    return _OVERRIDES


def converters() -> dict[str, type]:
    """ONNX op type -> the toolkit's converter class, for ops TVM's importer lacks."""
    global _CONVERTERS
    if _CONVERTERS is None:
        _CONVERTERS = {"LSTM": _as_converter(LSTM), "GRU": _as_converter(GRU), "RNN": _as_converter(RNN)}
    return _CONVERTERS


@contextlib.contextmanager
def toolkit_converters() -> Iterator[None]:
    """Within the block, TVM's ONNX importer also knows the toolkit's converters.

    The importer looks its map up through the module function `_get_convert_map()` on every node, so
    wrapping that function is enough; TVM's own converters win where both exist, except the
    `overrides()`. Re-entrant.
    """
    global _patch_depth
    from tvm.relax.frontend.onnx import onnx_frontend

    with _patch_lock:
        if _patch_depth == 0:
            original = onnx_frontend._get_convert_map

            def with_toolkit_ops():
                return {**converters(), **original(), **overrides()}

            with_toolkit_ops.__wrapped__ = original  # type: ignore[attr-defined]
            onnx_frontend._get_convert_map = with_toolkit_ops
        _patch_depth += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                onnx_frontend._get_convert_map = onnx_frontend._get_convert_map.__wrapped__
