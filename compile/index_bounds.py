"""Index safety: which model inputs index a table, and kernels that never read or write outside one.

TVM compiles `take` (ONNX Gather, embedding lookups), `gather_elements`, `gather_nd` and the
scatters without bounds checks: an index past the table reads (or writes) memory outside it
(garbage, or a segfault). onnxruntime refuses such indices. Two layers:

- `input_index_bounds`: per integer input that reaches such an op's indices unchanged, the range
  [lo, hi] every value must lie in; both runtimes check inputs against it before running, so a
  bad token id is one line naming the input.
- `ClampIndices`: a pass that clamps every index inside its axis in the kernel itself (`take` in
  "clip" mode, min/max before the other ops), so an index computed from an input any other way
  still stays inside the table. The clamp runs after ONNX's negative-index normalisation, costs
  two integer min/max per index, and leaves in-range indices unchanged.

Only value-preserving ops are followed from an input to the indices (reshape, cast, slicing,
transpose, ...) and ONNX's negative-index normalisation `where(x < 0, x + n, x)`, which makes
[-n, n-1] valid as in onnxruntime. An index computed from an input any other way is not bounded
here.
"""

from __future__ import annotations

from typing import Any

# Ops whose output elements are elements of their first argument (values unchanged).
_VALUE_PRESERVING = {
    "relax.reshape", "relax.astype", "relax.squeeze", "relax.expand_dims", "relax.permute_dims",
    "relax.flatten", "relax.broadcast_to", "relax.strided_slice", "relax.flip", "relax.tile",
    "relax.repeat",
}
# op -> position of the indices argument
_INDEXING = {"relax.take": 1, "relax.gather_elements": 1, "relax.scatter_elements": 1,
             "relax.gather_nd": 1, "relax.scatter_nd": 1}
_ND = {"relax.gather_nd", "relax.scatter_nd"}  # the indices' last axis indexes several data axes
# ops whose kernel itself maps an index i < 0 to i + n (the ONNX importer normalises the others' indices)
_NEGATIVE_OK = {"relax.scatter_elements"}


def _op_name(call: Any) -> str:
    return getattr(getattr(call, "op", None), "name", "")


def _static_dim(expr: Any, axis: int) -> int | None:
    try:
        shape = expr.ty.shape
        ndim = len(shape)
        dim = shape[axis if axis >= 0 else axis + ndim]
        return int(dim)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None


def _static_size(expr: Any) -> int | None:
    try:
        size = 1
        for dim in expr.ty.shape:
            size *= int(dim)
        return size
    except (AttributeError, TypeError, ValueError):
        return None


def _is_zero_const(expr: Any) -> bool:
    try:
        import tvm

        return isinstance(expr, tvm.ir.GenericConst) and expr.value.numpy().ndim == 0 and int(expr.value.numpy()) == 0
    except Exception:  # noqa: BLE001 - anything that is not a plain scalar constant
        return False


def input_index_bounds(mod: Any, input_names: list[str]) -> dict[str, list[int]]:
    """{input name: [lo, hi]} for the inputs of `mod["main"]` whose values index a table."""
    from tvm import relax

    func = mod["main"]
    params = list(func.params)
    if len(params) != len(input_names):
        return {}
    values: dict[Any, Any] = {}
    body = func.body
    for block in getattr(body, "blocks", []):
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                values[binding.var] = binding.value
    # Only integer inputs are checked; a float input cast to an index is left alone (its cast truncates).
    param_names = {p: name for p, name in zip(params, input_names)
                   if str(getattr(getattr(p, "ty", None), "dtype", "")).startswith(("int", "uint"))}
    bounds: dict[str, list[int]] = {}

    def trace(expr: Any, lo: int, hi: int, depth: int = 0) -> None:
        if depth > 64:
            return
        if expr in param_names:
            name = param_names[expr]
            old = bounds.get(name)
            bounds[name] = [lo, hi] if old is None else [max(old[0], lo), min(old[1], hi)]
            return
        value = values.get(expr)
        if not isinstance(value, relax.Call):
            return
        name = _op_name(value)
        if name in _VALUE_PRESERVING:
            trace(value.args[0], lo, hi, depth + 1)
        elif name == "relax.where" and len(value.args) == 3:
            # ONNX's normalisation: where(x < 0, x + n, x) accepts x in [-n, n-1]
            cond, neg, pos = (values.get(a, a) for a in value.args)
            x = value.args[2]
            if (isinstance(cond, relax.Call) and _op_name(cond) == "relax.less" and cond.args[0].same_as(x)
                    and _is_zero_const(cond.args[1]) and isinstance(neg, relax.Call) and _op_name(neg) == "relax.add"
                    and neg.args[0].same_as(x) and lo == 0):
                trace(x, -(hi + 1), hi, depth + 1)

    for value in list(values.values()):
        if not isinstance(value, relax.Call) or _op_name(value) not in _INDEXING:
            continue
        if _op_name(value) == "relax.take" and str(getattr(value.attrs, "mode", "fast")) != "fast":
            continue  # wrap and clip modes stay inside the table by construction
        extents = _index_extents(value)
        # one range per input: an N-d index is bounded here only when all the axes it indexes are equally long
        if not extents or len(set(extents)) != 1 or extents[0] < 1:
            continue
        n = extents[0]
        trace(value.args[_INDEXING[_op_name(value)]], -n if _op_name(value) in _NEGATIVE_OK else 0, n - 1)
    return {name: b for name, b in bounds.items() if b[0] <= b[1]}


def _index_extents(call: Any) -> list[int] | None:
    """The lengths of the data axes an indexing call's indices select along (one per index column)."""
    name = _op_name(call)
    data, indices = call.args[0], call.args[_INDEXING[name]]
    if name in _ND:
        try:
            m = int(indices.ty.shape[-1])
            batch = int(getattr(call.attrs, "batch_dims", 0) or 0)
        except (AttributeError, TypeError, ValueError, IndexError):
            return None
        dims = [_static_dim(data, batch + k) for k in range(m)]
        return None if any(d is None for d in dims) else dims  # type: ignore[return-value]
    axis = getattr(call.attrs, "axis", 0)
    n = _static_dim(data, int(axis)) if axis is not None else _static_size(data)
    return None if n is None else [n]


def ClampIndices():  # noqa: N802 - a pass constructor
    """Relax pass: every `take`/`gather*`/`scatter*` index is clamped into its axis inside the kernel.

    `take` switches from "fast" to "clip" mode; the others get `minimum(maximum(idx, 0), n - 1)`
    (per index column for the N-d ops). Calls whose data shape is not static are left as they are.
    """
    import numpy as np
    from tvm import relax

    @relax.expr_functor.mutator
    class _Clamp(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            name = _op_name(call)
            if name not in _INDEXING:
                return call
            if name == "relax.take":
                if str(getattr(call.attrs, "mode", "fast")) != "fast":
                    return call
                return relax.op.take(call.args[0], call.args[1], call.attrs.axis, mode="clip")
            extents = _index_extents(call)
            pos = _INDEXING[name]
            indices = call.args[pos]
            dtype = str(getattr(indices.ty, "dtype", ""))
            if not extents or min(extents) < 1 or not dtype.startswith(("int", "uint")):
                return call
            hi = np.asarray([e - 1 for e in extents] if name in _ND else extents[0] - 1, dtype=dtype)
            lo = -extents[0] if name in _NEGATIVE_OK and not dtype.startswith("uint") else 0
            clamped = relax.op.minimum(relax.op.maximum(indices, relax.const(lo, dtype)), relax.const(hi, dtype))
            args = list(call.args)
            args[pos] = self.builder_.emit(clamped)
            return relax.Call(call.op, args, call.attrs, call.ty_args)

    from .relax_passes import mutator_pass

    return mutator_pass(_Clamp, "AutoglmClampIndices")
