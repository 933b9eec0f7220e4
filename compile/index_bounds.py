"""Which model inputs index a table, and the range their values must stay in.

TVM compiles `take` (ONNX Gather, embedding lookups) and `gather_elements` in "fast" mode: an
index past the table reads memory outside it (garbage, or a segfault). onnxruntime refuses such
indices. The toolkit records, per integer input that reaches such an op's indices unchanged,
the range [lo, hi] every value must lie in; both runtimes check inputs against it before running.

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
_INDEXING = {"relax.take": 1, "relax.gather_elements": 1}  # op -> position of the indices argument


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
        axis = getattr(value.attrs, "axis", 0)
        n = _static_dim(value.args[0], int(axis)) if axis is not None else _static_size(value.args[0])
        if n is None or n < 1:
            continue
        trace(value.args[_INDEXING[_op_name(value)]], 0, n - 1)
    return {name: b for name, b in bounds.items() if b[0] <= b[1]}
