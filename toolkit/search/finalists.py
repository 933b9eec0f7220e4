"""Finalists: the supernet's derivation and its alternatives, each fitted to the budget on the latency model,
then ranked by a short training from scratch on the validation split.

A supernet trained for a few epochs ranks ops poorly: on digits-hard it reached 40% validation accuracy in 6
epochs, and the net derived from it lost 3-6 points of test accuracy to MobileNetV2's recipe at 0.6x its
latency (BENCHMARKS.md). The supernet's likelihoods therefore only propose: its derivation, architectures
sampled from its distribution, and the space's reference recipe, each fitted to the same budget by
`search.fit_budget`; a few epochs of real training of each decide (the re-ranking step of one-shot search:
SPOS and Once-for-All rank sub-networks on validation data the same way, with inherited weights where
this trains briefly, since shared weights this undertrained do not rank them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
from torch.nn import functional as F

from ..datasets import Dataset
from . import spaces
from .latency import LatencyModel
from .search import count_skips, fit_budget
from .train import TrainConfig

Progress = Callable[[str], None]
DERIVED, REFERENCE, REFERENCE_FITTED, SAMPLED = ("supernet derivation", "reference recipe", "reference recipe, fitted",
                                                 "supernet sample, fitted")


@dataclass
class Finalist:
    source: str                        # DERIVED, REFERENCE or SAMPLED
    architecture: dict[str, Any]
    predicted_ms: float
    val_accuracy: float | None = None
    val_loss: float | None = None
    epochs: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def propose(derived: dict[str, Any], net: torch.nn.Module, model: LatencyModel, budget_ms: float | None,
            max_skips: int | None, count: int, seed: int) -> list[Finalist]:
    """Up to `count` distinct architectures, the derivation first: the space's reference recipe at the largest
    scale the model puts within the budget, as it is and fitted to the budget, and samples of the supernet's
    op and width distribution fitted to the budget (without a budget: to the derivation's predicted latency,
    the search's own trade-off). On digits-hard the reference recipe at its largest scale within a 0.1 ms
    budget (73.3% test accuracy at 0.080 ms) beat the supernet's budget-filling derivation (66.9%, all 7x7
    kernels): a briefly trained supernet prefers the largest ops while the budget has room, so the recipe
    is a finalist as it is too."""
    space = spaces.of(derived)
    meta = {k: derived[k] for k in space.META}
    budget = budget_ms if budget_ms is not None else model.predict(derived)
    out: list[Finalist] = []
    seen: set[str] = set()

    def add(source: str, arch: dict[str, Any]) -> None:
        key = space.describe(arch)
        if key not in seen and len(out) < count:
            seen.add(key)
            out.append(Finalist(source, arch, model.predict(arch)))

    add(DERIVED, derived)
    scaled = [space.baseline_for(meta, s) for s in (2, 1, 0)]
    reference = next((a for a in scaled if model.predict(a) <= budget), None)
    if reference is not None:  # as a person would scale it; the budget check may still grow it
        add(REFERENCE, reference)
    add(REFERENCE_FITTED, fit_budget(reference or scaled[-1], net, model, budget, max_skips)[0])
    gen = torch.Generator().manual_seed(seed)
    op_probs = F.softmax(net._logits().detach(), -1)
    width_probs = [F.softmax(w.detach(), -1) for w in net.width_logits]
    for _ in range(20 * count):
        if len(out) >= count:
            break
        ops = [int(torch.multinomial(p, 1, generator=gen)) for p in op_probs]
        widths = [int(torch.multinomial(p, 1, generator=gen)) for p in width_probs]
        arch = space.from_choices(meta, ops, widths)
        if max_skips is not None and count_skips(arch) > max_skips:
            continue
        add(SAMPLED, fit_budget(arch, net, model, budget, max_skips)[0])
    return out


def rank(finalists: list[Finalist], data: Dataset, cfg: TrainConfig, say: Progress) -> list[Finalist]:
    """Train each finalist from scratch for `cfg.epochs` (no distillation) and sort them best first: validation
    accuracy, then validation loss, then the smaller predicted latency."""
    from .run import train_architecture

    for i, f in enumerate(finalists, 1):
        space = spaces.of(f.architecture)
        _, tr = train_architecture(f.architecture, data, replace(cfg, kd_alpha=0.0), None, None, "finalists")
        f.val_accuracy, f.val_loss, f.epochs = tr.val_accuracy, tr.val_loss, tr.epochs
        say(f"finalists: {i}/{len(finalists)} {space.describe(f.architecture)} ({f.source}): predicted {f.predicted_ms:.3f} ms, "
            f"val accuracy {100 * tr.val_accuracy:.1f}% after {tr.epochs} epochs")
    return sorted(finalists, key=lambda f: (-f.val_accuracy, f.val_loss, f.predicted_ms))  # type: ignore[operator]

