"""Datasets bundled with the toolkit's dependencies (no download), and the user's `.npz` files: splits as numpy arrays.

- `digits`: scikit-learn's 1797 8x8 handwritten digits, scaled to [0, 1].
- `digits-hard`: the same digits made harder to read, deterministically (seed 1234): each is zoomed by
  1.2-2.0x, rotated by up to 35 degrees, placed at a random spot of a 16x16 canvas, overlaid with a 5x5
  fragment of another digit and Gaussian noise (sigma 0.15); two variants per digit (3594 samples), both
  in the same split. Small and shallow networks lose accuracy on it, so architectures differ.
- `text-recall`: a text task (sequence classification, for the `tiny-transformer` space), generated
  deterministically (seed 4321): 4000 sequences of 24 token ids from a vocabulary of 32, 4 classes (1000 each).
  Token 0 is unused, token 1 is a marker, tokens 2..5 are the four value tokens (class c <-> token 2 + c),
  tokens 6..31 are filler. Each sequence is uniform filler; then 2-4 distractor value tokens (uniform over the
  four) at distinct random positions; then the marker at a random position p in [0, 22] and the label's value
  token at p + 1 (distractors never sit at p or p + 1, and the marker appears exactly once). The label is the
  value token right after the marker: counting tokens (a bag-of-tokens model) solves it only in part, since
  distractors are value tokens too; attending from the marker to its next position solves it.
- a path to a `.npz` with `x` and `y` ([N] non-negative integer classes): images, `x` [N, C, H, W] or
  [N, H, W] finite floats (square); or text, `x` [N, L] non-negative integer token ids.

Samples are images (`Dataset.kind == "image"`: `Split.x` float32 [N, C, H, W]) or text (`"text"`: `Split.x`
int64 [N, L], `Dataset.vocab` the largest id + 1). `resize` is for images only: text passes through it unchanged
when the size asked for is its sequence length (so `train(model, data, seq_len, cfg)` works), else it is refused.

Splits are 60/20/20 train/val/test, seeded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compile import UsageError

DATASETS = ("digits", "digits-hard", "text-recall")
HARD_SIZE, HARD_VARIANTS, HARD_SEED = 16, 2, 1234
# text-recall: vocabulary, sequence length, classes, sequences, seed; token roles
TEXT_VOCAB, TEXT_LEN, TEXT_CLASSES, TEXT_SIZE, TEXT_SEED = 32, 24, 4, 4000, 4321
MARKER, VALUE0, FILLER0 = 1, 2, 6
MAX_TOKEN = 2**31 - 1  # the largest token id a .npz may hold


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # images: [N, C, H, W] float32; text: [N, L] int64 token ids
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
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample: (channels, height, width) for images, (seq_len,) for text."""
        return tuple(self.train.x.shape[1:])

    @property
    def kind(self) -> str:
        """"text" when x is [N, L] integer token ids, else "image" (x [N, C, H, W] float: what load_dataset gives)."""
        x = self.train.x
        return "text" if x.ndim == 2 and np.issubdtype(x.dtype, np.integer) else "image"

    @property
    def vocab(self) -> int | None:
        """Text: the largest token id in any split + 1; images: None."""
        if self.kind != "text":
            return None
        return int(max(int(s.x.max()) for s in (self.train, self.val, self.test) if s.x.size)) + 1


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


def _text_recall() -> tuple[np.ndarray, np.ndarray]:
    """The text-recall sequences and labels (the recipe is in the module docstring)."""
    rng = np.random.default_rng(TEXT_SEED)
    n, length = TEXT_SIZE, TEXT_LEN
    y = rng.permutation(np.arange(n) % TEXT_CLASSES).astype(np.int64)
    x = rng.integers(FILLER0, TEXT_VOCAB, (n, length)).astype(np.int64)
    rows = np.arange(n)
    p = rng.integers(0, length - 1, n)                       # the marker's position, 0..L-2
    # distractors: 2-4 distinct positions per sequence, drawn uniformly from those other than p and p + 1
    keys = rng.random((n, length))
    keys[rows, p] = keys[rows, p + 1] = np.inf
    spots = np.argsort(keys, axis=1, kind="stable")[:, :4]
    count = rng.integers(2, 5, n)
    values = rng.integers(VALUE0, VALUE0 + TEXT_CLASSES, (n, 4))
    for j in range(4):
        use = j < count
        x[rows[use], spots[use, j]] = values[use, j]
    x[rows, p], x[rows, p + 1] = MARKER, VALUE0 + y
    return x, y


def _npz_text(path: Path, x: np.ndarray) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.integer):
        raise UsageError(f"{path}: 'x' is 2-D, so it is read as text [N, L]; it must hold integer token ids (it is {x.dtype})")
    if x.shape[1] < 1:
        raise UsageError(f"{path}: 'x' has shape {list(x.shape)}; text sequences need at least one token")
    if x.size and (x.min() < 0 or x.max() > MAX_TOKEN):
        raise UsageError(f"{path}: 'x' token ids must be from 0 to {MAX_TOKEN} (they range {x.min()}..{x.max()})")
    return x.astype(np.int64)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise UsageError(f"{path} must hold arrays 'x' (samples) and 'y' (integer labels); it has {', '.join(data.files) or 'none'}")
            x, y = data["x"], data["y"]
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable .npz file ({' '.join(str(e).split())})") from None
    if x.ndim == 2:
        x = _npz_text(path, x)
    else:
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[2] != x.shape[3]:
            raise UsageError(f"{path}: 'x' has shape {list(x.shape)}; give [N, C, H, W] (or [N, H, W]) with square images, "
                             f"or [N, L] integer token ids for text")
        if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
            raise UsageError(f"{path}: 'x' must be finite floats (it is {x.dtype})")
        x = x.astype(np.float32)
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or len(y) < 10 or y.min() < 0:
        raise UsageError(f"{path}: 'y' must be {len(x)} non-negative integer labels, one per sample (at least 10 samples)")
    return x, y.astype(np.int64)


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """A built-in dataset by name, or a user's `.npz` file, split 60/20/20 (seeded)."""
    groups = None
    if name == "digits":
        x, y = _digits()
    elif name == "digits-hard":
        x, y, groups = _digits_hard(*_digits())
    elif name == "text-recall":
        x, y = _text_recall()
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
    """Image samples [N, C, H, W] resized (bilinear) to size x size: the architecture's input resolution.

    Text [N, L] is not resized: it is returned as it is when `size` is L, and refused otherwise."""
    if x.ndim == 2:
        if x.shape[1] != size:
            raise UsageError(f"text sequences have length {x.shape[1]} and are not resized; the architecture expects {size}")
        return x
    if x.shape[-1] == size:
        return x
    import torch

    t = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
    return t.numpy()
