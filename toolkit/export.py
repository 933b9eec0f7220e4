"""torch -> ONNX export, checked against onnxruntime before the file is kept."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from compile import UsageError, VerificationError

from . import models, search_space


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str | Path, *, input_name: str = "x",
                output_name: str = "y", opset: int = 17, atol: float = 1e-4) -> Path:
    """Export `module` to ONNX at `path` (atomically) and check it against onnxruntime on `example`."""
    import onnxruntime as ort

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=[input_name], output_names=[output_name])
            expected = module(example).numpy()
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(None, {input_name: example.numpy()})[0]
        err = float(np.abs(got - expected).max())
        if err > atol:
            raise VerificationError(f"the exported ONNX model differs from torch by {err:.3g} (> {atol:g}); not written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_zoo_model(name: str, path: str | Path, seed: int = 0) -> Path:
    """Export the built-in model `name` (see `toolkit.models.ZOO`) to ONNX."""
    if name not in models.ZOO:
        raise UsageError(f"unknown built-in model {name!r}; choose one of: {', '.join(models.ZOO)}")
    module, example = models.build(name, seed)
    return export_onnx(module, example, path, input_name=models.ZOO[name].input_name)


def export_architecture(arch_file: str | Path, path: str | Path, seed: int = 0) -> Path:
    """Export a member of the search space, described by an architecture JSON file, to ONNX (input `x`)."""
    arch = search_space.load_architecture(arch_file)
    module = models.with_weights(lambda: search_space.SearchNet(arch), seed)
    return export_onnx(module, models.example_input(search_space.input_shape(arch)), path)
