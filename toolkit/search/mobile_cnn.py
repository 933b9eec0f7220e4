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

import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from compile import UsageError

from ..blocks import MBConv, conv_bn
from ..search_space import read_architecture_json

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
SLOTS = len(STAGES) * MAX_DEPTH
WIDTH_GROUPS = tuple(widths for widths, _ in STAGES)  # the searched widths: one choice per stage
META = ("resolution", "in_channels", "classes")       # the fields an architecture takes from its data
# the latency model's features, per kernel kind: millions of multiply-accumulates, millions of elements read
# + written, and a count (depthwise convs are bound by the elements, 1x1 convs by the MACs, small kernels by the count)
FEATURES = ("pw.mmac", "pw.melem", "pw.n", "dw.mmac", "dw.melem", "dw.n", "stem.mmac", "head.mmac", "const")


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
    return validate(read_architecture_json(path, ArchitectureError))


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


# ---- what the search and the latency model need of a space (toolkit/search/spaces.py)

def slot_group(k: int) -> int:
    """The width group (stage) of block slot k."""
    return k // MAX_DEPTH


def skippable(k: int) -> bool:
    """Whether block slot k may be `skip` (not a stage's first block)."""
    return k % MAX_DEPTH != 0


def choices(arch: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(the OPS index of every block slot, the index of every stage's width in its group)."""
    ops = [op_index(b) for s in arch["stages"] for b in s["blocks"]]
    return ops, [WIDTH_GROUPS[i].index(s["width"]) for i, s in enumerate(arch["stages"])]


def from_choices(meta: dict[str, Any], ops: list[int], widths: list[int]) -> dict[str, Any]:
    """The architecture with these choices (`choices`' inverse) and `meta`'s resolution, channels and classes."""
    stages = [{"width": WIDTH_GROUPS[s][widths[s]], "blocks": [dict(OPS[i]) for i in ops[s * MAX_DEPTH:(s + 1) * MAX_DEPTH]]}
              for s in range(len(STAGES))]
    return validate({"space": SPACE_NAME, **{k: meta[k] for k in META}, "stages": stages})


def block_features(b: dict[str, Any], lanes: int = 1) -> dict[str, float]:
    """The kernels of one MBConv block (shapes from `blocks`): 1x1 expansion (unless expand is 1),
    depthwise, 1x1 projection. Channel counts are counted in whole vectors of `lanes` (the target's fp32
    vector width): on AVX-512 a 24- or 72-channel tensor runs in 8-lane blocks, and 150 nets measured on a
    Xeon were fitted far better with channels rounded up to 16 (82% vs 65% within +-10% in 5-fold
    cross-validation); on AVX2 every width of the space is a whole number of vectors already."""
    def whole(c: int) -> int:
        return -(-c // lanes) * lanes

    cin, cout, hidden = whole(b["cin"]), whole(b["cout"]), whole(b["cin"] * b["expand"])
    size, out = b["size"], (b["size"] + b["stride"] - 1) // b["stride"]
    f = {"pw.mmac": out * out * hidden * cout / 1e6, "pw.melem": out * out * (hidden + cout) / 1e6, "pw.n": 1.0,
         "dw.mmac": out * out * hidden * b["kernel"] ** 2 / 1e6, "dw.melem": (size * size + out * out) * hidden / 1e6, "dw.n": 1.0}
    if b["expand"] != 1:
        f["pw.mmac"] += size * size * cin * hidden / 1e6
        f["pw.melem"] += size * size * (cin + hidden) / 1e6
        f["pw.n"] += 1
    return f


def fixed_features(arch: dict[str, Any]) -> dict[str, float]:
    """The kernels every network has: the stem conv and the 1x1 head (+ pooling and classifier)."""
    r = arch["resolution"]
    c, size = final_shape(arch)
    return {"stem.mmac": r * r * arch["in_channels"] * STEM * 9 / 1e6,
            "head.mmac": (size * size * c * HEAD + HEAD * arch["classes"]) / 1e6, "const": 1.0}


def example_input(arch: dict[str, Any], seed: int = 0) -> torch.Tensor:
    """A deterministic input of the architecture's shape (for export and timing)."""
    return torch.from_numpy(np.random.default_rng(seed).random(input_shape(arch), np.float32))


def latency_sample(seed: int) -> dict[str, Any]:
    """A random member for the latency model (every resolution, one input channel, 10 classes)."""
    return sample(seed)


def data_meta(data: Any, size: int) -> dict[str, Any]:
    """The fixed fields for a dataset at input resolution `size`."""
    return {"resolution": size, "in_channels": data.shape[0], "classes": data.classes}


def fixed_width_arch(meta: dict[str, Any], last_width: int) -> dict[str, Any]:
    """A network whose fixed kernels are those of any net with this last-stage width (stem, head, classifier):
    what `fixed_features` depends on (the blocks themselves are not read)."""
    stages = [{"width": ws[0] if s < len(STAGES) - 1 else last_width, "blocks": []} for s, ws in enumerate(WIDTH_GROUPS)]
    return {"space": SPACE_NAME, **{k: meta[k] for k in META}, "stages": stages}


def build_module(arch: dict[str, Any]) -> nn.Module:
    return MobileCNN(arch)


def baseline_for(meta: dict[str, Any], scale: int) -> dict[str, Any]:
    return baseline(meta["resolution"], meta["in_channels"], meta["classes"], scale)


def size_of(arch: dict[str, Any]) -> int:
    """The input size the data are prepared at (the resolution)."""
    return arch["resolution"]


sizes = RESOLUTIONS
SIZE_FLAG = "--resolution"


def op_name(op: dict[str, Any]) -> str:
    return "skip" if op["op"] == "skip" else f"k{op['kernel']}e{op['expand']}"


def group_name(g: int) -> str:
    return f"stage {g}"


def slot_name(k: int) -> str:
    return f"stage {k // MAX_DEPTH} block {k % MAX_DEPTH}"


DEFAULT_MAX_SKIPS = 3  # of the 6 skippable slots (P-DARTS' cap)
BASELINE_NAME = "hand-designed (MobileNetV2 recipe)"


def sample_for(seed: int, meta: dict[str, Any]) -> dict[str, Any]:
    """A random member with `meta`'s fixed fields."""
    return sample(seed, meta["resolution"], meta["in_channels"], meta["classes"])


def default_size(data: Any) -> int:
    """The dataset's own resolution if the space has it, else the next larger one."""
    size = data.shape[-1]
    return next((r for r in RESOLUTIONS if r >= size), RESOLUTIONS[-1])


def check_data(data: Any, size: int) -> None:
    """UsageError unless the space can take the dataset at input size `size`."""
    if getattr(data, "kind", "image") != "image":
        raise UsageError(f"the {SPACE_NAME} space takes images; dataset {data.name} is {data.kind} (use --space tiny-transformer)")
    if size not in RESOLUTIONS:
        raise UsageError(f"--resolution {size}: the {SPACE_NAME} space has {', '.join(map(str, RESOLUTIONS))}")
