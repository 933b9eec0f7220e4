"""The mobile-cnn supernet: each block slot one single-path superkernel whose masks select the candidate
op, each stage all its widths (FBNetV2-style channel masks), relaxed with Gumbel-softmax; and its expected
latency under a target's latency model, exact because the model is linear in the blocks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..blocks import conv_bn
from . import mobile_cnn as space
from .latency import LatencyModel


class SuperSlot(nn.Module):
    """One block slot as a single-path superkernel (Single-Path NAS, FBNetV2): one MBConv at the largest
    expansion and kernel whose depthwise taps are masked to the chosen kernel's centre and whose hidden
    channels are masked to the chosen expansion. All candidates share weights, so the slot trains like one
    network, and the masks are weighted sums over the op weights, so every candidate gets a gradient."""

    def __init__(self, cin: int, cout: int, stride: int, skippable: bool):
        super().__init__()
        hidden, kmax = cin * max(space.EXPANDS), max(space.KERNELS)
        self.expand = conv_bn(cin, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, kmax, stride, kmax // 2, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.project = conv_bn(hidden, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout
        self.skippable = skippable
        taps = torch.stack([_centre(kmax, op["kernel"]) for op in space.OPS[:space.SKIP]])        # [ops, k, k]
        chans = torch.stack([(torch.arange(hidden) < cin * op["expand"]).float() for op in space.OPS[:space.SKIP]])
        self.register_buffer("taps", taps, persistent=False)
        self.register_buffer("chans", chans, persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.skippable and w[space.SKIP] > 0.5:
            return w[space.SKIP] * x  # the identity chosen: nothing else to compute
        if not w.requires_grad:
            return self._chosen(x, int(w.argmax()))
        wb = w[:space.SKIP]
        taps = torch.einsum("o,okl->kl", wb, self.taps)
        chans = (wb @ self.chans)[None, :, None, None]
        h = self.expand(x)
        h = F.relu6(self.dw_bn(F.conv2d(h, self.dw.weight * taps, None, self.dw.stride, self.dw.padding, groups=self.dw.groups)))
        y = self.project(h * chans)
        if self.residual:
            y = x + y
        return y + w[space.SKIP] * x if self.skippable else y

    def _chosen(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The same output for a one-hot op with no gradient to the op weights (weight steps, evaluation),
        computed on the op's own channels and taps only: ~4x less depthwise work than the masked superkernel."""
        op = space.OPS[i]
        hidden, k = x.shape[1] * op["expand"], op["kernel"]
        o = (self.dw.kernel_size[0] - k) // 2
        conv, bn = self.expand[0], self.expand[1]
        h = F.relu6(_bn(F.conv2d(x, conv.weight[:hidden]), bn, hidden))
        h = F.conv2d(h, self.dw.weight[:hidden, :, o:o + k, o:o + k], None, self.dw.stride, k // 2, groups=hidden)
        h = F.relu6(_bn(h, self.dw_bn, hidden))
        pconv, pbn = self.project[0], self.project[1]
        y = _bn(F.conv2d(h, pconv.weight[:, :hidden]), pbn, pbn.num_features)
        return x + y if self.residual else y


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, n: int) -> torch.Tensor:
    """Batch-statistics BatchNorm over the first n channels of `bn` (the supernet keeps no running stats)."""
    return F.batch_norm(x, None, None, bn.weight[:n], bn.bias[:n], True, 0.0, bn.eps)


def _centre(kmax: int, k: int) -> torch.Tensor:
    m = torch.zeros(kmax, kmax)
    o = (kmax - k) // 2
    m[o:o + k, o:o + k] = 1
    return m


class ArchitectureParameters(nn.Module):
    """What a supernet's search sees: `op_logits` [slots, ops] (`forbidden` masks ops a slot cannot take) and
    `width_logits` (one vector per width group), their Gumbel-softmax samples, and the shared weights."""

    op_logits: nn.Parameter
    width_logits: nn.ParameterList
    forbidden: torch.Tensor

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(self.op_logits), *(id(p) for p in self.width_logits)}
        return [p for p in self.parameters() if id(p) not in arch]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.op_logits, *self.width_logits]

    def _logits(self) -> torch.Tensor:
        return self.op_logits.masked_fill(self.forbidden, float("-inf"))

    def probabilities(self, tau: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Softmax(logits / tau) of the ops per slot and of the widths per group (no noise)."""
        return F.softmax(self._logits() / tau, -1), [F.softmax(w / tau, -1) for w in self.width_logits]

    def sample(self, tau: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Gumbel-softmax samples of the ops per slot and the widths per group: one-hot forward, the relaxed
        gradient backward (straight-through, as GDAS), so a step computes one path, not every op."""
        return F.gumbel_softmax(self._logits(), tau, hard=True, dim=-1), [F.gumbel_softmax(w, tau, hard=True) for w in self.width_logits]

    def most_likely(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One-hot weights of the most likely ops and widths (the derived network inside the supernet)."""
        ops = F.one_hot(self._logits().argmax(-1), self.op_logits.shape[1]).float()
        return ops, [F.one_hot(w.argmax(), len(w)).float() for w in self.width_logits]



class SuperNet(ArchitectureParameters):
    """All architectures of the space at one resolution. Architecture parameters: `op_logits[s*3+j]` over
    space.OPS for block j of stage s (the first block of a stage cannot be skip), `width_logits[s]`."""

    def __init__(self, resolution: int, in_channels: int, classes: int):
        super().__init__()
        self.resolution, self.in_channels, self.classes = resolution, in_channels, classes
        self.stem = conv_bn(in_channels, space.STEM, 3, 1)
        self.slots = nn.ModuleList()
        c = space.STEM
        for widths, stride in space.STAGES:
            cmax = max(widths)
            for j in range(space.MAX_DEPTH):
                self.slots.append(SuperSlot(c, cmax, stride if j == 0 else 1, skippable=j > 0))
                c = cmax
        self.head = conv_bn(c, space.HEAD, 1)
        self.classifier = nn.Linear(space.HEAD, classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                # every path and width shares these layers: running statistics would mix them, so batch
                # statistics are used in evaluation too (evaluate in batches of hundreds)
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None
        self.op_logits = nn.Parameter(torch.zeros(len(space.STAGES) * space.MAX_DEPTH, len(space.OPS)))
        self.width_logits = nn.ParameterList(nn.Parameter(torch.zeros(len(w))) for w, _ in space.STAGES)
        for s, (widths, _) in enumerate(space.STAGES):
            masks = torch.stack([(torch.arange(max(widths)) < w).float() for w in widths])
            self.register_buffer(f"masks{s}", masks, persistent=False)
        first = torch.zeros(len(space.STAGES) * space.MAX_DEPTH, len(space.OPS), dtype=torch.bool)
        first[::space.MAX_DEPTH, space.SKIP] = True
        self.register_buffer("forbidden", first, persistent=False)


    def forward(self, x: torch.Tensor, weights: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """The network the (one-hot, straight-through) weights pick; default: the most likely one."""
        ops, widths = weights if weights is not None else self.most_likely()
        x = self.stem(x)
        k = 0
        for s in range(len(space.STAGES)):
            masks = getattr(self, f"masks{s}")
            mask = (widths[s] @ masks)[None, :, None, None]
            for j in range(space.MAX_DEPTH):
                x = self.slots[k](x, ops[k]) * mask
                k += 1
        return self.classifier(self.head(x).mean((2, 3)))

    def derive(self, max_skips: int | None) -> dict[str, Any]:
        return derive_architecture(self, space, {"resolution": self.resolution, "in_channels": self.in_channels,
                                                 "classes": self.classes}, max_skips)


def derive_architecture(net: nn.Module, sp: Any, meta: dict[str, Any], max_skips: int | None) -> dict[str, Any]:
    """The most likely architecture of a supernet (`op_logits` over sp.OPS per slot, `width_logits` per width
    group); with `max_skips`, skip ops beyond the cap (the least certain ones first) are replaced by the best
    non-skip op of their slot (the guard against skip-connection collapse)."""
    logits = net._logits().detach()
    choice = logits.argmax(-1).tolist()
    skips = [k for k, c in enumerate(choice) if c == sp.SKIP]
    if max_skips is not None and len(skips) > max_skips:
        margin = {k: float(logits[k, sp.SKIP] - logits[k, :sp.SKIP].max()) for k in skips}
        for k in sorted(skips, key=lambda k: margin[k])[:len(skips) - max_skips]:
            choice[k] = int(logits[k, :sp.SKIP].argmax())
    widths = [int(w.detach().argmax()) for w in net.width_logits]
    return sp.from_choices(meta, choice, widths)


class ExpectedLatency(nn.Module):
    """E[latency] of the supernet's distribution under a latency model, in ms (differentiable in the logits)."""

    def __init__(self, model: LatencyModel, resolution: int, in_channels: int, classes: int):
        super().__init__()
        sizes, size = [], resolution
        for _, stride in space.STAGES:
            sizes.append(size)
            size = (size + stride - 1) // stride
        prev_widths = [space.STEM]
        for s, (widths, stride) in enumerate(space.STAGES):
            # first slot: [prev width, width, op]; later slots: [width, op] (same width in and out)
            first = torch.zeros(len(prev_widths), len(widths), len(space.OPS))
            later = torch.zeros(len(widths), len(space.OPS))
            for i, op in enumerate(space.OPS[:space.SKIP]):
                for a, cin in enumerate(prev_widths):
                    for b, cout in enumerate(widths):
                        first[a, b, i] = model.block_ms({"cin": cin, "cout": cout, "stride": stride, "kernel": op["kernel"],
                                                         "expand": op["expand"], "size": sizes[s]})
                for b, c in enumerate(widths):
                    later[b, i] = model.block_ms({"cin": c, "cout": c, "stride": 1, "kernel": op["kernel"],
                                                  "expand": op["expand"], "size": (sizes[s] + stride - 1) // stride})
            self.register_buffer(f"first{s}", first, persistent=False)
            self.register_buffer(f"later{s}", later, persistent=False)
            prev_widths = list(widths)
        # what depends only on the last stage's width: stem, head, classifier, the correction's constant
        base = {"space": space.SPACE_NAME, "resolution": resolution, "in_channels": in_channels, "classes": classes}
        last = []
        for w in space.STAGES[-1][0]:
            arch = {**base, "stages": [{"width": ws[0] if s < len(space.STAGES) - 1 else w, "blocks": []}
                                       for s, (ws, _) in enumerate(space.STAGES)]}
            last.append(model.fixed_ms(arch))
        self.register_buffer("fixed", torch.tensor(last), persistent=False)

    def forward(self, ops: torch.Tensor, widths: list[torch.Tensor]) -> torch.Tensor:
        total = (widths[-1] * self.fixed).sum()
        prev = torch.ones(1)
        for s in range(len(space.STAGES)):
            k = s * space.MAX_DEPTH
            total = total + torch.einsum("a,b,i,abi->", prev, widths[s], ops[k], getattr(self, f"first{s}"))
            for j in range(1, space.MAX_DEPTH):
                total = total + torch.einsum("b,i,bi->", widths[s], ops[k + j], getattr(self, f"later{s}"))
            prev = widths[s]
        return total


def make_supernet(meta: dict[str, Any]) -> SuperNet:
    """The supernet for an architecture's fixed fields (`space.META`)."""
    return SuperNet(meta["resolution"], meta["in_channels"], meta["classes"])


def make_expected_latency(model: LatencyModel, meta: dict[str, Any]) -> ExpectedLatency:
    return ExpectedLatency(model, meta["resolution"], meta["in_channels"], meta["classes"])
