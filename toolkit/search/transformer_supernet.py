"""The tiny-transformer supernet: each layer slot one transformer layer at the largest width whose attention
heads, FFN channels and (shared) residual width are masked to the chosen op and hidden size (single-path
weight sharing, as the mobile-cnn supernet's superkernels), relaxed with Gumbel-softmax; and its expected
latency under a target's latency model, exact because the model is linear in the layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import tiny_transformer as space
from .latency import LatencyModel
from .supernet import ArchitectureParameters, derive_architecture
from .tiny_transformer import POS_INIT_STD

EPS = 1e-5


def masked_layer_norm(x: torch.Tensor, mask: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the active channels only (`mask` 1 on them): what a net of that hidden width computes."""
    n = mask.sum()
    mean = (x * mask).sum(-1, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / n
    return ((x - mean) / torch.sqrt(var + EPS) * norm.weight + norm.bias) * mask


class SuperLayer(nn.Module):
    """One layer slot: pre-LN attention with max(HEADS) heads and an FFN of max(FFN) channels, masked to the op."""

    def __init__(self, skippable: bool):
        super().__init__()
        h, a, f = max(space.HIDDEN), max(space.HEADS) * space.HEAD_DIM, max(space.FFN)
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.q, self.k, self.v, self.out = nn.Linear(h, a), nn.Linear(h, a), nn.Linear(h, a), nn.Linear(a, h)
        self.w1, self.w2 = nn.Linear(h, f), nn.Linear(f, h)
        self.skippable = skippable
        layer_ops = space.OPS[:space.SKIP]
        heads = torch.stack([(torch.arange(a) < op["heads"] * space.HEAD_DIM).float() for op in layer_ops])
        ffn = torch.stack([(torch.arange(f) < op["ffn"]).float() for op in layer_ops])
        self.register_buffer("head_masks", heads, persistent=False)
        self.register_buffer("ffn_masks", ffn, persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, hidden_mask: torch.Tensor) -> torch.Tensor:
        if self.skippable and w[space.SKIP] > 0.5:
            return w[space.SKIP] * x
        wl = w[:space.SKIP]
        amask, fmask = wl @ self.head_masks, wl @ self.ffn_masks
        b, seq, _ = x.shape
        heads = max(space.HEADS)
        t = masked_layer_norm(x, hidden_mask, self.ln1)

        def split(z: torch.Tensor) -> torch.Tensor:
            return (z * amask).view(b, seq, heads, space.HEAD_DIM).transpose(1, 2)
        q, k, v = split(self.q(t)), split(self.k(t)), split(self.v(t))
        att = F.softmax(q @ k.transpose(-1, -2) / space.HEAD_DIM ** 0.5, -1) @ v      # masked heads: v is 0
        y = x + self.out(att.transpose(1, 2).reshape(b, seq, -1) * amask) * hidden_mask
        t = masked_layer_norm(y, hidden_mask, self.ln2)
        y = y + self.w2(F.relu(self.w1(t)) * fmask) * hidden_mask
        return y + w[space.SKIP] * x if self.skippable else y


class SuperNet(ArchitectureParameters):
    """All architectures of the space for one sequence length, vocabulary and class count. Architecture
    parameters: `op_logits[k]` over space.OPS for layer slot k (slot 0 cannot be skip), `width_logits[0]`
    over space.HIDDEN."""

    def __init__(self, seq_len: int, vocab: int, classes: int):
        super().__init__()
        self.seq_len, self.vocab, self.classes = seq_len, vocab, classes
        h = max(space.HIDDEN)
        self.embed = nn.Embedding(vocab, h)
        self.pos = nn.Parameter(POS_INIT_STD * torch.randn(1, seq_len, h))  # as TinyTransformer (see there)
        self.slots = nn.ModuleList(SuperLayer(skippable=k > 0) for k in range(space.MAX_DEPTH))
        self.norm = nn.LayerNorm(h)
        self.classifier = nn.Linear(h, classes)
        self.op_logits = nn.Parameter(torch.zeros(space.MAX_DEPTH, len(space.OPS)))
        self.width_logits = nn.ParameterList([nn.Parameter(torch.zeros(len(space.HIDDEN)))])
        self.register_buffer("hidden_masks", torch.stack([(torch.arange(h) < w).float() for w in space.HIDDEN]), persistent=False)
        forbidden = torch.zeros(space.MAX_DEPTH, len(space.OPS), dtype=torch.bool)
        forbidden[0, space.SKIP] = True
        self.register_buffer("forbidden", forbidden, persistent=False)

    def forward(self, x: torch.Tensor, weights: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> torch.Tensor:
        ops, widths = weights if weights is not None else self.most_likely()
        mask = widths[0] @ self.hidden_masks
        h = (self.embed(x) + self.pos) * mask
        for k, slot in enumerate(self.slots):
            h = slot(h, ops[k], mask)
        return self.classifier(masked_layer_norm(h, mask, self.norm).mean(1))

    def derive(self, max_skips: int | None) -> dict[str, Any]:
        return derive_architecture(self, space, {"seq_len": self.seq_len, "vocab": self.vocab, "classes": self.classes}, max_skips)


class ExpectedLatency(nn.Module):
    """E[latency] of the supernet's distribution under a latency model, in ms (differentiable in the logits)."""

    def __init__(self, model: LatencyModel, seq_len: int, vocab: int, classes: int):
        super().__init__()
        table = torch.zeros(len(space.HIDDEN), len(space.OPS))            # skip costs nothing
        for b, hidden in enumerate(space.HIDDEN):
            for i, op in enumerate(space.OPS[:space.SKIP]):
                table[b, i] = model.block_ms({"seq": seq_len, "hidden": hidden, "heads": op["heads"], "ffn": op["ffn"]})
        self.register_buffer("table", table, persistent=False)
        meta = {"seq_len": seq_len, "vocab": vocab, "classes": classes}
        self.register_buffer("fixed", torch.tensor([model.fixed_ms(space.fixed_width_arch(meta, w)) for w in space.HIDDEN]),
                             persistent=False)

    def forward(self, ops: torch.Tensor, widths: list[torch.Tensor]) -> torch.Tensor:
        return (widths[0] * self.fixed).sum() + torch.einsum("b,ki,bi->", widths[0], ops, self.table)


def make_supernet(meta: dict[str, Any]) -> SuperNet:
    return SuperNet(meta["seq_len"], meta["vocab"], meta["classes"])


def make_expected_latency(model: LatencyModel, meta: dict[str, Any]) -> ExpectedLatency:
    return ExpectedLatency(model, meta["seq_len"], meta["vocab"], meta["classes"])
