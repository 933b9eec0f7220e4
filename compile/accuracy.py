"""How far a quantized model's outputs are from the float reference: agreement, errors, task metric."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import UsageError

__all__ = ["accuracy_report", "load_labels"]


def load_labels(path, count: int) -> np.ndarray:
    """One integer label per sample, from a .npy file."""
    try:
        labels = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - unreadable: the user's to fix
        raise UsageError(f"--labels {path} is not a readable .npy file ({type(exc).__name__})") from None
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "iu":
        raise UsageError(f"--labels {path} holds {labels.dtype} values; give integer class labels")
    if labels.size != count:
        raise UsageError(f"--labels {path} has {labels.size} labels for {count} samples; give one per sample, "
                         f"in the order of the sorted sample files")
    return labels


def accuracy_report(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
                    reference: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
                    samples: list[dict[str, np.ndarray]], labels: np.ndarray | None = None) -> dict[str, Any]:
    """Compare `run` (the artifact) with `reference` (the float model) on every sample, first output.

    argmax agreement (for outputs with a class axis), max / mean absolute error, cosine similarity
    of the flattened outputs, and top-1 of both against `labels` when given.
    """
    got, want = [], []
    for sample in samples:
        got.append(np.asarray(run(sample)[0], dtype=np.float64))
        want.append(np.asarray(reference(sample)[0], dtype=np.float64))
    a, e = np.stack(got), np.stack(want)
    diff = np.abs(a - e)
    denom = float(np.linalg.norm(a.reshape(-1)) * np.linalg.norm(e.reshape(-1)))
    report: dict[str, Any] = {
        "samples": len(samples),
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "cosine_similarity": float(np.dot(a.reshape(-1), e.reshape(-1)) / denom) if denom > 0 else 1.0,
        "argmax_agreement": None, "top1": None, "reference_top1": None,
    }
    classes = a.shape[-1] if a.ndim >= 2 else 1
    if classes > 1:
        pa, pe = a.reshape(-1, classes).argmax(-1), e.reshape(-1, classes).argmax(-1)
        report["argmax_agreement"] = float((pa == pe).mean())
        if labels is not None:
            if pa.size != labels.size:
                raise UsageError(f"the model gives {pa.size} predictions for {labels.size} labels; "
                                 f"give one label per prediction")
            report["top1"] = float((pa == labels).mean())
            report["reference_top1"] = float((pe == labels).mean())
    return report
