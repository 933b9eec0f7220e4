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
    tflite_qdq: Any = None  # a full-integer TFLite model's QDQ graph (compile/tflite_int8.QdqConversion)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def quantized(self) -> bool:
        """A QDQ model (quantize/dequantize in the graph) or a full-integer TFLite model: built with integer
        kernels, checked within a few output steps against its literal execution (onnxruntime) or LiteRT."""
        from .int8 import is_quantized

        return is_quantized(self.mod)


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

    from .model_check import check_onnx_external_data

    check_onnx_external_data(path)  # untrusted paths: checked before onnx follows them

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
    mod, prepared = _import_onnx(model, specs, path.name, notes)
    return ImportedModel(
        path=path, format=ONNX, sha256=sha256_file(path), inputs=specs, mod=mod,
        output_names=[o.name for o in model.graph.output], notes=notes,
        prepared_onnx=prepared.SerializeToString(),
    )


def _import_onnx(model, specs: list[TensorSpec], label: str, notes: list[str]):
    """(Relax module, the simplified ONNX model that was imported) for an ONNX model with fixed input shapes."""
    problems: list[str] = []
    from .onnx_simplify import simplify_onnx

    prepared = simplify_onnx(model, specs, notes, problems)
    missing = _unsupported_onnx_ops(prepared)
    if missing:
        raise UnsupportedOperatorError(
            f"TVM 0.27 cannot import {len(missing)} operator(s) of {label}: {', '.join(missing[:5])}"
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
                f"cannot import {label}: {problems[0]}; TVM compiles both branches of such an If, so give input "
                f"shapes valid for both, or use a model exported without that If (e.g. for one value of the input)"
            ) from None
        if isinstance(exc, AutoglmError):
            raise
        raise CompileFailure(f"TVM's ONNX importer failed on {label}: {_one_line(exc)}") from None
    return mod, prepared


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


def read_tflite(path: Path):
    """(the file's bytes, the flatbuffer model, its declared inputs (name, dims, dtype), its output names)."""
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
    return buf, model, declared, output_names


def _load_tflite(path: Path, overrides: dict[str, tuple[int, ...]]) -> ImportedModel:
    buf, model, declared, output_names = read_tflite(path)
    specs = fix_shapes(declared, overrides)
    custom = _tflite_custom_ops(model)
    if custom:
        names = ", ".join(f"{name} (x{count})" for name, count in custom.items())
        hints = "; ".join(_CUSTOM_OP_HINTS[n] for n in custom if n in _CUSTOM_OP_HINTS)
        raise UnsupportedOperatorError(
            f"{path.name} uses TFLite custom operator(s) {names}, which TVM cannot import; re-export the model "
            f"with builtin TFLite operators only{f' ({hints})' if hints else ''}, or compile its ONNX version"
        )
    from .tflite_int8 import is_quantized_tflite, to_qdq_onnx

    if is_quantized_tflite(model):
        # TVM's TFLite importer cannot read quantized tensors: the same model as a QDQ graph, then the
        # integer rewrite every QDQ model gets (compile/tflite_int8.py)
        try:
            qdq = to_qdq_onnx(model, buf, {s.name: s.shape for s in specs})
        except AutoglmError as exc:
            raise type(exc)(f"{path.name}: {exc}") from None
        notes = ["a full-integer TFLite model, imported as a QDQ graph (compile/tflite_int8.py)"]
        mod, prepared = _import_onnx(qdq.model, specs, path.name, notes)
        return ImportedModel(path=path, format=TFLITE, sha256=sha256_file(path), inputs=specs, mod=mod,
                             output_names=output_names, notes=notes, prepared_onnx=prepared.SerializeToString(),
                             tflite_qdq=qdq)
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
