"""Built-in model zoo: small, self-contained torch networks shaped like common edge models.

Weights are random but deterministic (seeded); these exist to exercise and benchmark the
compiler, not to classify anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import search_space
from .blocks import MBConv, conv_bn


class ConvNet(nn.Module):
    """Tiny MobileNet-like net: conv/BN/ReLU6, depthwise, pointwise, residual, pooling, classifier."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)
        self.dw = conv_bn(16, 16, 3, 1, groups=16)
        self.pw = conv_bn(16, 16, 1, act=None)
        self.expand = conv_bn(16, 32, 1, 2)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        x = self.expand(x)
        return self.head(x.mean((2, 3)))


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) architecture."""

    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, width: float = 1.0):
        super().__init__()
        c = int(32 * width)
        layers: list[nn.Module] = [conv_bn(3, c, 3, 2)]
        for t, ch, n, s in self.CFG:
            out = int(ch * width)
            for i in range(n):
                layers.append(MBConv(c, out, 3, s if i == 0 else 1, t))
                c = out
        last = int(1280 * max(1.0, width))
        layers.append(conv_bn(c, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.a = conv_bn(cin, cout, 3, stride, act=nn.ReLU)
        self.b = conv_bn(cout, cout, 3, 1, act=None)
        self.down = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(self.a(x)) + self.down(x))


class ResNet18(nn.Module):
    """ResNet-18 architecture."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2, act=nn.ReLU), nn.MaxPool2d(3, 2, 1))
        blocks, c = [], 64
        for out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(c, out, stride), BasicBlock(out, out, 1)]
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer written with plain ops (exports to MatMul/Softmax/LayerNorm)."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.ln2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = self.ln1(x + self.proj((att @ v).transpose(1, 2).reshape(b, s, d)))
        return self.ln2(x + self.ff(x))


class Encoder(nn.Module):
    """BERT-style encoder: token + position embeddings, encoder layers, pooled classifier."""

    def __init__(self, vocab: int, seq: int, d: int, heads: int, layers: int, num_classes: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(d, heads, 4 * d) for _ in range(layers)])
        self.cls = nn.Linear(d, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.tok(ids) + self.pos)
        return self.cls(h[:, 0])


@dataclass(frozen=True)
class ZooEntry:
    build: Callable[[], nn.Module]
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype
    description: str


ZOO: dict[str, ZooEntry] = {
    "convnet": ZooEntry(ConvNet, "x", (1, 3, 32, 32), torch.float32, "tiny conv net: conv/BN/ReLU6, depthwise, residual (32x32)"),
    "transformer": ZooEntry(lambda: Encoder(vocab=64, seq=16, d=32, heads=2, layers=1), "ids", (1, 16), torch.int64,
                            "tiny transformer encoder, 1 layer, d=32, seq 16"),
    "mobilenetv2": ZooEntry(MobileNetV2, "x", (1, 3, 224, 224), torch.float32, "MobileNetV2-style, 224x224"),
    "resnet18": ZooEntry(ResNet18, "x", (1, 3, 224, 224), torch.float32, "ResNet18-style, 224x224"),
    "bert-mini": ZooEntry(lambda: Encoder(vocab=30522, seq=128, d=256, heads=4, layers=4), "ids", (1, 128), torch.int64,
                          "BERT-mini: 4 layers, hidden 256, seq 128"),
    "searchnet": ZooEntry(lambda: search_space.SearchNet(search_space.SAMPLE), "x", search_space.input_shape(search_space.SAMPLE),
                          torch.float32, "a fixed member of the mbconv-v1 search space: 3/5/7 depthwise, hard-swish, 224x224"),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The zoo model `name` in eval mode with deterministic weights, and an example input."""
    entry = ZOO[name]
    return with_weights(entry.build, seed), example_input(entry.input_shape, entry.input_dtype)


def with_weights(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """`make()` in eval mode with seeded weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = make().eval()
    # Non-trivial BatchNorm statistics so folding them is actually exercised.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def example_input(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A random example input (token ids in [0, 4) for integer inputs)."""
    if dtype.is_floating_point:
        return torch.randn(shape)
    return torch.randint(0, 4, shape, dtype=dtype)
