"""Winograd F(2x2, 3x3) / F(4x4, 3x3) for stride-1 3x3 convs in the blocked layout (compile/winograd.py,
compile/schedules/winograd.py).

A small net (two stride-1 3x3 convs with bias, ReLU and a residual add at 28x28; a stride-2 3x3 and a 1x1
conv; a stride-1 3x3 conv with ReLU6 at 14x14) takes the Winograd path for exactly its stride-1 3x3 convs,
with the epilogue fused, on AVX2, AVX-512 and aarch64 NEON; it matches onnxruntime on this machine (both
x86 builds run here) and under qemu for the Raspberry Pi 4. Odd sizes, a batch, a SiLU epilogue (a value
read twice) and a conv without bias are checked on the host at both tile sizes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import targets
from compile import compile_model
from compile.frontend import load_model
from compile.schedules import schedule_names
from compile.winograd import FORCE_TILE_ENV, NO_WINOGRAD_ENV, _MATRICES, transform_weight, winograd_tile
from toolkit.export import export_onnx

ISAS = {"x86-64-avx2": "x86-avx2", "x86-64-avx512": "x86-avx512", "rpi4": "aarch64-neon"}
ARM_TOOLS = (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("qemu-aarch64-static", "qemu-user-static"),
             ("cmake", "cmake"))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.point = nn.Conv2d(32, 32, 1)
        self.c = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.relu(self.b(y) + x)                    # residual add
        y = torch.relu(self.down(y))                     # stride 2: direct
        y = torch.relu(self.point(y))                    # 1x1: direct
        return torch.clamp(self.c(y), 0.0, 6.0)          # ReLU6


class _Odd(nn.Module):
    """Partial tiles (9x13), a SiLU epilogue (the conv's value read twice) and a conv without bias."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.a(x)
        return self.b(y * torch.sigmoid(y)) + x


@pytest.fixture(scope="module")
def net_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(_Net().eval(), torch.randn(1, 16, 28, 28), tmp_path_factory.mktemp("wg") / "net.onnx")


def _scheduled(mod, target):
    import tvm

    from compile.build import cpu_front_passes
    from compile.schedule import schedule_passes

    tt = tvm.target.Target(target.tvm)
    with tt:
        return tvm.transform.Sequential(cpu_front_passes(tt, target) + schedule_passes(target))(mod)


def _winograd_kernels(mod) -> dict[str, int]:
    """Kernel name -> m of the Winograd kernels (from the transformed weight's alpha^2 points)."""
    import tvm

    out = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc) and "winograd" in gv.name_hint:
            alpha2 = {int(p.shape[0]) for p in func.params if len(p.shape) == 5 and int(p.shape[0]) in (16, 36)}
            out[gv.name_hint] = {16: 2, 36: 4}[alpha2.pop()]
    return out


@pytest.mark.parametrize("target_name", list(ISAS))
def test_stride1_3x3_convs_take_winograd_with_their_epilogue(net_onnx, target_name):
    target = targets.load_target(target_name)
    mod = _scheduled(load_model(net_onnx).mod, target)
    names = schedule_names(mod)
    wino = _winograd_kernels(mod)
    # the three stride-1 3x3 convs, each one kernel with its bias / ReLU / residual add / ReLU6 fused
    assert len(wino) == 3, names
    assert all(names[k] == f"conv2d-winograd-{ISAS[target_name]}" for k in wino), names
    assert sum("add" in k for k in wino) == 3 and any(k.count("add") == 2 for k in wino), wino   # bias (+ residual)
    assert any("minimum" in k for k in wino) and all("relu" in k or "maximum" in k for k in wino), wino   # ReLU(6)
    # the stride-2 and the 1x1 conv stay the direct blocked conv; nothing else is left over but the boundary
    direct = {k: v for k, v in names.items() if "conv" in k and k not in wino}
    assert len(direct) == 2 and all(v.startswith("conv2d-nchwc-") for v in direct.values()), names
    assert all("conv" in k or "layout_transform" in k for k in names), names
    # 28x28 has 49 F(4x4) tiles: F(4x4); 14x14 has 16: F(2x2) with AVX-512's 16-lane blocks (as fast, 2.25x
    # less weight), F(4x4) on 8 and 4 lanes (25-30% faster on AVX2)
    lanes = {"x86-64-avx2": 8, "x86-64-avx512": 16, "rpi4": 4}[target_name]
    expected = sorted([4, 4, winograd_tile(32, 32, 14, 14, 1, lanes)])
    assert sorted(wino.values()) == expected == sorted([4, 4, 2 if lanes == 16 else 4]), wino


# target -> (a broadcast of an input channel of V: one per tile row of the GEMM's register tile, by lane on
# NEON; a vector store to the stack)
_GEMM_ASM = {
    "x86-64-avx2": (r"vbroadcastss\s+-?\d*\(%r(?!ip)", r"vmov[au]ps\s+%ymm\d+, -?\d*\(%rsp\)"),
    # (a channel used by one FMA only is an embedded broadcast operand, {1to16})
    "x86-64-avx512": (r"vbroadcastss\s+-?\d*\(%r(?!ip)|\(%r(?!ip)[^)]*\)\{1to16\}", r"vmov[au]ps\s+%zmm\d+, -?\d*\(%rsp\)"),
    "rpi4": (r"fmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[\d\]", r"\bstr\s+q\d+, \[sp"),
}


@pytest.mark.parametrize("target_name", list(_GEMM_ASM))
def test_gemm_tile_stays_in_registers(net_onnx, target_name):
    """The batched GEMM's inner loop (the basic blocks that broadcast input channels) stores nothing to the
    stack: its accumulator tile fits the register file on each ISA. (The transforms may spill: few FLOPs.)"""
    import re

    import tvm

    target = targets.load_target(target_name)
    mod = _scheduled(load_model(net_onnx).mod, target)
    broadcast, stack_store = _GEMM_ASM[target_name]
    for name in _winograd_kernels(mod):
        func = mod[name].with_attr("global_symbol", "main")
        asm = tvm.tirx.build(tvm.IRModule({"main": func}), target=tvm.target.Target(target.tvm)).inspect_source("asm")
        blocks = [b for b in re.split(r"\n(?=\.?[\w$]+:)", asm) if len(re.findall(broadcast, b)) >= 4]
        assert blocks, f"no GEMM loop in {name} for {target_name}"
        assert not [b for b in blocks if re.search(stack_store, b)], f"{name} spills in its GEMM on {target_name}"


@pytest.mark.parametrize("target_name", ["x86-64-avx2", "x86-64-avx512"])
def test_x86_builds_match_onnxruntime(net_onnx, target_name, tmp_path):
    """Built for each x86 ISA and, where this CPU has it, run and checked against onnxruntime by compile."""
    result = compile_model(net_onnx, targets.load_target(target_name), tmp_path / "art")
    verification = result.manifest["verification"]
    kinds = set(result.manifest["tuning"]["kernels"].values())
    assert f"default:conv2d-winograd-{ISAS[target_name]}" in kinds, kinds
    if verification.get("passed") is None:
        pytest.skip(f"not run here: {verification}")
    assert verification["passed"] is True, verification


def test_rpi4_build_matches_onnxruntime_under_qemu(net_onnx, tmp_path):
    for tool, package in ARM_TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: apt-get install {package}")
    result = compile_model(net_onnx, targets.load_target("rpi4"), tmp_path / "art")
    verification = result.manifest["verification"]
    assert "default:conv2d-winograd-aarch64-neon" in set(result.manifest["tuning"]["kernels"].values())
    assert verification["passed"] is True and "qemu-aarch64" in verification["how"], verification


@pytest.mark.parametrize("m", ["2", "4"])
def test_partial_tiles_batch_silu_and_no_bias_on_host(m, tmp_path, monkeypatch):
    monkeypatch.setenv(FORCE_TILE_ENV, m)
    torch.manual_seed(1)
    model = export_onnx(_Odd().eval(), torch.randn(2, 16, 9, 13), tmp_path / "odd.onnx")
    result = compile_model(model, targets.load_target("host"), tmp_path / "art")
    kernels = result.manifest["tuning"]["kernels"]
    assert sum("conv2d-winograd" in v for v in kernels.values()) == 2, kernels
    assert result.manifest["verification"]["passed"] is True, result.manifest["verification"]


def test_env_var_turns_it_off(net_onnx, monkeypatch):
    monkeypatch.setenv(NO_WINOGRAD_ENV, "1")
    mod = _scheduled(load_model(net_onnx).mod, targets.load_target("x86-64-avx2"))
    assert not _winograd_kernels(mod)
    assert sum(v.startswith("conv2d-nchwc-") for k, v in schedule_names(mod).items() if "conv" in k) == 5


def test_tile_rule():
    assert winograd_tile(64, 64, 56, 56, 1, 16) == 4             # large image: F(4x4)
    assert winograd_tile(256, 256, 14, 14, 1, 16) == 2           # 16 F(4x4) tiles on AVX-512: F(2x2)
    assert winograd_tile(256, 256, 14, 14, 1, 8) == 4            # ... on AVX2: F(4x4)
    assert winograd_tile(512, 512, 7, 7, 1, 16) == 2             # 4 F(4x4) tiles: F(2x2)
    assert winograd_tile(512, 512, 14, 14, 1, 8) == 2            # F(4x4) weights (38 MB) past the L3
    assert winograd_tile(1024, 1024, 7, 7, 1, 16) is None        # F(2x2) weights 67 MB: direct
    assert winograd_tile(64, 64, 5, 5, 1, 16) is None            # 9 F(2x2) tiles: direct
    assert winograd_tile(3, 64, 224, 224, 1, 16) is None         # an RGB stem: direct


def test_weight_transform_and_matrices_compute_the_conv():
    """Y = A^T [(G g G^T) . (B^T d B)] A equals the direct 3x3 correlation, for both tile sizes."""
    rng = np.random.default_rng(0)
    for m in (2, 4):
        alpha = m + 2
        bt, _, at = (np.asarray(mat, dtype=np.float64) for mat in _MATRICES[m])
        kernel = rng.standard_normal((1, 1, 3, 3, 1, 1))                  # blocked [OCB, ICB, 3, 3, ib, ob]
        d = rng.standard_normal((alpha, alpha))
        u = transform_weight(kernel, m).astype(np.float64).reshape(alpha, alpha)
        y = at @ (u * (bt @ d @ bt.T)) @ at.T
        direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * kernel[0, 0, :, :, 0, 0]) for j in range(m)] for i in range(m)])
        np.testing.assert_allclose(y, direct, rtol=1e-5, atol=1e-5)
