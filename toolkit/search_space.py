"""The architecture search space: MobileNet-style MBConv networks, described as plain JSON.

An architecture is what a search returns and what `autoglm export --arch FILE` builds:

    {"space": "mbconv-v1", "resolution": 224, "width": 1.0,
     "stages": [{"act": "relu6", "blocks": [{"kernel": 5, "expand": 6}, ...]}, ...]}

The space follows ProxylessNAS / MnasNet: a fixed stem and head, and five searchable stages with fixed
output channels and strides; per stage the depth (2-4 blocks) and the activation, per block the
depthwise kernel (3, 5, 7) and the expansion ratio (3, 4, 6); per network the input resolution and a
width multiplier. Every choice changes which operators the compiler sees (5x5 and 7x7 depthwise
windows, hard-swish epilogues, odd channel counts), which is why the space's models belong in the
compiler's benchmarks.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compile import UsageError

from .blocks import MBConv, conv_bn

SPACE_NAME = "mbconv-v1"
RESOLUTIONS = (160, 192, 224)
WIDTHS = (0.75, 1.0, 1.25)
KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
# activation name in the architecture JSON -> torch module
ACT_MODULES: dict[str, type[nn.Module]] = {"relu6": nn.ReLU6, "hswish": nn.Hardswish}
ACTS = tuple(ACT_MODULES)
# (output channels, stride of the first block) of the five searchable stages, at width 1.0.
STAGES = ((24, 2), (40, 2), (80, 2), (112, 1), (192, 2))
STEM, FIRST, HEAD = 32, 16, 1280
NUM_CLASSES = 1000

# A fixed member of the space (mixed kernels, expansions and activations), benchmarked as "searchnet".
SAMPLE: dict[str, Any] = {
    "space": SPACE_NAME, "resolution": 224, "width": 1.0,
    "stages": [
        {"act": "relu6", "blocks": [{"kernel": 3, "expand": 6}, {"kernel": 3, "expand": 3}]},
        {"act": "relu6", "blocks": [{"kernel": 5, "expand": 3}, {"kernel": 5, "expand": 3}, {"kernel": 3, "expand": 3}]},
        {"act": "hswish", "blocks": [{"kernel": 7, "expand": 6}, {"kernel": 3, "expand": 4}, {"kernel": 5, "expand": 3}]},
        {"act": "hswish", "blocks": [{"kernel": 5, "expand": 6}, {"kernel": 3, "expand": 3}]},
        {"act": "hswish", "blocks": [{"kernel": 7, "expand": 6}, {"kernel": 5, "expand": 4},
                                     {"kernel": 3, "expand": 6}, {"kernel": 3, "expand": 6}]},
    ],
}


class ArchitectureError(UsageError):
    """An architecture description that is not a member of the search space."""


def _choice(where: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise ArchitectureError(f"{where} is {value!r}; the {SPACE_NAME} space allows {', '.join(map(str, allowed))}")
    return value


def validate(arch: Any) -> dict[str, Any]:
    """Check that `arch` is a member of the space; returns it normalised (plain ints/floats/strings)."""
    if not isinstance(arch, dict):
        raise ArchitectureError("an architecture is a JSON object with 'space', 'resolution', 'width' and 'stages'")
    if arch.get("space") != SPACE_NAME:
        raise ArchitectureError(f"architecture space is {arch.get('space')!r}; this toolkit knows {SPACE_NAME!r}")
    stages = arch.get("stages")
    if not isinstance(stages, list) or len(stages) != len(STAGES):
        raise ArchitectureError(f"'stages' must be a list of {len(STAGES)} stages")
    out_stages = []
    for i, stage in enumerate(stages):
        blocks = stage.get("blocks") if isinstance(stage, dict) else None
        if not isinstance(blocks, list):
            raise ArchitectureError(f"stage {i} needs a 'blocks' list")
        _choice(f"stage {i} depth", len(blocks), DEPTHS)
        act = _choice(f"stage {i} act", stage.get("act"), ACTS)
        out_blocks = []
        for j, block in enumerate(blocks):
            if not isinstance(block, dict):
                raise ArchitectureError(f"stage {i} block {j} must be an object with 'kernel' and 'expand'")
            out_blocks.append({"kernel": _choice(f"stage {i} block {j} kernel", block.get("kernel"), KERNELS),
                               "expand": _choice(f"stage {i} block {j} expand", block.get("expand"), EXPANDS)})
        out_stages.append({"act": act, "blocks": out_blocks})
    return {"space": SPACE_NAME, "resolution": _choice("resolution", arch.get("resolution"), RESOLUTIONS),
            "width": float(_choice("width", arch.get("width"), WIDTHS)), "stages": out_stages}


def sample(seed: int) -> dict[str, Any]:
    """A uniformly random member of the space (deterministic for a seed)."""
    rng = random.Random(seed)
    stages = []
    for _ in STAGES:
        depth = rng.choice(DEPTHS)
        stages.append({"act": rng.choice(ACTS),
                       "blocks": [{"kernel": rng.choice(KERNELS), "expand": rng.choice(EXPANDS)} for _ in range(depth)]})
    return {"space": SPACE_NAME, "resolution": rng.choice(RESOLUTIONS), "width": rng.choice(WIDTHS), "stages": stages}


def read_architecture_json(path: str | Path, error: type[Exception]) -> Any:
    """The (not yet validated) JSON document of an architecture file; `error` with one line if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise error(f"architecture file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not valid JSON ({' '.join(str(e).split())}); write the architecture as a JSON object") from None


def load_architecture(path: str | Path) -> dict[str, Any]:
    """Read and validate an architecture JSON file."""
    return validate(read_architecture_json(path, ArchitectureError))


def _channels(c: int, width: float) -> int:
    # Round to a multiple of 8 as MobileNets do, never losing more than 10%.
    scaled = c * width
    r = max(8, int(scaled + 4) // 8 * 8)
    return r + 8 if r < 0.9 * scaled else r


class SearchNet(nn.Module):
    """The torch network of an architecture of the space."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        arch = validate(arch)
        w = arch["width"]
        c = _channels(STEM, w)
        layers: list[nn.Module] = [conv_bn(3, c, 3, 2), MBConv(c, _channels(FIRST, w), 3, 1, 1)]
        c = _channels(FIRST, w)
        for (cout, stride), stage in zip(STAGES, arch["stages"]):
            cout = _channels(cout, w)
            for j, block in enumerate(stage["blocks"]):
                layers.append(MBConv(c, cout, block["kernel"], stride if j == 0 else 1, block["expand"],
                                     ACT_MODULES[stage["act"]]))
                c = cout
        layers.append(conv_bn(c, HEAD, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(HEAD, NUM_CLASSES)
        self.resolution = arch["resolution"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def input_shape(arch: dict[str, Any]) -> tuple[int, int, int, int]:
    """The NCHW input shape of an architecture."""
    r = validate(arch)["resolution"]
    return (1, 3, r, r)
