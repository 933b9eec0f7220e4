"""Which model file the baseline (and the output check) runs: the user's original, or the artifact's copy.

An int8 artifact that `compile --int8` quantized from a float model is the exception: its reference is
always the quantized model in the artifact (the QDQ graph, or the full-integer source.tflite), and
`--model-file` names the float model it was quantized from, which the same reference runtime then times
as a second baseline ("onnxruntime fp32", "litert fp32").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compile.artifact import SOURCE_TFLITE
from compile.frontend import sha256_file

from .errors import BenchUsageError

RUNTIME_FOR_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}
_SUFFIX = {".onnx": "onnx", ".tflite": "tflite"}


@dataclass(frozen=True)
class ModelSource:
    path: Path
    format: str
    origin: str  # "model-file" (the original, given with --model-file) | "prepared.onnx" | "artifact-source"

    def describe(self) -> str:
        return {"model-file": f"the original model {self.path} (--model-file)",
                "prepared.onnx": "prepared.onnx from the artifact (the shape-fixed, simplified graph TVM imported)",
                "artifact-source": f"{self.path.name}, the source model shipped in the artifact"}[self.origin]


@dataclass(frozen=True)
class Sources:
    """The model the reference runtime (and the baseline) runs, and for an int8 artifact the float model."""

    reference: ModelSource | None
    fp32: ModelSource | None = None


def fp32_runtime(fmt: str) -> str:
    """The label of the runtime that times an int8 artifact's float model ("onnxruntime fp32", "litert fp32")."""
    return f"{RUNTIME_FOR_FORMAT[fmt]} fp32"


def quantized_from_float(manifest: dict[str, Any]) -> bool:
    """An int8 artifact `compile --int8` calibrated from a float model (manifest["model"] is that model).

    A QDQ model quantized elsewhere has no calibration in the manifest: its manifest["model"] is the QDQ
    file itself, and there is no float model to speak of."""
    p = manifest.get("precision") or {}
    return p.get("mode") == "int8" and p.get("calibration") is not None


def _checked_model_file(artifact: Path, manifest: dict[str, Any], model_file: Path) -> ModelSource:
    """--model-file, refused in one line unless it is the file manifest["model"] describes."""
    model = manifest["model"]
    fmt = model["format"]
    model_file = Path(model_file)
    given = _SUFFIX.get(model_file.suffix.lower())
    if given != fmt:
        raise BenchUsageError(f"--model-file {model_file} is not a .{fmt} file, but {artifact} was built from a {fmt} "
                              f"model ({model['source_file']})")
    digest = sha256_file(model_file)
    if digest == model["sha256"]:
        return ModelSource(model_file, fmt, "model-file")
    if quantized_from_float(manifest):
        # the likeliest mistake: the QDQ model (this artifact's or a copy) instead of the float one
        own = {manifest.get("files", {}).get(f) for f in ("prepared.onnx", "quantized.onnx", SOURCE_TFLITE)} - {None}
        what = "is this artifact's quantized model" if digest in own else "is not the float model"
        raise BenchUsageError(f"--model-file {model_file} {what}: for an int8 artifact it names the float model "
                              f"{artifact} was quantized from (sha256 {model['sha256'][:12]}...); pass "
                              f"{model['source_file']}")
    raise BenchUsageError(f"--model-file {model_file} is not the model {artifact} was built from (its sha256 "
                          f"differs from the manifest's {model['sha256'][:12]}...); pass {model['source_file']}")


def resolve_sources(artifact: Path, manifest: dict[str, Any], model_file: Path | None) -> Sources:
    """The files reference runtimes should run for this artifact (a usage error for a wrong --model-file)."""
    fmt = manifest["model"]["format"]
    given = _checked_model_file(artifact, manifest, model_file) if model_file is not None else None
    int8_from_float = quantized_from_float(manifest)
    if given is not None and not int8_from_float:
        return Sources(given)
    # an int8 artifact's outputs are checked against its quantized model, never the float model --model-file names
    files = manifest.get("files", {})
    fp32 = given if int8_from_float else None
    if fmt == "onnx" and "prepared.onnx" in files:
        return Sources(ModelSource(artifact / "prepared.onnx", fmt, "prepared.onnx"), fp32)
    if fmt == "tflite" and SOURCE_TFLITE in files:
        return Sources(ModelSource(artifact / SOURCE_TFLITE, fmt, "artifact-source"), fp32)
    return Sources(None, fp32)


def resolve_source(artifact: Path, manifest: dict[str, Any], model_file: Path | None) -> ModelSource | None:
    """The file a reference runtime should run for this artifact, or None when there is none."""
    return resolve_sources(artifact, manifest, model_file).reference


def missing_source_message(artifact: Path, manifest: dict[str, Any], runtime: str) -> str:
    m = manifest["model"]
    return (f"the {runtime} baseline needs the model {artifact} was built from ({m['source_file']}, {m['format']}), which "
            f"does not ship in the artifact: pass --model-file {m['source_file']}")


def fp32_hint(manifest: dict[str, Any]) -> str:
    """The note of an int8 run whose float model was not given."""
    return (f"pass --model-file {manifest['model']['source_file']} (the float model) to time "
            f"{fp32_runtime(manifest['model']['format'])} in the same run")
