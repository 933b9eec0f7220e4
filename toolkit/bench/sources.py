"""Which model file the baseline (and the output check) runs: the user's original, or the artifact's copy."""

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


def resolve_source(artifact: Path, manifest: dict[str, Any], model_file: Path | None) -> ModelSource | None:
    """The file a reference runtime should run for this artifact, or None when there is none."""
    model = manifest["model"]
    fmt = model["format"]
    if model_file is not None:
        model_file = Path(model_file)
        given = _SUFFIX.get(model_file.suffix.lower())
        if given != fmt:
            raise BenchUsageError(f"--model-file {model_file} is not a .{fmt} file, but {artifact} was built from a {fmt} "
                                  f"model ({model['source_file']})")
        if sha256_file(model_file) != model["sha256"]:
            raise BenchUsageError(f"--model-file {model_file} is not the model {artifact} was built from (its sha256 "
                                  f"differs from the manifest's {model['sha256'][:12]}...); pass {model['source_file']}")
        return ModelSource(model_file, fmt, "model-file")
    files = manifest.get("files", {})
    if fmt == "onnx" and "prepared.onnx" in files:
        return ModelSource(artifact / "prepared.onnx", fmt, "prepared.onnx")
    if fmt == "tflite" and SOURCE_TFLITE in files:
        return ModelSource(artifact / SOURCE_TFLITE, fmt, "artifact-source")
    return None


def missing_source_message(artifact: Path, manifest: dict[str, Any], runtime: str) -> str:
    m = manifest["model"]
    return (f"the {runtime} baseline needs the model {artifact} was built from ({m['source_file']}, {m['format']}), which "
            f"does not ship in the artifact: pass --model-file {m['source_file']}")
