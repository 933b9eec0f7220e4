"""The mbconv-v1 search space: architecture JSON validation, sampling, export through the CLI, and a member
compiled for the host with every kernel scheduled and verified against onnxruntime."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import targets
from compile import compile_model
from conftest import assert_nothing_written, assert_user_error, run_cli
from toolkit import search_space as space

# A small member with every searchable choice the compiler must handle: 3/5/7 windows, both activations,
# every expansion, the smallest resolution and width.
SMALL = {
    "space": "mbconv-v1", "resolution": 160, "width": 0.75,
    "stages": [
        {"act": "relu6", "blocks": [{"kernel": 7, "expand": 3}, {"kernel": 5, "expand": 4}]},
        {"act": "hswish", "blocks": [{"kernel": 5, "expand": 6}, {"kernel": 3, "expand": 3}]},
        {"act": "hswish", "blocks": [{"kernel": 3, "expand": 4}, {"kernel": 7, "expand": 3}]},
        {"act": "relu6", "blocks": [{"kernel": 3, "expand": 3}, {"kernel": 5, "expand": 3}]},
        {"act": "hswish", "blocks": [{"kernel": 7, "expand": 6}, {"kernel": 3, "expand": 3}]},
    ],
}


def test_samples_are_members_and_deterministic():
    for seed in range(20):
        arch = space.sample(seed)
        assert space.validate(arch) == arch
        assert space.sample(seed) == arch
    assert len({json.dumps(space.sample(s)) for s in range(20)}) == 20
    assert space.validate(space.SAMPLE) == space.SAMPLE


def test_network_follows_the_architecture():
    net = space.SearchNet(SMALL).eval()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [m.kernel_size[0] for m in convs if m.groups > 1 and m.groups == m.in_channels]
    # the fixed first block (3x3) and then one window per searched block, in order
    assert depthwise == [3] + [b["kernel"] for st in SMALL["stages"] for b in st["blocks"]]
    assert sum(isinstance(m, torch.nn.Hardswish) for m in net.modules()) > 0
    with torch.no_grad():
        assert net(torch.randn(space.input_shape(SMALL))).shape == (1, space.NUM_CLASSES)


@pytest.mark.parametrize("change,fragment", [
    (lambda a: a["stages"][1]["blocks"][0].update(kernel=4), "stage 1 block 0 kernel is 4"),
    (lambda a: a.update(resolution=100), "resolution is 100"),
    (lambda a: a["stages"][2].update(act="gelu"), "stage 2 act is 'gelu'"),
    (lambda a: a["stages"][0]["blocks"].pop(), "stage 0 depth is 1"),
    (lambda a: a.update(space="darts"), "this toolkit knows 'mbconv-v1'"),
])
def test_bad_architecture_is_one_line(tmp_path, change, fragment):
    arch = copy.deepcopy(SMALL)
    change(arch)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch))
    out = tmp_path / "net.onnx"
    assert_user_error(run_cli("export", "--arch", path, "-o", out), 2, fragment)
    assert_nothing_written(out)


def test_architecture_file_that_is_not_json(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text("stages: [")
    out = tmp_path / "net.onnx"
    assert_user_error(run_cli("export", "--arch", path, "-o", out), 2, "is not valid JSON")
    assert_nothing_written(out)


def test_member_exports_and_compiles_for_host_fully_scheduled(tmp_path):
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(SMALL))
    onnx_path = tmp_path / "net.onnx"
    proc = run_cli("export", "--arch", arch_file, "-o", onnx_path, check=True)
    assert "checked against onnxruntime" in proc.stdout
    result = compile_model(onnx_path, targets.load_target("host"), tmp_path / "art")
    manifest = result.manifest
    assert manifest["verification"]["passed"] is True
    kernels = manifest["tuning"]["kernels"]
    convs = {k: v for k, v in kernels.items() if "conv2d" in k or "matmul" in k}
    assert convs and all(v.startswith("default:") for v in convs.values()), kernels
    # depthwise convs: blocked (NCHW[x]c, compile/layout.py) where the channels divide by the block, else NCHW
    assert any(v.startswith(("default:depthwise-nchwc", "default:conv2d-depthwise")) for v in convs.values())
