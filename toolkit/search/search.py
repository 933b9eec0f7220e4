"""Differentiable architecture search on a space's supernet under a target's latency model.

Weights and architecture parameters are updated in alternation on two halves of the training split
(DARTS' bi-level scheme, first order; at least `min_steps` of each an epoch, cycling a small split), with
Gumbel-softmax samples whose temperature is annealed from
`tau_start` to `tau_end`. The architecture loss is cross-entropy + lambda * the latency penalty, where the
expected latency is exact under the target's latency model (`supernet.ExpectedLatency`): with a budget the
penalty is relu(E[lat] / budget - 1) (the search spends up to the budget), without one E[lat] / E0 (E0:
the uniform distribution's). The first `warmup` epochs train the weights only, so parameter-free skips do
not win early (the DARTS collapse); the derived net keeps at most `max_skips` skips (P-DARTS' cap).
Derivation then fits the budget on the latency model (`fit_budget`): the cheapest loss of architecture
likelihood per millisecond saved, move by move, while over it; then per millisecond added while a move fits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch.nn import functional as F

from ..datasets import Dataset
from . import spaces
from .latency import LatencyModel
from .train import evaluate, tensors, torch_threads

Progress = Callable[[str], None]


@dataclass
class SearchConfig:
    epochs: int = 10
    warmup: int = 2                   # epochs of weight training before the architecture moves
    batch: int = 64
    lr_weights: float = 3e-3
    lr_arch: float = 1e-2
    weight_decay: float = 1e-4
    latency_weight: float = 2.0       # lambda
    tau_start: float = 5.0
    tau_end: float = 0.5
    max_skips: int | None = 3         # None: no guard against skip collapse
    # weight (and architecture) steps per epoch at least, a small split cycled: on digits-hard 17 steps an epoch
    # left the supernet at 21% validation accuracy after 6 epochs, 60 reached 50% after 4 (BENCHMARKS.md)
    min_steps: int = 40
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    arch: dict[str, Any]
    supernet: torch.nn.Module
    expected_ms: float                # E[latency] of the final distribution
    predicted_ms: float               # of the derived (budget-fitted) architecture
    history: list[dict[str, float]] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


def temperature(cfg: SearchConfig, epoch: int) -> float:
    """Exponential annealing from tau_start (epoch 0) to tau_end (last epoch)."""
    span = max(cfg.epochs - 1, 1)
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** (min(epoch, span) / span)


def run_search(data: Dataset, resolution: int, model: LatencyModel, cfg: SearchConfig, budget_ms: float | None,
               progress: Progress | None = None, should_stop: Callable[[int, float], bool] | None = None) -> SearchResult:
    """Search the latency model's space on `data` at input size `resolution` (image resolution or sequence
    length); `should_stop(epoch, val_accuracy)` may end it early (pruning)."""
    with torch_threads():
        return _run_search(data, resolution, model, cfg, budget_ms, progress, should_stop)


def _run_search(data: Dataset, resolution: int, model: LatencyModel, cfg: SearchConfig, budget_ms: float | None,
                progress: Progress | None, should_stop: Callable[[int, float], bool] | None) -> SearchResult:
    say = progress or (lambda _m: None)
    torch.manual_seed(cfg.seed)
    space, nets = spaces.get(model.space), spaces.supernet_module(model.space)
    meta = space.data_meta(data, resolution)
    net = nets.make_supernet(meta)
    lat = nets.make_expected_latency(model, meta)
    x, y = tensors(data.train, resolution)
    xv, yv = tensors(data.val, resolution)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(y), generator=gen)
    half = len(y) // 2
    wx, wy, ax, ay = x[perm[:half]], y[perm[:half]], x[perm[half:]], y[perm[half:]]
    w_opt = torch.optim.AdamW(net.weight_parameters(), lr=cfg.lr_weights, weight_decay=cfg.weight_decay)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.lr_arch, betas=(0.5, 0.999))
    with torch.no_grad():
        e0 = float(lat(*net.probabilities()))
    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        tau = temperature(cfg, epoch)
        net.train()
        steps = max(math.ceil(half / cfg.batch), cfg.min_steps)
        order_w = _cycled(half, steps * cfg.batch, gen)
        order_a = _cycled(len(ay), steps * cfg.batch, gen)
        for i in range(0, steps * cfg.batch, cfg.batch):
            idx = order_w[i:i + cfg.batch]
            ops, widths = net.sample(tau)  # detached: a weight step needs no gradient to the architecture
            loss = F.cross_entropy(net(wx[idx], (ops.detach(), [w.detach() for w in widths])), wy[idx])
            w_opt.zero_grad()
            loss.backward()
            w_opt.step()
            if epoch < cfg.warmup:
                continue
            jdx = order_a[i:i + cfg.batch]
            weights = net.sample(tau)
            expected = lat(*net.probabilities(tau))
            penalty = F.relu(expected / budget_ms - 1) if budget_ms else expected / e0
            a_loss = F.cross_entropy(net(ax[jdx], weights), ay[jdx]) + cfg.latency_weight * penalty
            a_opt.zero_grad()
            a_loss.backward()
            a_opt.step()
        with torch.no_grad():
            expected = float(lat(*net.probabilities()))
            _, va = evaluate(net, xv, yv)  # the most likely path
        arch = net.derive(cfg.max_skips)
        row = {"epoch": epoch + 1, "tau": tau, "steps": steps, "val_accuracy": va, "expected_ms": expected,
               "derived_ms": model.predict(arch)}
        history.append(row)
        say(f"search: epoch {epoch + 1}/{cfg.epochs} (tau {tau:.2f}{', weights only' if epoch < cfg.warmup else ''}): supernet val "
            f"accuracy {100 * va:.1f}%, E[latency] {expected:.3f} ms, derived {space.describe(arch)} ~{row['derived_ms']:.3f} ms")
        if should_stop is not None and should_stop(epoch, va):
            break
    arch = net.derive(cfg.max_skips)
    repairs: list[str] = []
    if budget_ms:
        arch, repairs = fit_budget(arch, net, model, budget_ms, cfg.max_skips)
        for r in repairs:
            say(f"search: fit to budget: {r}")
    with torch.no_grad():
        expected = float(lat(*net.probabilities()))
    return SearchResult(arch, net, expected, model.predict(arch), history, repairs)


def _cycled(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """`length` indices into `n` samples: shuffled passes back to back (a small split is cycled)."""
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(length / n))])[:length]


def fit_budget(arch: dict[str, Any], net: torch.nn.Module, model: LatencyModel, budget_ms: float,
               max_skips: int | None, grow: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Fit `arch` to `budget_ms` on the latency model, one move at a time (another op in one slot, or another
    width). Over the budget, it shrinks: each move the one losing the least architecture log-likelihood per
    millisecond saved. Then, with `grow`, it spends what is left: each move the one losing the least
    log-likelihood per millisecond added (among equals the larger) that keeps the prediction within the
    budget, so the net returned uses the budget instead of stopping wherever the search's argmax fell
    (a net far under its budget is a smaller net than the user paid for). When no single move fits what
    is left, a trade: one move past the budget and one back under it, the pair ending closest to the
    budget (a net of the largest ops cannot grow a stage's width by one move; measured on
    the Xeon, such a net stopped 22% under its budget)."""
    arch, moves = _shrink(arch, net, model, budget_ms, max_skips)
    if model.predict(arch) > budget_ms:
        return arch, moves
    for _ in range(MAX_GROW_MOVES if grow else 0):
        pred = model.predict(arch)
        best = _best_move(arch, net, model, max_skips, lambda d: d if 1e-9 < d <= budget_ms - pred else None)
        if best is not None:
            arch = best[0]
            moves.append(f"grow: {best[2]} (predicted {model.predict(arch):.3f} ms)")
            continue
        trade = _best_trade(arch, net, model, budget_ms, max_skips)
        if trade is None:
            break
        arch = trade[0]
        moves.append(f"grow: {trade[1]} (predicted {model.predict(arch):.3f} ms)")
    return arch, moves


MAX_GROW_MOVES = 64


def _shrink(arch: dict[str, Any], net: torch.nn.Module, model: LatencyModel, budget_ms: float,
            max_skips: int | None) -> tuple[dict[str, Any], list[str]]:
    """Shrink moves until `arch` is predicted within the budget or nothing smaller is left: the move that
    lands closest under the budget when one does (a net a few percent over its budget loses one kernel
    size, not a stage's width), else the least log-likelihood lost per millisecond saved."""
    moves: list[str] = []
    while (pred := model.predict(arch)) > budget_ms:
        landing = [(model.predict(c), -lost, c, what) for c, lost, what in _moves(arch, net, max_skips)]
        landing = [t for t in landing if t[0] <= budget_ms]
        if landing:
            _, _, arch, what = max(landing, key=lambda t: (t[0], t[1]))
            moves.append(f"{what} (predicted {model.predict(arch):.3f} ms)")
            continue
        best = _best_move(arch, net, model, max_skips, lambda d: -d if d < -1e-9 else None)
        if best is None:
            moves.append(f"nothing smaller is left; predicted {pred:.3f} ms stays over {budget_ms:.3f} ms")
            return arch, moves
        arch = best[0]
        moves.append(f"{best[2]} (predicted {model.predict(arch):.3f} ms)")
    return arch, moves


def _best_trade(arch: dict[str, Any], net: torch.nn.Module, model: LatencyModel, budget_ms: float,
                max_skips: int | None) -> tuple[dict[str, Any], str] | None:
    """When no single move fits what is left of the budget: two moves, one past the budget and one back
    under it (a wider stage paid for with a smaller kernel, say), the pair ending closest to the budget
    if it ends above where `arch` is. None when no pair gains."""
    pred = model.predict(arch)
    best: tuple[float, dict[str, Any], str] | None = None
    for over, _, first in _moves(arch, net, max_skips):
        if model.predict(over) <= budget_ms:
            continue
        for cand, _, then in _moves(over, net, max_skips):
            got = model.predict(cand)
            if pred + 1e-9 < got <= budget_ms and (best is None or got > best[0]):
                best = (got, cand, f"{first}, then {then}")
    return None if best is None else (best[1], best[2])


def _best_move(arch: dict[str, Any], net: torch.nn.Module, model: LatencyModel, max_skips: int | None,
               amount: Callable[[float], float | None]):
    """(candidate, score, description) of the single-choice move with the least log-likelihood lost per
    millisecond, among the moves whose latency change `amount` accepts (it returns the milliseconds the move
    saves or adds, or None to refuse it); None when no move is accepted."""
    pred = model.predict(arch)
    best = None
    for cand, lost, what in _moves(arch, net, max_skips):
        ms = amount(model.predict(cand) - pred)
        if ms is None:
            continue
        key = (max(lost, 0.0) / ms, -ms)
        if best is None or key < best[1]:
            best = (cand, key, what)
    return best


def _moves(arch: dict[str, Any], net: torch.nn.Module, max_skips: int | None) -> list[tuple[dict[str, Any], float, str]]:
    """Every single-choice move from `arch` (another op in one slot, or another width) the skip cap allows:
    (candidate, architecture log-likelihood it loses, description)."""
    space = spaces.of(arch)
    meta = {k: arch[k] for k in space.META}
    logp = F.log_softmax(net._logits().detach(), -1)
    wlogp = [F.log_softmax(w.detach(), -1) for w in net.width_logits]
    ops, widths = space.choices(arch)
    skips = sum(o == space.SKIP for o in ops)
    cands = []
    for g, wi in enumerate(widths):
        group = space.WIDTH_GROUPS[g]
        for nw in range(len(group)):
            if nw != wi:
                cands.append((space.from_choices(meta, ops, [nw if i == g else w for i, w in enumerate(widths)]),
                              float(wlogp[g][wi] - wlogp[g][nw]), f"{space.group_name(g)} width {group[wi]} -> {group[nw]}"))
    for k, cur in enumerate(ops):
        for i, op in enumerate(space.OPS):
            if i == cur or (i == space.SKIP and (not space.skippable(k) or (max_skips is not None and skips >= max_skips))):
                continue
            cands.append((space.from_choices(meta, [i if j == k else o for j, o in enumerate(ops)], widths),
                          float(logp[k][cur] - logp[k][i]), f"{space.slot_name(k)} {space.op_name(space.OPS[cur])} -> {space.op_name(op)}"))
    return cands


def count_skips(arch: dict[str, Any]) -> int:
    space = spaces.of(arch)
    return sum(o == space.SKIP for o in space.choices(arch)[0])


def supernet_teacher(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The trained supernet as a distillation teacher: its most likely path, with the shared weights."""
    net.eval()

    def teach(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(t)
    return teach

