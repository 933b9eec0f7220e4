"""Relax plumbing the toolkit's graph rewrites share."""

from __future__ import annotations


def mutator_pass(mutator_cls, name: str):
    """A module pass that runs a `relax.PyExprMutator` subclass over every Relax function of the module."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        mutator = mutator_cls(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        return mutator.builder_.get()

    return _pass


def FoldConstantTransforms(dequantize: bool = False):  # noqa: N802 - a pass constructor
    """Layout transforms, reshapes and transposes of constant tensors evaluated here, with numpy / TVM's
    IndexMap, instead of by Relax's FoldConstant.

    FoldConstant builds and runs every folded call as its own compiled kernel (~0.05-0.1 s each with
    LLVM): a MobileNetV2's weight and bias repacks for the blocked layout are a hundred of them, most
    of a compile's graph-pass time. Only bijective transforms (no padding) are folded here; anything
    else is left to FoldConstant. `dequantize`: also constant dequantizes (a QDQ model's biases; run it
    after `compile/int8.py`'s IntegerOps, which reads the int8 weights through theirs).
    """
    import numpy as np
    import tvm
    from tvm import relax

    def const_of(expr):
        if isinstance(expr, tvm.ir.GenericConst) and hasattr(expr.value, "numpy"):
            return expr.value
        return None

    @relax.expr_functor.mutator
    class _Fold(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            name = str(getattr(call.op, "name", ""))
            if name == "relax.dequantize" and dequantize:
                return self._dequantize(call)
            if name not in ("relax.layout_transform", "relax.reshape", "relax.permute_dims") or not call.args:
                return call
            arg = call.args[0]
            if isinstance(arg, relax.Var):
                bound = self.lookup_binding(arg)
                arg = bound if bound is not None else arg
            value = const_of(arg)
            if value is None:
                return call
            try:
                shape = [int(d) for d in call.ty.shape.values]
            except (AttributeError, TypeError, ValueError):
                return call
            if name == "relax.layout_transform":
                attrs = call.attrs
                if attrs.pad_value is not None:
                    return call
                if int(np.prod(shape)) != int(np.prod(value.shape)):
                    return call  # padded to the block: FoldConstant's job
                out = _apply_index_map(attrs.index_map, value.numpy(), shape)
                if out is None:
                    return call
                return relax.const(out, str(value.dtype))
            data = value.numpy()
            if name == "relax.reshape":
                return relax.const(data.reshape(shape), str(value.dtype))
            axes = call.attrs.axes
            perm = [int(a) for a in axes] if axes is not None else None
            return relax.const(np.ascontiguousarray(np.transpose(data, perm)), str(value.dtype))

        def _dequantize(self, call):
            """float32((q - zp) as int32) * scale, broadcast along `axis`: TVM's own lowering, bit for bit."""
            vals = [const_of(a) for a in call.args]
            if any(v is None for v in vals) or str(call.attrs.out_dtype) != "float32":
                return call
            q, scale, zp = (v.numpy() for v in vals)
            if q.dtype.kind not in "iu" or scale.dtype != np.float32:
                return call
            axis = int(call.attrs.axis) % max(q.ndim, 1)

            def along(v):
                if v.size == 1:
                    return v.reshape(())
                shape = [1] * q.ndim
                shape[axis] = v.size
                return v.reshape(shape)

            out = (q.astype(np.int32) - along(zp).astype(np.int32)).astype(np.float32) * along(scale)
            return relax.const(out.astype(np.float32), "float32")

    return mutator_pass(_Fold, "AutoglmFoldConstantTransforms")


def _apply_index_map(index_map, data, out_shape: list[int]):
    """`data` moved by a bijective TIR IndexMap (floordiv/floormod/+/-/* of the input indices) with numpy
    index arithmetic; None for any other map. (IndexMap.map_tensor takes seconds per weight.)"""
    import numpy as np
    from tvm import tirx

    grids = np.indices(data.shape, sparse=True)
    env = {v: g for v, g in zip(index_map.initial_indices, grids)}

    def ev(e):
        if isinstance(e, tirx.Var):
            return env[e]
        if isinstance(e, tirx.IntImm):
            return int(e.value)
        ops = {tirx.FloorDiv: np.floor_divide, tirx.FloorMod: np.mod, tirx.Add: np.add, tirx.Sub: np.subtract,
               tirx.Mul: np.multiply}
        for cls, fn in ops.items():
            if isinstance(e, cls):
                return fn(ev(e.a), ev(e.b))
        raise ValueError(type(e).__name__)

    try:
        idx = [np.broadcast_to(ev(e), data.shape) for e in index_map.final_indices]
    except (ValueError, KeyError):
        return None
    if len(idx) != len(out_shape):
        return None
    out = np.zeros(out_shape, data.dtype)
    seen = np.zeros(out_shape, bool)
    try:
        out[tuple(idx)] = data
        seen[tuple(idx)] = True
    except IndexError:
        return None
    return out if seen.all() else None  # every output element written once: the map was bijective
