"""The `mobile-cnn` search space: inverted-residual networks for small inputs, described as plain JSON.

    {"space": "mobile-cnn", "resolution": 16, "in_channels": 1, "classes": 10,
     "stages": [{"width": 16, "blocks": [{"op": "mbconv", "kernel": 3, "expand": 3}, {"op": "skip"}, ...]},
                ...]}

It generalises `mbconv-v1` (toolkit/search_space.py) to the 8x8-32x32 inputs of the bundled datasets: a
stride-1 stem, three searchable stages (strides 1, 2, 2) with a per-stage width, up to three blocks per
stage, each an MBConv (depthwise kernel 3/5/7, expansion 1/3/6) or `skip` (the identity: a shallower
stage), and a fixed 1x1 head. The first block of a stage changes width or stride, so it cannot be skipped.
The input resolution is a choice too: data are resized to it (`toolkit.datasets.resize`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from compile import UsageError

from ..blocks import MBConv, conv_bn

SPACE_NAME = "mobile-cnn"
RESOLUTIONS = (8, 12, 16, 20, 24)
KERNELS = (3, 5, 7)
EXPANDS = (1, 3, 6)
# per stage: (width choices, stride of the first block)
STAGES = (((8, 16, 24), 1), ((16, 24, 32), 2), ((24, 32, 48), 2))
MAX_DEPTH = 3
STEM, HEAD = 16, 64
# the candidate operations of a block slot, in a fixed order (the supernet's and the latency model's index)
OPS: tuple[dict[str, Any], ...] = tuple({"op": "mbconv", "kernel": k, "expand": e} for k in KERNELS for e in EXPANDS) + ({"op": "skip"},)
SKIP = len(OPS) - 1


class ArchitectureError(UsageError):
    """An architecture description that is not a member of the mobile-cnn space."""


def _choice(where: str, value: Any, allowed: tuple) -> Any:
    # bool is an int in Python: `true` is not a kernel size
    if isinstance(value, bool) or value not in allowed:
        raise ArchitectureError(f"{where} is {value!r}; the {SPACE_NAME} space allows {', '.join(map(str, allowed))}")
    return value


def _positive_int(where: str, value: Any, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
        raise ArchitectureError(f"{where} is {value!r}; give an integer from 1 to {hi}")
    return value


def op_index(block: dict[str, Any]) -> int:
    """The index of a (validated) block in OPS."""
    return OPS.index(block)


def validate(arch: Any) -> dict[str, Any]:
    """Check that `arch` is a member of the space; returns it normalised. Raises ArchitectureError (one line)."""
    if not isinstance(arch, dict):
        raise ArchitectureError("an architecture is a JSON object with 'space', 'resolution', 'in_channels', 'classes' and 'stages'")
    if arch.get("space") != SPACE_NAME:
        raise ArchitectureError(f"architecture space is {arch.get('space')!r}; expected {SPACE_NAME!r}")
    unknown = set(arch) - {"space", "resolution", "in_channels", "classes", "stages"}
    if unknown:
        raise ArchitectureError(f"unknown architecture field {sorted(unknown)[0]!r}")
    stages = arch.get("stages")
    if not isinstance(stages, list) or len(stages) != len(STAGES):
        raise ArchitectureError(f"'stages' must be a list of {len(STAGES)} stages")
    out_stages = []
    for i, (stage, (widths, _)) in enumerate(zip(stages, STAGES)):
        if not isinstance(stage, dict) or not isinstance(stage.get("blocks"), list):
            raise ArchitectureError(f"stage {i} must be an object with 'width' and a 'blocks' list")
        width = _choice(f"stage {i} width", stage.get("width"), widths)
        blocks = stage["blocks"]
        if len(blocks) != MAX_DEPTH:
            raise ArchitectureError(f"stage {i} has {len(blocks)} blocks; give {MAX_DEPTH} (use {{\"op\": \"skip\"}} for a shallower stage)")
        out_blocks = []
        for j, block in enumerate(blocks):
            where = f"stage {i} block {j}"
            if not isinstance(block, dict) or block.get("op") not in ("mbconv", "skip"):
                raise ArchitectureError(f"{where} must be {{\"op\": \"mbconv\", \"kernel\": K, \"expand\": E}} or {{\"op\": \"skip\"}}")
            if block["op"] == "skip":
                if j == 0:
                    raise ArchitectureError(f"{where} is 'skip'; the first block of a stage changes its width or stride and cannot be skipped")
                if set(block) != {"op"}:
                    raise ArchitectureError(f"{where}: a skip block has no other fields")
                out_blocks.append({"op": "skip"})
                continue
            if set(block) != {"op", "kernel", "expand"}:
                raise ArchitectureError(f"{where}: an mbconv block has exactly 'op', 'kernel' and 'expand'")
            out_blocks.append({"op": "mbconv", "kernel": _choice(f"{where} kernel", block["kernel"], KERNELS),
                               "expand": _choice(f"{where} expand", block["expand"], EXPANDS)})
        out_stages.append({"width": width, "blocks": out_blocks})
    return {"space": SPACE_NAME, "resolution": _choice("resolution", arch.get("resolution"), RESOLUTIONS),
            "in_channels": _positive_int("in_channels", arch.get("in_channels"), 16),
            "classes": _positive_int("classes", arch.get("classes"), 10000), "stages": out_stages}


def sample(seed: int, resolution: int | None = None, in_channels: int = 1, classes: int = 10) -> dict[str, Any]:
    """A uniformly random member of the space (deterministic for a seed); `resolution` pins the input size."""
    rng = random.Random(seed)
    stages = []
    for widths, _ in STAGES:
        blocks = [OPS[rng.randrange(SKIP)]] + [OPS[rng.randrange(len(OPS))] for _ in range(MAX_DEPTH - 1)]
        stages.append({"width": rng.choice(widths), "blocks": [dict(b) for b in blocks]})
    res = resolution if resolution is not None else rng.choice(RESOLUTIONS)
    return validate({"space": SPACE_NAME, "resolution": res, "in_channels": in_channels, "classes": classes, "stages": stages})


def load_architecture(path: str | Path) -> dict[str, Any]:
    """Read and validate an architecture JSON file."""
    path = Path(path)
    if not path.is_file():
        raise ArchitectureError(f"architecture file {path} does not exist")
    try:
        arch = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArchitectureError(f"{path} is not valid JSON ({e}); write the architecture as a JSON object") from None
    return validate(arch)


def describe(arch: dict[str, Any]) -> str:
    """One line: resolution, then per stage its width and blocks (k3e6, skip as '-')."""
    parts = [f"r{arch['resolution']}"]
    for s in arch["stages"]:
        ops = ["-" if b["op"] == "skip" else f"k{b['kernel']}e{b['expand']}" for b in s["blocks"]]
        parts.append(f"w{s['width']}:{','.join(ops)}")
    return " ".join(parts)


def blocks(arch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-skip block with its shapes: cin, cout, stride, kernel, expand, input size."""
    c, size = STEM, arch["resolution"]
    for (_, stride), stage in zip(STAGES, arch["stages"]):
        for j, b in enumerate(stage["blocks"]):
            if b["op"] == "skip":
                continue
            s = stride if j == 0 else 1
            yield {"cin": c, "cout": stage["width"], "stride": s, "kernel": b["kernel"], "expand": b["expand"], "size": size}
            c, size = stage["width"], (size + s - 1) // s


def final_shape(arch: dict[str, Any]) -> tuple[int, int]:
    """(channels, spatial size) entering the head."""
    c, size = STEM, arch["resolution"]
    for (_, stride), stage in zip(STAGES, arch["stages"]):
        c, size = stage["width"], (size + stride - 1) // stride
    return c, size


class MobileCNN(nn.Module):
    """The torch network of an architecture of the space."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        arch = validate(arch)
        layers: list[nn.Module] = [conv_bn(arch["in_channels"], STEM, 3, 1)]
        for b in blocks(arch):
            layers.append(MBConv(b["cin"], b["cout"], b["kernel"], b["stride"], b["expand"]))
        c, _ = final_shape(arch)
        layers.append(conv_bn(c, HEAD, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(HEAD, arch["classes"])
        self.resolution = arch["resolution"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def input_shape(arch: dict[str, Any]) -> tuple[int, int, int, int]:
    """The NCHW input shape of an architecture (batch 1)."""
    arch = validate(arch)
    return (1, arch["in_channels"], arch["resolution"], arch["resolution"])


def baseline(resolution: int, in_channels: int, classes: int, scale: int) -> dict[str, Any]:
    """The hand-designed reference: MobileNetV2's recipe (3x3 depthwise, expansion 6, every block) at width
    step `scale` (0: the narrowest widths, expansion 3 and two blocks per stage; 2: the widest), the way a
    person shrinks MobileNetV2 to a latency budget."""
    stages = []
    for widths, _ in STAGES:
        w = widths[min(scale, len(widths) - 1)]
        depth = 2 if scale == 0 else MAX_DEPTH
        bl = [{"op": "mbconv", "kernel": 3, "expand": 6 if scale else 3}] * depth + [{"op": "skip"}] * (MAX_DEPTH - depth)
        stages.append({"width": w, "blocks": [dict(b) for b in bl]})
    return validate({"space": SPACE_NAME, "resolution": resolution, "in_channels": in_channels, "classes": classes, "stages": stages})
