"""Checks of a model file made before it is imported: its ONNX external data stays beside it.

An ONNX file may keep weights in other files (`external_data` locations). Those are untrusted
paths: each must be relative, inside the model's directory (no `..`, no symbolic link out),
exist, and hold the bytes the tensor says it has. onnx refuses the bad ones too, but with a
traceback; this says which tensor and file, and what to do, in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelFormatError


def check_onnx_external_data(model_path: str | Path) -> None:
    """Raise ModelFormatError naming the tensor and file when an external-data reference is bad."""
    path = Path(model_path)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return  # other formats, and missing files, are the importer's to report
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file is the importer's to report, in its own words
        return
    base = Path(os.path.realpath(path.parent))
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        what = f"{path}: tensor {t.name!r} keeps its data in {loc!r}"
        if not loc:
            raise ModelFormatError(f"{path}: tensor {t.name!r} is stored externally but names no file; re-export the model")
        if os.path.isabs(loc) or any(p == ".." for p in Path(loc).parts):
            raise ModelFormatError(f"{what}, which is outside the model's directory; external data must lie beside the "
                                   f"model: move it there and re-save the model")
        full = base / loc
        real = Path(os.path.realpath(full))
        if real != base and base not in real.parents:
            raise ModelFormatError(f"{what}, a link that leads outside the model's directory; copy the file itself there")
        if not full.is_file():
            raise ModelFormatError(f"{what}, which does not exist in {base}; copy it there (it comes with the model)")
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelFormatError(f"{what} with a bad offset or length; re-export the model") from None
        size = full.stat().st_size
        if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
            raise ModelFormatError(f"{what}, which is shorter ({size} bytes) than the tensor needs; the file is "
                                   f"truncated or not this model's")
