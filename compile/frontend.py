"""Model import: read an ONNX or TFLite file, fix its input shapes, and turn it into Relax IR."""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AutoglmError, CompileFailure, ModelFormatError, UnsupportedOperatorError, UsageError

ONNX = "onnx"
TFLITE = "tflite"


@dataclass(frozen=True)
class TensorSpec:
    """Name, fixed shape and dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(data["name"], tuple(int(d) for d in data["shape"]), data["dtype"])


@dataclass
class ImportedModel:
    """A model read from disk, with fixed input shapes, imported into Relax."""

    path: Path
    format: str
    sha256: str
    inputs: list[TensorSpec]
    mod: Any  # tvm.IRModule
    output_names: list[str]
    notes: list[str] = field(default_factory=list)
    prepared_onnx: bytes | None = None  # the simplified ONNX that was imported

    @property
    def name(self) -> str:
        return self.path.stem


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_shape_overrides(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse `--input-shape name=d0,d1,...` values."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise UsageError(f"--input-shape {item!r} is not NAME=D0,D1,... with positive integers, e.g. x=1,3,224,224") from None
        shapes[name] = shape
    return shapes


def detect_format(path: Path) -> str:
    """ONNX or TFLite, by content (TFLite flatbuffers carry 'TFL3' at byte 4)."""
    if not path.exists():
        raise ModelFormatError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelFormatError(f"{path} is a directory; pass an .onnx or .tflite file")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return TFLITE
    if path.suffix.lower() == ".tflite":
        raise ModelFormatError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier); is the file truncated or corrupt?")
    return ONNX


def load_model(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ImportedModel:
    """Read a model file and import it into Relax with every input dimension fixed."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == TFLITE:
        return _load_tflite(path, input_shapes or {})
    return _load_onnx(path, input_shapes or {})


# --------------------------------------------------------------------------- ONNX


def _read_onnx(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFormatError(
            f"{path} is neither a TFLite file nor a readable ONNX model ({first}); is it truncated or corrupt?"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise ModelFormatError(f"{path} is not an ONNX model (no graph); pass an .onnx or .tflite file")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFormatError(f"{path} is not a valid ONNX model: {first}; is it truncated or corrupt?") from None
    return model


def onnx_input_specs(model) -> list[tuple[str, list[int | str], str]]:
    """Graph inputs that are not initializers: (name, dims with dynamic ones as names, dtype)."""
    from onnx import helper

    init = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in init:
            continue
        tt = inp.type.tensor_type
        dims: list[int | str] = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:
                dims.append(d.dim_param or f"?{i}")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        specs.append((inp.name, dims, dtype))
    return specs


def fix_shapes(
    declared: list[tuple[str, list[int | str], str]], overrides: dict[str, tuple[int, ...]]
) -> list[TensorSpec]:
    """Resolve every input's shape from the model and `--input-shape`; name what is still dynamic."""
    names = [n for n, _, _ in declared]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UsageError(f"--input-shape names {', '.join(unknown)}, but the model's inputs are: {', '.join(names)}")
    specs, dynamic = [], []
    for name, dims, dtype in declared:
        if name in overrides:
            shape = overrides[name]
            if len(shape) != len(dims):
                raise UsageError(f"--input-shape {name} has {len(shape)} dimensions but the model's input has {len(dims)}: {_fmt(dims)}")
            for want, got in zip(dims, shape):
                if isinstance(want, int) and want != got:
                    raise UsageError(f"--input-shape {name}={','.join(map(str, shape))} conflicts with the model's fixed shape {_fmt(dims)}")
        elif all(isinstance(d, int) for d in dims):
            shape = tuple(int(d) for d in dims)
        else:
            dynamic.append(f"{name} {_fmt(dims)}")
            continue
        specs.append(TensorSpec(name, tuple(shape), dtype))
    if dynamic:
        example = declared[0][0]
        raise UsageError(
            f"inputs with dynamic dimensions: {'; '.join(dynamic)}; fix them with --input-shape NAME=D0,D1,... "
            f"(e.g. --input-shape {example}=1,3,224,224)"
        )
    return specs


def _fmt(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _simplify_onnx(model, specs: list[TensorSpec], notes: list[str], problems: list[str] | None = None):
    """Fix the input shapes in the graph and fold shape subgraphs and constant `If`s so TVM's importer accepts them.

    `problems` collects `If` branches found invalid for the fixed shapes (used to explain an import failure).
    """
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    by_name = {s.name: s for s in specs}
    for inp in fixed.graph.input:
        if inp.name in by_name:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, by_name[inp.name].shape):
                d.Clear()
                d.dim_value = v
    # Values whose shape was dynamic must be re-inferred from the fixed inputs.
    del fixed.graph.value_info[:]
    for out in fixed.graph.output:
        out.type.tensor_type.ClearField("shape")
    # Scalars are left out: onnxslim cannot parse an empty dimension list, and the graph already says 0-d.
    input_shapes = [f"{s.name}:{','.join(map(str, s.shape))}" for s in specs if s.shape]
    return _simplify_fixed(fixed, input_shapes, notes, problems=problems)


def _slim_and_infer(model, input_shapes: list[str] | None, notes: list[str], where: str = "the model"):
    import onnx
    import onnxslim

    try:
        slim = onnxslim.slim(model, input_shapes=input_shapes or None)
        if slim is not None:
            model = slim
    except Exception as exc:  # onnxslim is an optimisation; import may still work without it
        notes.append(f"onnxslim could not simplify {where} ({type(exc).__name__}: {exc}); imported as is")
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        notes.append(f"ONNX shape inference failed on {where} ({exc}); imported without it")
    return model


# Bounds on the fold/simplify rounds: each round removes at least one If, and Ifs nest only a few deep.
_MAX_IF_ROUNDS = 16
_MAX_IF_DEPTH = 6


def _simplify_fixed(model, input_shapes: list[str] | None, notes: list[str], where: str = "the model", depth: int = 0,
                    problems: list[str] | None = None):
    """onnxslim + shape inference, then inline every `If` whose condition became constant, until none is left.

    onnxslim folds most constant-condition `If`s itself, but not those whose condition only becomes
    constant after an earlier fold, nor any when it fails; what remains (a condition on a runtime
    input) keeps its `If`, and each branch is simplified on its own (see `_simplify_if_branches`).
    """
    model = _slim_and_infer(model, input_shapes, notes, where)
    for _ in range(_MAX_IF_ROUNDS):
        if not _inline_constant_ifs(model.graph):
            break
        model = _slim_and_infer(model, input_shapes, notes, where)
    if depth < _MAX_IF_DEPTH and any(n.op_type == "If" for n in model.graph.node):
        _simplify_if_branches(model, notes, depth, problems if problems is not None else [])
    return model


def _constant_values(graph, names: set[str]) -> dict[str, np.ndarray]:
    """Values of those `names` that are initializers or Constant node outputs of the graph."""
    from onnx import helper, numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer if init.name in names}
    for node in graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.output[0] not in names:
            continue
        a = node.attribute[0]
        if a.name == "value":
            values[node.output[0]] = numpy_helper.to_array(a.t)
        elif a.name in ("value_int", "value_float", "value_ints", "value_floats"):
            values[node.output[0]] = np.array(helper.get_attribute_value(a))
    return values


def _inline_constant_ifs(graph) -> int:
    """Replace each `If` of `graph` whose condition is a constant by the nodes of the branch it takes.

    The branch's outputs reach the `If`'s output names through Identity nodes (onnxslim removes
    them) rather than by renaming, because a branch output may also be an outer value or be read
    inside nested branches. ONNX names are unique across scopes, so the inlined names cannot clash.
    """
    from onnx import helper

    consts = _constant_values(graph, {n.input[0] for n in graph.node if n.op_type == "If" and n.input})
    if not consts:
        return 0
    nodes, inlined = [], 0
    for node in graph.node:
        cond = consts.get(node.input[0]) if node.op_type == "If" else None
        if cond is None or cond.size != 1:
            nodes.append(node)
            continue
        name = "then_branch" if bool(cond.reshape(())) else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == name)
        graph.initializer.extend(branch.initializer)
        nodes.extend(branch.node)
        for src, dst in zip(branch.output, node.output):
            if dst:
                nodes.append(helper.make_node("Identity", [src.name], [dst], name=f"{node.name}/{name}/{dst}"))
        inlined += 1
    if inlined:
        del graph.node[:]
        graph.node.extend(nodes)
    return inlined


def _free_names(graph) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for a in node.attribute:
            if a.HasField("g"):
                used |= _free_names(a.g)
        defined.update(node.output)
    return used - defined


def _simplify_if_branches(model, notes: list[str], depth: int, problems: list[str]) -> None:
    """Simplify, in place, each branch of the `If`s left in the main graph as a model of its own.

    TVM imports a runtime `If` as a Relax `If`, but onnxslim does not look inside branches, so shape
    subgraphs there (Shape -> Gather -> Reshape, nested `If`s on shapes) would reach the importer. A
    branch becomes a standalone model whose inputs are the outer values it reads, with the shapes
    shape inference gave them; a branch that reads an outer value of unknown shape is left as it is.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    outer_consts = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            outer_consts[t.name] = t
    types = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    for node in graph.node:
        if node.op_type != "If":
            continue
        for attr in node.attribute:
            if not attr.HasField("g"):
                continue
            branch = attr.g
            where = f"branch {attr.name} of If node '{node.name}'"
            free = sorted(_free_names(branch))
            inputs, inits = [], []
            for name in free:
                if name in outer_consts:
                    inits.append(outer_consts[name])
                elif name in types and _static_type(types[name]):
                    inputs.append(types[name])
                else:
                    notes.append(f"{where} reads '{name}', whose shape is unknown; branch imported as is")
                    break
            else:
                outputs = []
                for out in branch.output:
                    vi = onnx.ValueInfoProto()
                    vi.CopyFrom(out)
                    vi.type.tensor_type.ClearField("shape")  # re-inferred from the fixed inputs
                    outputs.append(vi)
                sub = helper.make_model(
                    helper.make_graph(list(branch.node), branch.name or attr.name, inputs, outputs,
                                      [*inits, *branch.initializer]),
                    opset_imports=list(model.opset_import), ir_version=model.ir_version,
                )
                sub = _simplify_fixed(sub, None, notes, where, depth + 1, problems)
                invalid = _strict_inference_error(sub)
                if invalid:
                    problems.append(
                        f"the {attr.name} of If node '{node.name}', chosen at run time from "
                        f"{_describe_sources(graph, node.input[0]) if depth == 0 else 'a run-time value'}, is invalid for the fixed input shapes ({invalid})"
                    )
                if set(_free_names(sub.graph)) - set(free) or [o.name for o in sub.graph.output] != [o.name for o in branch.output]:
                    notes.append(f"{where}: simplification renamed values; branch imported as is")
                    continue
                # Outer constants copied in for folding stay in the outer scope; new constants go into the branch.
                kept = [i for i in sub.graph.initializer
                        if i.name not in outer_consts or i.SerializeToString() != outer_consts[i.name].SerializeToString()]
                new = helper.make_graph(list(sub.graph.node), branch.name, [], list(sub.graph.output), kept,
                                        value_info=list(sub.graph.value_info))
                branch.CopyFrom(new)


def _strict_inference_error(model) -> str | None:
    """The first error strict ONNX shape inference finds in `model`, as 'OP node 'NAME': message', or None."""
    import re

    import onnx

    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        return None
    except Exception as exc:
        text = str(exc)
    # Errors nest ("Inference error(s): (op_type:If ...): ... (op_type:LSTM, node name: N): message"): the innermost says why.
    for m in re.finditer(r"\(op_type:(\w+)(?:, node name: ([^)]*))?\): \[\w+\] ([^\n]*)", text):
        if not m.group(3).startswith("Inference error"):
            node = f"{m.group(1)} node '{m.group(2)}'" if m.group(2) else f"a {m.group(1)} node"
            return f"{node}: {m.group(3).strip()}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def _describe_sources(graph, name: str) -> str:
    """The graph inputs a value is computed from, e.g. "input 'sr'", or "a value computed in the graph"."""
    producers = {o: n for n in graph.node for o in n.output}
    graph_inputs = {i.name for i in graph.input}
    seen, stack, found = set(), [name], []
    while stack:
        v = stack.pop()
        if v in seen or not v:
            continue
        seen.add(v)
        if v in graph_inputs:
            found.append(v)
        elif v in producers:
            stack.extend(producers[v].input)
    if not found:
        return "a value computed in the graph"
    return ("input " if len(found) == 1 else "inputs ") + ", ".join(f"'{v}'" for v in sorted(found))


def _static_type(vi) -> bool:
    """A tensor type whose every dimension is a known number (0-d included)."""
    tt = vi.type.tensor_type
    return vi.type.HasField("tensor_type") and tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)


def _unsupported_onnx_ops(model) -> list[str]:
    """Nodes (in `If` branches too) that neither TVM's importer nor the toolkit's converters know."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from .onnx_ops import converters

    known = set(_get_convert_map()) | set(converters()) | {"If", "Constant"}
    missing: list[str] = []

    def walk(graph) -> None:
        for i, node in enumerate(graph.node):
            if node.op_type not in known:
                missing.append(f"{node.op_type} (node '{node.name or f'#{i}'}')")
            for a in node.attribute:
                if a.HasField("g"):
                    walk(a.g)

    walk(model.graph)
    return missing


def _load_onnx(path: Path, overrides: dict[str, tuple[int, ...]]) -> ImportedModel:
    model = _read_onnx(path)
    specs = fix_shapes(onnx_input_specs(model), overrides)
    notes: list[str] = []
    problems: list[str] = []
    prepared = _simplify_onnx(model, specs, notes, problems)
    missing = _unsupported_onnx_ops(prepared)
    if missing:
        raise UnsupportedOperatorError(
            f"TVM 0.27 cannot import {len(missing)} operator(s) of {path.name}: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}; replace them in the model with operators TVM imports and retry"
        )
    from tvm.relax.frontend.onnx import from_onnx

    from .onnx_ops import toolkit_converters

    opset = next((o.version for o in prepared.opset_import if o.domain in ("", "ai.onnx")), None)
    try:
        # The importer prints every failing node's inputs to stdout before re-raising: the error says enough.
        with toolkit_converters(), contextlib.redirect_stdout(io.StringIO()):
            mod = from_onnx(
                prepared,
                shape_dict={s.name: list(s.shape) for s in specs},
                dtype_dict={s.name: s.dtype for s in specs},
                opset=opset,
                keep_params_in_input=False,
            )
    except Exception as exc:
        if problems:
            # TVM compiles both branches of a run-time If: one that cannot work with these shapes is the cause.
            raise UnsupportedOperatorError(
                f"cannot import {path.name}: {problems[0]}; TVM compiles both branches of such an If, so give input "
                f"shapes valid for both, or use a model exported without that If (e.g. for one value of the input)"
            ) from None
        if isinstance(exc, AutoglmError):
            raise
        raise CompileFailure(f"TVM's ONNX importer failed on {path.name}: {_one_line(exc)}") from None
    return ImportedModel(
        path=path, format=ONNX, sha256=sha256_file(path), inputs=specs, mod=mod,
        output_names=[o.name for o in model.graph.output], notes=notes,
        prepared_onnx=prepared.SerializeToString(),
    )


# --------------------------------------------------------------------------- TFLite


def _tflite_dtype(code: int) -> str:
    import tflite

    names = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
    mapping = {"FLOAT32": "float32", "FLOAT16": "float16", "INT8": "int8", "UINT8": "uint8",
               "INT16": "int16", "INT32": "int32", "INT64": "int64", "BOOL": "bool"}
    name = names.get(code, str(code))
    if name not in mapping:
        raise UsageError(f"TFLite input type {name} is not supported; supported: {', '.join(mapping.values())}")
    return mapping[name]


def _load_tflite(path: Path, overrides: dict[str, tuple[int, ...]]) -> ImportedModel:
    import tflite

    buf = path.read_bytes()
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        graph = model.Subgraphs(0)
        declared = []
        for idx in graph.InputsAsNumpy():
            t = graph.Tensors(int(idx))
            sig = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
            dims = [int(d) if d > 0 else f"?{i}" for i, d in enumerate(sig)]
            declared.append((t.Name().decode(), dims, _tflite_dtype(t.Type())))
        output_names = [graph.Tensors(int(i)).Name().decode() for i in graph.OutputsAsNumpy()]
    except UsageError:
        raise
    except Exception as exc:
        raise ModelFormatError(f"{path} is not a readable TFLite model ({_one_line(exc)}); is it truncated or corrupt?") from None
    specs = fix_shapes(declared, overrides)
    custom = _tflite_custom_ops(model)
    if custom:
        names = ", ".join(f"{name} (x{count})" for name, count in custom.items())
        hints = "; ".join(_CUSTOM_OP_HINTS[n] for n in custom if n in _CUSTOM_OP_HINTS)
        raise UnsupportedOperatorError(
            f"{path.name} uses TFLite custom operator(s) {names}, which TVM cannot import; re-export the model "
            f"with builtin TFLite operators only{f' ({hints})' if hints else ''}, or compile its ONNX version"
        )
    from tvm.relax.frontend.tflite import from_tflite

    try:
        mod = from_tflite(model, shape_dict={s.name: s.shape for s in specs}, dtype_dict={s.name: s.dtype for s in specs},
                          op_converter=_tflite_converter_class())
    except Exception as exc:
        import tvm

        cls = UnsupportedOperatorError if isinstance(exc, tvm.error.OpNotImplemented) else CompileFailure
        raise cls(f"TVM's TFLite importer failed on {path.name}: {_one_line(exc)}") from None
    return ImportedModel(path=path, format=TFLITE, sha256=sha256_file(path), inputs=specs, mod=mod,
                         output_names=output_names)


# How to replace the custom operators MediaPipe models carry (what their builtin equivalent is).
_CUSTOM_OP_HINTS = {
    "Convolution2DTransposeBias": "Convolution2DTransposeBias is TRANSPOSE_CONV followed by ADD of the bias",
    "MaxPoolingWithArgmax2D": "MaxPoolingWithArgmax2D has no builtin equivalent: use MAX_POOL_2D and upsample instead of MaxUnpooling2D",
    "MaxUnpooling2D": "MaxUnpooling2D has no builtin equivalent: use RESIZE_NEAREST_NEIGHBOR or TRANSPOSE_CONV",
}

# Custom operators TVM's TFLite importer does convert.
_TVM_CUSTOM_OPS = {"TFLite_Detection_PostProcess"}


def _tflite_custom_ops(model) -> dict[str, int]:
    """Custom operators (by custom code, with their node counts) used anywhere in the model."""
    import tflite

    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
            # TFLite >= 2.4 keeps the builtin code in a 32-bit field and a deprecated 8-bit one.
            builtin = max(code.DeprecatedBuiltinCode(), code.BuiltinCode())
            if builtin != tflite.BuiltinOperator.CUSTOM:
                continue
            name = (code.CustomCode() or b"?").decode(errors="replace")
            if name not in _TVM_CUSTOM_OPS:
                counts[name] = counts.get(name, 0) + 1
    return counts


def _tflite_converter_class():
    """TVM's TFLite operator converter with a fix for sparse float16 weights.

    MediaPipe's sparse models (pose_detection, face_detection_full_range_sparse) store weights as
    sparse float16 tensors, expanded by DENSIFY and then DEQUANTIZE'd to float32. TVM 0.27's
    DEQUANTIZE reads a float16 input's buffer with `get_tensor_value`, but DENSIFY's output has no
    buffer: its dense value is a "prefetched" node, so the read failed with "a bytes-like object is
    required, not 'int'" (the flatbuffer returns 0 for an empty buffer). Reading prefetched values
    first is what TVM's own `get_tensor_value_or_prefetched` does; `from_tflite` takes the class.
    """
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

    class ToolkitTFLiteConverter(OperatorConverter):
        def get_tensor_value(self, tensor_wrapper, is_sparse=False):
            if not is_sparse and self.is_prefetched(tensor_wrapper.tensor_idx):
                return self.get_prefetched_node(tensor_wrapper.tensor_idx)
            return super().get_tensor_value(tensor_wrapper, is_sparse)

    return ToolkitTFLiteConverter


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # TVM errors put the message last, after a C++ backtrace.
    msg = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else type(exc).__name__)
    return msg[:400]
