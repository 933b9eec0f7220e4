"""Datasets bundled with the toolkit's dependencies (no download): splits as numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compile import UsageError

DATASETS = ("digits",)


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


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """`digits`: scikit-learn's 1797 8x8 handwritten digits, scaled to [0, 1], split 60/20/20 (seeded)."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    a, b = int(0.6 * len(y)), int(0.8 * len(y))
    parts = [order[:a], order[a:b], order[b:]]
    train, val, test = (Split(x[p], y[p]) for p in parts)
    return Dataset(name, train, val, test, 10)
