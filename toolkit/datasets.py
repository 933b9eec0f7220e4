"""Datasets bundled with the toolkit's dependencies (no download), and the user's `.npz` files: splits as numpy arrays.

- `digits`: scikit-learn's 1797 8x8 handwritten digits, scaled to [0, 1].
- `digits-hard`: the same digits made harder to read, deterministically (seed 1234): each is zoomed by
  1.2-2.0x, rotated by up to 35 degrees, placed at a random spot of a 16x16 canvas, overlaid with a 5x5
  fragment of another digit and Gaussian noise (sigma 0.15); two variants per digit (3594 samples), both
  in the same split. Small and shallow networks lose accuracy on it, so architectures differ.
- a path to a `.npz` with `x` ([N, C, H, W] or [N, H, W] float) and `y` ([N] integer classes).

Splits are 60/20/20 train/val/test, seeded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compile import UsageError

DATASETS = ("digits", "digits-hard")
HARD_SIZE, HARD_VARIANTS, HARD_SEED = 16, 2, 1234


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # [N, C, H, W] float32
    y: np.ndarray  # [N] int64


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    classes: int
    sha256: str = ""  # of the samples and labels, for lineage

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one sample."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images.astype(np.float32) / 16.0)[:, None], data.target.astype(np.int64)


def _digits_hard(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The harder variants and, per variant, the index of the digit it came from (splits keep them together)."""
    from scipy import ndimage

    rng = np.random.default_rng(HARD_SEED)
    n, size = len(y), HARD_SIZE
    out = np.zeros((n * HARD_VARIANTS, 1, size, size), np.float32)
    origin = np.repeat(np.arange(n), HARD_VARIANTS)
    for i, src in enumerate(origin):
        img = ndimage.zoom(x[src, 0], rng.uniform(1.2, 2.0), order=1)
        img = np.clip(ndimage.rotate(img, rng.uniform(-35, 35), reshape=False, order=1), 0, 1)
        h = min(img.shape[0], size)
        r, c = rng.integers(0, size - h + 1, 2)
        canvas = np.zeros((size, size), np.float32)
        canvas[r:r + h, c:c + h] = img[:h, :h]
        other = x[rng.integers(n), 0]
        fr, fc, pr, pc = rng.integers(0, 4), rng.integers(0, 4), rng.integers(0, size - 5), rng.integers(0, size - 5)
        canvas[pr:pr + 5, pc:pc + 5] = np.maximum(canvas[pr:pr + 5, pc:pc + 5], other[fr:fr + 5, fc:fc + 5])
        canvas += rng.normal(0, 0.15, canvas.shape).astype(np.float32)
        out[i, 0] = np.clip(canvas, 0, 1)
    return out, y[origin], origin


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise UsageError(f"{path} must hold arrays 'x' (samples) and 'y' (integer labels); it has {', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable .npz file ({' '.join(str(e).split())})") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise UsageError(f"{path}: 'x' has shape {list(x.shape)}; give [N, C, H, W] (or [N, H, W]) with square images")
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise UsageError(f"{path}: 'x' must be finite floats (it is {x.dtype})")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or len(y) < 10 or y.min() < 0:
        raise UsageError(f"{path}: 'y' must be {len(x)} non-negative integer labels, one per sample (at least 10 samples)")
    return x.astype(np.float32), y.astype(np.int64)


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """A built-in dataset by name, or a user's `.npz` file, split 60/20/20 (seeded)."""
    groups = None
    if name == "digits":
        x, y = _digits()
    elif name == "digits-hard":
        x, y, groups = _digits_hard(*_digits())
    elif name.endswith(".npz"):
        if not Path(name).is_file():
            raise UsageError(f"dataset file {name} does not exist")
        x, y = _npz(Path(name))
    else:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, or a path to a .npz file with x and y")
    ids = groups if groups is not None else np.arange(len(y))
    n = int(ids.max()) + 1
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(0.6 * n), int(0.8 * n)
    members = np.argsort(ids, kind="stable").reshape(n, -1) if groups is not None else np.arange(n)[:, None]
    parts = [members[order[:a]].ravel(), members[order[a:b]].ravel(), members[order[b:]].ravel()]  # variants stay together
    train, val, test = (Split(x[p], y[p]) for p in parts)
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
    return Dataset(Path(name).name if name.endswith(".npz") else name, train, val, test, int(y.max()) + 1, digest)


def resize(x: np.ndarray, size: int) -> np.ndarray:
    """Samples [N, C, H, W] resized (bilinear) to size x size: the architecture's input resolution."""
    if x.shape[-1] == size:
        return x
    import torch

    t = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
    return t.numpy()
