"""Torch building blocks shared by the model zoo and the search space."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    """conv (no bias, 'same' padding) + BatchNorm + optional activation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, act: type[nn.Module] = nn.ReLU6):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [conv_bn(cin, hidden, 1, act=act)]
        layers += [conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=act), conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y
