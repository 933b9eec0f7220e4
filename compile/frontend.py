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


def _simplify_onnx(model, specs: list[TensorSpec], notes: list[str]):
    """Fix the input shapes in the graph and fold shape subgraphs so TVM's importer accepts them."""
    import onnx
    import onnxslim

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
    try:
        slim = onnxslim.slim(fixed, input_shapes=[f"{s.name}:{','.join(map(str, s.shape))}" for s in specs])
        if slim is not None:
            fixed = slim
    except Exception as exc:  # onnxslim is an optimisation; import may still work without it
        notes.append(f"onnxslim could not simplify the model ({type(exc).__name__}: {exc}); imported as is")
    try:
        fixed = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception as exc:
        notes.append(f"ONNX shape inference failed ({exc}); imported without it")
    return fixed


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
    prepared = _simplify_onnx(model, specs, notes)
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
    except AutoglmError:
        raise
    except Exception as exc:
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
    from tvm.relax.frontend.tflite import from_tflite

    try:
        mod = from_tflite(model, shape_dict={s.name: s.shape for s in specs}, dtype_dict={s.name: s.dtype for s in specs})
    except Exception as exc:
        import tvm

        cls = UnsupportedOperatorError if isinstance(exc, tvm.error.OpNotImplemented) else CompileFailure
        raise cls(f"TVM's TFLite importer failed on {path.name}: {_one_line(exc)}") from None
    return ImportedModel(path=path, format=TFLITE, sha256=sha256_file(path), inputs=specs, mod=mod,
                         output_names=output_names)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # TVM errors put the message last, after a C++ backtrace.
    msg = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else type(exc).__name__)
    return msg[:400]
