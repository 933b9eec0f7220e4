"""Training a network of a search space: from scratch, optionally distilled from a teacher, early-stopped on validation loss."""

from __future__ import annotations

import contextlib
import copy
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..datasets import Dataset, Split, resize

Progress = Callable[[str], None]


@dataclass
class TrainConfig:
    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch: int = 64
    patience: int = 6                 # epochs without a better validation loss before stopping
    kd_alpha: float = 0.5             # weight of the distillation term (0: plain cross-entropy)
    kd_temperature: float = 4.0
    seed: int = 0


@dataclass
class TrainResult:
    val_loss: float
    val_accuracy: float
    test_accuracy: float
    epochs: int                       # epochs run (early stopping may end before TrainConfig.epochs)
    best_epoch: int


@contextlib.contextmanager
def torch_threads():
    """Train on AUTOGLM_TRAIN_THREADS threads (default 1): these small networks train no faster on more, and
    torch's threads spin-wait (measured 40x slower) whenever another process holds a core."""
    n = int(os.environ.get("AUTOGLM_TRAIN_THREADS", "1"))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tensors(split: Split, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) as tensors: images resized to `resolution`; token sequences (2-D integer ids) as they are."""
    if split.x.ndim == 2:
        if split.x.shape[1] != resolution:
            raise ValueError(f"sequences have length {split.x.shape[1]}, the network takes {resolution}")
        return torch.from_numpy(np.ascontiguousarray(split.x, np.int64)), torch.from_numpy(split.y)
    return torch.from_numpy(np.ascontiguousarray(resize(split.x, resolution))), torch.from_numpy(split.y)


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) of `model` (a module, put in eval mode, or any callable) on (x, y)."""
    if isinstance(model, nn.Module):
        model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        out = model(x[i:i + batch])
        loss += float(F.cross_entropy(out, y[i:i + batch], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + batch]).sum())
    return loss / len(y), correct / len(y)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """Hinton et al.: (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)."""
    ce = F.cross_entropy(student, labels)
    if alpha == 0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


def train(model: nn.Module, data: Dataset, resolution: int, cfg: TrainConfig, teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
          progress: Progress | None = None, label: str = "train") -> TrainResult:
    """Train `model` on data.train, keep the weights of the epoch with the lowest validation loss."""
    with torch_threads():
        return _train(model, data, resolution, cfg, teacher, progress, label)


def _train(model: nn.Module, data: Dataset, resolution: int, cfg: TrainConfig, teacher, progress: Progress | None,
           label: str) -> TrainResult:
    say = progress or (lambda _m: None)
    torch.manual_seed(cfg.seed)
    x, y = tensors(data.train, resolution)
    xv, yv = tensors(data.val, resolution)
    xt, yt = tensors(data.test, resolution)
    soft = None
    if teacher is not None and cfg.kd_alpha > 0:
        with torch.no_grad():
            soft = torch.cat([teacher(x[i:i + 512]) for i in range(0, len(y), 512)])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * math.ceil(len(y) / cfg.batch))
    gen = torch.Generator().manual_seed(cfg.seed)
    best = (math.inf, 0.0, -1)
    best_state = copy.deepcopy(model.state_dict())
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), cfg.batch):
            idx = order[i:i + cfg.batch]
            out = model(x[idx])
            loss = distillation_loss(out, soft[idx], y[idx], cfg.kd_alpha, cfg.kd_temperature) if soft is not None \
                else F.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        vl, va = evaluate(model, xv, yv)
        if vl < best[0]:
            best, best_state = (vl, va, epoch), copy.deepcopy(model.state_dict())
        if epoch == 1 or epoch % 5 == 0:
            say(f"{label}: epoch {epoch}/{cfg.epochs}: val loss {vl:.3f}, val accuracy {100 * va:.1f}%")
        if epoch - best[2] >= cfg.patience:
            say(f"{label}: early stop at epoch {epoch} (best val loss at epoch {best[2]})")
            break
    model.load_state_dict(best_state)
    _, ta = evaluate(model, xt, yt)
    return TrainResult(best[0], best[1], ta, epoch, best[2])
