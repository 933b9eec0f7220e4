"""The `tiny-transformer` search space: small pre-LayerNorm encoders for sequence classification, as plain JSON.

    {"space": "tiny-transformer", "seq_len": 24, "vocab": 32, "classes": 4, "hidden": 48,
     "layers": [{"op": "layer", "heads": 2, "ffn": 128}, {"op": "layer", "heads": 1, "ffn": 64}, {"op": "skip"}, {"op": "skip"}]}

The sequence counterpart of `mobile-cnn` (toolkit/search/mobile_cnn.py), for token-id inputs [B, seq_len] (e.g.
the bundled `text-recall` task, toolkit/datasets.py): a token embedding (vocab x hidden) plus a learned position
embedding, up to four searchable layer slots, then a final LayerNorm, the mean over the sequence and a linear
classifier. The residual width `hidden` (32/48/64) is one choice per net. A slot is a pre-LayerNorm encoder
layer - multi-head self-attention with 1/2/4 heads of width 16 (attention width heads*16, independent of
`hidden`) and a ReLU feed-forward of width 64/128/256 - or `skip` (the identity: a shallower net). The first
slot cannot be skipped: a net has at least one layer. Attention is written with plain MatMul/Softmax (no
nn.MultiheadAttention, which exports to ONNX badly).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compile import UsageError

from ..search_space import read_architecture_json

SPACE_NAME = "tiny-transformer"
HIDDEN = (32, 48, 64)
HEADS = (1, 2, 4)
HEAD_DIM = 16
POS_INIT_STD = 2.0  # position embeddings at twice the tokens' scale (see TinyTransformer)
FFN = (64, 128, 256)
MAX_DEPTH = 4
MAX_SEQ_LEN, MAX_VOCAB, MAX_CLASSES = 512, 100000, 10000
# the candidate operations of a layer slot, in a fixed order (a supernet's and a latency model's index)
OPS: tuple[dict[str, Any], ...] = tuple({"op": "layer", "heads": h, "ffn": f} for h in HEADS for f in FFN) + ({"op": "skip"},)
SKIP = len(OPS) - 1
FIELDS = ("space", "seq_len", "vocab", "classes", "hidden", "layers")


class ArchitectureError(UsageError):
    """An architecture description that is not a member of the tiny-transformer space."""


def _choice(where: str, value: Any, allowed: tuple) -> Any:
    # bool is an int in Python: `true` is not a head count; nor is 2.0 (it equals 2, but would build nothing)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ArchitectureError(f"{where} is {value!r}; the {SPACE_NAME} space allows {', '.join(map(str, allowed))}")
    return value


def _int_in(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ArchitectureError(f"{where} is {value!r}; give an integer from {lo} to {hi}")
    return value


def op_index(layer: dict[str, Any]) -> int:
    """The index of a (validated) layer op in OPS."""
    return OPS.index(layer)


def validate(arch: Any) -> dict[str, Any]:
    """Check that `arch` is a member of the space; returns it normalised. Raises ArchitectureError (one line)."""
    if not isinstance(arch, dict):
        raise ArchitectureError("an architecture is a JSON object with 'space', 'seq_len', 'vocab', 'classes', 'hidden' and 'layers'")
    if arch.get("space") != SPACE_NAME:
        raise ArchitectureError(f"architecture space is {arch.get('space')!r}; expected {SPACE_NAME!r}")
    unknown = set(arch) - set(FIELDS)
    if unknown:
        raise ArchitectureError(f"unknown architecture field {min(unknown, key=str)!r}")
    missing = [f for f in FIELDS if f not in arch]
    if missing:
        raise ArchitectureError(f"architecture field {missing[0]!r} is missing")
    layers_ = arch["layers"]
    if not isinstance(layers_, list) or len(layers_) != MAX_DEPTH:
        n = f"{len(layers_)} entries" if isinstance(layers_, list) else type(layers_).__name__
        raise ArchitectureError(f"'layers' is {n}; give a list of {MAX_DEPTH} (use {{\"op\": \"skip\"}} for a shallower net)")
    out_layers = []
    for i, layer in enumerate(layers_):
        where = f"layer {i}"
        if not isinstance(layer, dict) or layer.get("op") not in ("layer", "skip"):
            raise ArchitectureError(f"{where} must be {{\"op\": \"layer\", \"heads\": H, \"ffn\": F}} or {{\"op\": \"skip\"}}")
        if layer["op"] == "skip":
            if i == 0:
                raise ArchitectureError(f"{where} is 'skip'; the first layer cannot be skipped (a net has at least one layer)")
            if set(layer) != {"op"}:
                raise ArchitectureError(f"{where}: a skip layer has no other fields")
            out_layers.append({"op": "skip"})
            continue
        if set(layer) != {"op", "heads", "ffn"}:
            raise ArchitectureError(f"{where}: a layer has exactly 'op', 'heads' and 'ffn'")
        out_layers.append({"op": "layer", "heads": _choice(f"{where} heads", layer["heads"], HEADS),
                           "ffn": _choice(f"{where} ffn", layer["ffn"], FFN)})
    return {"space": SPACE_NAME, "seq_len": _int_in("seq_len", arch["seq_len"], 1, MAX_SEQ_LEN),
            "vocab": _int_in("vocab", arch["vocab"], 2, MAX_VOCAB),
            "classes": _int_in("classes", arch["classes"], 1, MAX_CLASSES),
            "hidden": _choice("hidden", arch["hidden"], HIDDEN), "layers": out_layers}


def sample(seed: int, seq_len: int = 32, vocab: int = 32, classes: int = 4) -> dict[str, Any]:
    """A uniformly random member of the space (deterministic for a seed); the first slot is never skip."""
    rng = random.Random(seed)
    ops = [OPS[rng.randrange(SKIP)]] + [OPS[rng.randrange(len(OPS))] for _ in range(MAX_DEPTH - 1)]
    return validate({"space": SPACE_NAME, "seq_len": seq_len, "vocab": vocab, "classes": classes,
                     "hidden": rng.choice(HIDDEN), "layers": [dict(op) for op in ops]})


def load_architecture(path: str | Path) -> dict[str, Any]:
    """Read and validate an architecture JSON file."""
    return validate(read_architecture_json(path, ArchitectureError))


def describe(arch: dict[str, Any]) -> str:
    """One line: hidden width, sequence length, then each slot (a2f128: 2 heads, ffn 128; skip as "-"); no "|" (report tables)."""
    ops = ["-" if op["op"] == "skip" else f"a{op['heads']}f{op['ffn']}" for op in arch["layers"]]
    return f"h{arch['hidden']} L{arch['seq_len']}: {' '.join(ops)}"


def layers(arch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-skip layer with its shapes: seq, hidden, heads, ffn."""
    for op in arch["layers"]:
        if op["op"] != "skip":
            yield {"seq": arch["seq_len"], "hidden": arch["hidden"], "heads": op["heads"], "ffn": op["ffn"]}


class Attention(nn.Module):
    """Multi-head self-attention with plain ops: q, k, v projections to heads*16, softmax(q k^T / 4) v, out projection."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        width = heads * HEAD_DIM
        self.q, self.k, self.v = nn.Linear(hidden, width), nn.Linear(hidden, width), nn.Linear(hidden, width)
        self.out = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, L, heads*16] -> [B, heads, L, 16]
            return t.reshape(b, n, self.heads, HEAD_DIM).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM ** 0.5, dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(b, n, self.heads * HEAD_DIM))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm: x + attention(LN(x)), then x + W2(ReLU(W1(LN(x))))."""

    def __init__(self, hidden: int, heads: int, ffn: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads)
        self.ln2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, ffn), nn.ReLU(), nn.Linear(ffn, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class TinyTransformer(nn.Module):
    """The torch network of an architecture of the space: int64 token ids [B, seq_len] -> logits [B, classes]."""

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        arch = validate(arch)
        h = arch["hidden"]
        self.tok = nn.Embedding(arch["vocab"], h)
        # positions start at twice the tokens' scale (nn.Embedding draws N(0, 1)). At BERT's 0.02 the first
        # LayerNorm drowns them and a net learns only a bag of tokens (text-recall, baseline 0: ~50% after 30
        # epochs); at N(0, 1) it reached 67% mean test accuracy over 3 seeds in 20 epochs, at N(0, 4) 89%.
        self.pos = nn.Parameter(POS_INIT_STD * torch.randn(1, arch["seq_len"], h))
        self.layers = nn.Sequential(*[EncoderLayer(h, lay["heads"], lay["ffn"]) for lay in layers(arch)])
        self.norm = nn.LayerNorm(h)
        self.classifier = nn.Linear(h, arch["classes"])
        self.seq_len, self.vocab = arch["seq_len"], arch["vocab"]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.tok(ids) + self.pos)
        return self.classifier(self.norm(x).mean(1))


def input_shape(arch: dict[str, Any]) -> tuple[int, int]:
    """The [batch, seq_len] input shape of an architecture (batch 1)."""
    arch = validate(arch)
    return (1, arch["seq_len"])


def example_input(arch: dict[str, Any], seed: int = 0) -> torch.Tensor:
    """Deterministic random token ids in [0, vocab), int64, of shape input_shape(arch)."""
    arch = validate(arch)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, arch["vocab"], input_shape(arch), generator=gen, dtype=torch.int64)


# the hand-designed reference per scale: (hidden, depth, heads, ffn)
BASELINES = ((32, 2, 2, 128), (48, 4, 2, 128), (64, 4, 4, 256))


def baseline(seq_len: int, vocab: int, classes: int, scale: int) -> dict[str, Any]:
    """The hand-designed reference: BERT's recipe (every layer alike, attention width ~ hidden, ffn ~ 4x hidden)
    shrunk to a budget, the way a person picks a BERT-tiny/mini for a device. `scale` (clamped to 0..2):

    - 0: hidden 32, 2 layers of 2 heads (attention width 32) and ffn 128 (4x), the other two slots skip;
    - 1: hidden 48, 4 layers of 2 heads (width 32: 3 heads is not a choice) and ffn 128 (~2.7x);
    - 2: hidden 64, 4 layers of 4 heads (width 64) and ffn 256 (4x).

    Parameter count and compute grow with `scale`."""
    hidden, depth, heads, ffn = BASELINES[max(0, min(scale, len(BASELINES) - 1))]
    ops = [{"op": "layer", "heads": heads, "ffn": ffn}] * depth + [{"op": "skip"}] * (MAX_DEPTH - depth)
    return validate({"space": SPACE_NAME, "seq_len": seq_len, "vocab": vocab, "classes": classes, "hidden": hidden,
                     "layers": [dict(op) for op in ops]})


# ---- what the search and the latency model need of a space (toolkit/search/spaces.py)

SLOTS = MAX_DEPTH
WIDTH_GROUPS = (HIDDEN,)                       # one searched width: the residual stream's
META = ("seq_len", "vocab", "classes")         # the fields an architecture takes from its data
LATENCY_SEQ_LENS = (16, 24, 32, 48)            # the latency model covers these sequence lengths
# the latency model's features: dense layers' multiply-accumulates (q, k, v, out, FFN), attention's
# (QK^T and AV) and its softmax elements, the LayerNorms' elements, a count per layer; the embedding's
# elements, the classifier's MACs, a constant
FEATURES = ("mm.mmac", "attn.mmac", "attn.melem", "norm.melem", "layer.n", "embed.melem", "head.mmac", "const")
DEFAULT_MAX_SKIPS = 2  # of the 3 skippable slots: at least two layers
BASELINE_NAME = "hand-designed (BERT recipe)"
SIZE_FLAG = "sequence length"
blocks = layers


def slot_group(k: int) -> int:
    return 0


def skippable(k: int) -> bool:
    return k > 0


def choices(arch: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(the OPS index of every layer slot, the index of the hidden width in HIDDEN)."""
    return [op_index(layer) for layer in arch["layers"]], [HIDDEN.index(arch["hidden"])]


def from_choices(meta: dict[str, Any], ops: list[int], widths: list[int]) -> dict[str, Any]:
    return validate({"space": SPACE_NAME, **{k: meta[k] for k in META}, "hidden": HIDDEN[widths[0]],
                     "layers": [dict(OPS[i]) for i in ops]})


def block_features(u: dict[str, Any], lanes: int = 1) -> dict[str, float]:
    """The kernels of one layer (a unit of `layers`). `lanes` is not used: the matmuls' packed panels, not
    the hidden width, set their vector use (the model fits 99% of held-out nets within +-10% without it)."""
    seq, h, a, f = u["seq"], u["hidden"], u["heads"] * HEAD_DIM, u["ffn"]
    return {"mm.mmac": seq * (4 * h * a + 2 * h * f) / 1e6, "attn.mmac": 2 * seq * seq * a / 1e6,
            "attn.melem": u["heads"] * seq * seq / 1e6, "norm.melem": 2 * seq * h / 1e6, "layer.n": 1.0}


def fixed_features(arch: dict[str, Any]) -> dict[str, float]:
    """The kernels every network has: embeddings, the final LayerNorm and pooling, the classifier."""
    seq, h = arch["seq_len"], arch["hidden"]
    return {"embed.melem": 2 * seq * h / 1e6, "norm.melem": seq * h / 1e6, "head.mmac": h * arch["classes"] / 1e6, "const": 1.0}


def fixed_width_arch(meta: dict[str, Any], hidden: int) -> dict[str, Any]:
    """A network whose fixed kernels are those of every net of this hidden width (its layers are not read)."""
    return {"space": SPACE_NAME, **{k: meta[k] for k in META}, "hidden": hidden, "layers": []}


def build_module(arch: dict[str, Any]) -> nn.Module:
    return TinyTransformer(arch)


def latency_sample(seed: int) -> dict[str, Any]:
    """A random member for the latency model: every sequence length of LATENCY_SEQ_LENS, vocabulary 32, 4 classes."""
    return sample(seed, seq_len=LATENCY_SEQ_LENS[seed % len(LATENCY_SEQ_LENS)])


def data_meta(data: Any, size: int) -> dict[str, Any]:
    return {"seq_len": size, "vocab": data.vocab, "classes": data.classes}


def sample_for(seed: int, meta: dict[str, Any]) -> dict[str, Any]:
    return sample(seed, meta["seq_len"], meta["vocab"], meta["classes"])


def baseline_for(meta: dict[str, Any], scale: int) -> dict[str, Any]:
    return baseline(meta["seq_len"], meta["vocab"], meta["classes"], scale)


def size_of(arch: dict[str, Any]) -> int:
    return arch["seq_len"]


def default_size(data: Any) -> int:
    return int(data.train.x.shape[1]) if getattr(data, "kind", "image") == "text" else 0


def check_data(data: Any, size: int) -> None:
    """UsageError unless the space can take the dataset (token sequences of length `size`)."""
    if getattr(data, "kind", "image") != "text":
        raise UsageError(f"the {SPACE_NAME} space takes token sequences; dataset {data.name} is images (use --space mobile-cnn)")
    if size != data.train.x.shape[1]:
        raise UsageError(f"--resolution {size}: the {SPACE_NAME} space takes the data's sequence length ({data.train.x.shape[1]}); drop --resolution")


def op_name(op: dict[str, Any]) -> str:
    return "skip" if op["op"] == "skip" else f"a{op['heads']}f{op['ffn']}"


def group_name(g: int) -> str:
    return "hidden"


def slot_name(k: int) -> str:
    return f"layer {k}"
