"""The fusion report (`compile --explain` and the manifest's kernel table)."""

from __future__ import annotations

import json

import pytest

from compile.explain import pattern_of
from conftest import run_cli


@pytest.mark.parametrize("name,pattern", [
    ("fused_conv2d_add_maximum_minimum", "conv2d+bias+relu6/clip"),
    ("fused_conv2d2_add_add1", "conv2d+bias+residual"),
    ("fused_matmul_add3", "matmul+bias"),
    ("fused_matmul1_add_gelu", "matmul+bias+gelu"),
    ("fused_conv2d1_add1_maximum", "conv2d+bias+relu"),
    ("mean", "mean"),
    # the blocked-layout kernels (compile/layout.py)
    ("fused_depthwise_conv2d_nchwc1_add3_maximum2_minimum2", "depthwise_conv2d+bias+relu6/clip"),
    ("fused_conv2d_nchwc17_add19_add21", "conv2d+bias+residual"),
    ("te_layout_transform1", "layout_transform"),
])
def test_pattern_names(name, pattern):
    assert pattern_of(name) == pattern


def test_explain_reports_every_kernel(convnet_onnx, tmp_path):
    out = tmp_path / "x"
    proc = run_cli("compile", convnet_onnx, "-o", out, "--explain", check=True)
    assert "fusion report" in proc.stdout and "conv2d+bias+relu6/clip" in proc.stdout
    assert "measured on this machine" in proc.stdout
    f = json.loads((out / "manifest.json").read_text())["fusion"]
    rows = f["kernel_table"]
    assert len(rows) == f["kernels"] and sum(r["launches"] for r in rows) == f["launches"]
    assert f["patterns"]["conv2d+bias+relu6/clip"] >= 2 and f["patterns"]["conv2d+bias+residual"] == 1
    for r in rows:
        assert r["bytes"] > 0 and r["time_us"] is not None and r["time_us"] > 0
        assert r["schedule"]
    convs = [r for r in rows if r["pattern"].startswith("conv2d")]
    assert all(r["flops"] and r["flops"] > 0 for r in convs)
    # inspect shows the same report from the manifest alone
    assert "fusion report" in run_cli("inspect", out, "--explain", check=True).stdout
