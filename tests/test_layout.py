"""Blocked layouts (NCHW[x]c, compile/layout.py) and their register-tiled kernels (compile/schedules/nchwc.py).

Checked per ISA, whatever the host: the zoo CNNs' convolutions all take the blocked path on AVX2,
AVX-512 and aarch64 NEON, with layout transforms only at the graph's ends and no padding kernel
before a depthwise conv; the built pointwise kernels hold their accumulator tile in registers (no
spills, FMA with broadcast operands: `vfmadd` on x86, `fmla` by lane on aarch64). Outputs equal
onnxruntime on this machine (the generated corpus covers the odd shapes, on host and under qemu).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import targets
from compile import compile_model
from compile.frontend import load_model
from compile.layout import block_candidates, planned_layouts
from compile.schedule import schedule_passes
from compile.schedules import schedule_names
from toolkit.export import export_onnx, export_zoo_model

ZOO_CNNS = ["convnet", "mobilenetv2", "resnet18", "searchnet"]
ISA_TARGETS = {"x86-64-avx2": 8, "x86-64-avx512": 16, "rpi4": 4}  # target -> its widest channel block


@pytest.fixture(scope="module")
def zoo_models(model_dir) -> dict[str, object]:
    """Each zoo CNN exported to ONNX and imported once (the passes below do not change the module)."""
    return {name: load_model(export_zoo_model(name, model_dir / f"{name}.onnx")) for name in ZOO_CNNS}


def _scheduled(mod, target):
    """The module after the CPU front passes (blocked layout included) and the default schedules."""
    import tvm

    from compile.build import cpu_front_passes

    tt = tvm.target.Target(target.tvm)
    with tt:
        return tvm.transform.Sequential(cpu_front_passes(tt, target) + schedule_passes(target))(mod)


def _block_names(func) -> set[str]:
    import tvm_ffi
    from tvm import s_tir

    names: set[str] = set()
    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, lambda b: names.add(str(b.name_hint))), order="post")
    return names


@pytest.mark.parametrize("target_name", list(ISA_TARGETS))
@pytest.mark.parametrize("name", ZOO_CNNS)
def test_every_conv_takes_the_blocked_path(zoo_models, name, target_name):
    import tvm

    target = targets.load_target(target_name)
    mod = _scheduled(zoo_models[name].mod, target)
    names = schedule_names(mod)
    convs = {k: v for k, v in names.items() if "conv" in k}
    # (stride-1 3x3 convs of the shapes where it is faster take the blocked Winograd kernel: tests/test_winograd.py)
    assert convs and all(v and (v.split("-")[0] in ("conv2d", "depthwise") and "-nchwc-" in v
                                or v.startswith("conv2d-winograd-")) for v in convs.values()), convs
    # layout transforms only where the conv chain starts (the NCHW input) and ends (before pooling/flatten)
    transforms = [k for k in names if "layout_transform" in k]
    assert len(transforms) <= 2, transforms
    # padding is read in place: no kernel of its own, no padded copy inside a depthwise kernel
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        blocks = _block_names(func)
        assert not (blocks and blocks <= {"pad_nchwc", "root"}), f"{gv.name_hint} is a padding kernel"
        if "depthwise_conv2d_nchwc" in blocks:
            assert "pad_nchwc" not in blocks, f"{gv.name_hint} materialises its padding"


@pytest.mark.parametrize("target_name", list(ISA_TARGETS))
def test_block_follows_the_isa_and_the_channels(zoo_models, target_name):
    target = targets.load_target(target_name)
    widest = ISA_TARGETS[target_name]
    candidates = block_candidates(target)
    assert candidates[0] == widest

    def outputs(name):   # the blocks the model's conv outputs are written in
        layouts = planned_layouts(zoo_models[name].mod, candidates)
        assert all(layouts), (name, layouts)   # every conv is blocked
        return {int(out[4:-1]) for _, _, out in layouts}

    # a tensor's block follows its channel count: ResNet18's 64..512 all take the widest; on AVX-512
    # MobileNetV2's 24-channel tensors take 8 and every other (16, 32, 96, 144, ...) 16, not the whole net 8
    assert outputs("resnet18") == {widest}
    assert outputs("mobilenetv2") == ({16, 8} if widest == 16 else {widest})


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet18", "searchnet"])
def test_blocked_zoo_models_match_onnxruntime(zoo_models, name, tmp_path):
    """compile verifies against onnxruntime (1e-4 abs / 1e-3 rel) and fails on a mismatch."""
    host = targets.load_target("host")
    result = compile_model(zoo_models[name].path, host, tmp_path / name)
    assert result.manifest["verification"]["passed"] is True, result.manifest["verification"]
    kinds = set(result.manifest["tuning"]["kernels"].values())
    assert any("nchwc" in k for k in kinds), kinds


class _Pointwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(32, 64, 1)

    def forward(self, x):
        return torch.clamp(self.conv(x), 0, 6)


@pytest.fixture(scope="module")
def pointwise_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(_Pointwise().eval(), torch.randn(1, 32, 14, 14), tmp_path_factory.mktemp("pw") / "pw.onnx")


# target -> (FMA with a broadcast operand in the tile, a vector register stored to the stack (group 1: the
# register), the destination register of an FMA (group 1))
_ASM = {
    "x86-64-avx2": (r"vfmadd\d+ps\s+%ymm", r"vmov[au]ps\s+%(ymm\d+), -?\d*\(%rsp\)", r"vfmadd\d+ps\s+.*%(ymm\d+)$"),
    "x86-64-avx512": (r"vfmadd\d+ps\s+.*%[yz]mm", r"vmov[au]ps\s+%([yz]mm\d+), -?\d*\(%rsp\)",
                      r"vfmadd\d+ps\s+.*%([yz]mm\d+)$"),
    "rpi4": (r"fmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[\d\]", r"str\s+q(\d+), \[sp", r"fmla\s+v(\d+)\.4s"),
}


def _accumulator_spills(asm: str, store: str, fma_dest: str) -> list[str]:
    """Stack stores of a register whose last write was an FMA: an accumulator of the tile leaving the
    register file. (LLVM may park a weight vector it loaded early on the stack: that is a reload from
    L1 like the weight load itself, not a spill of the tile.)"""
    last_write: dict[str, str] = {}
    spills = []
    for line in asm.splitlines():
        line = line.strip()
        st = re.search(store, line)
        if st:
            if last_write.get(st.group(1)) == "fma":
                spills.append(line)
            continue
        dest = re.search(fma_dest, line)
        if dest:
            last_write[dest.group(1)] = "fma"
            continue
        # any other instruction writing a register: AT&T puts the destination last, AArch64 first
        m = re.search(r"%([xyz]mm\d+)$", line) or re.match(r"\w+\s+[vq](\d+)[.,\s]", line)
        if m:
            last_write[m.group(1)] = "other"
    return spills


@pytest.mark.parametrize("target_name", list(_ASM))
def test_pointwise_kernel_keeps_its_tile_in_registers(pointwise_onnx, target_name):
    """Built for each ISA (no CPU needed: LLVM emits the assembly): FMAs on the tile, no accumulator spilled."""
    import tvm

    target = targets.load_target(target_name)
    mod = _scheduled(load_model(pointwise_onnx).mod, target)
    sched = schedule_names(mod)
    kernels = [(gv, f) for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and (sched.get(gv.name_hint) or "").startswith("conv2d-nchwc")]
    assert len(kernels) == 1, sched
    gv, func = kernels[0]
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tvm.target.Target(target.tvm))
    fma, store, fma_dest = _ASM[target_name]
    # the functions holding the FMAs (the parallel loop body); the launch wrappers around them copy
    # their closure through the stack, which is not a spill of the tile
    functions = re.split(r"\n(?=[A-Za-z_.$][\w.$]*:\n)", lib.inspect_source("asm"))
    compute = [f for f in functions if re.search(fma, f)]
    assert compute and sum(len(re.findall(fma, f)) for f in compute) >= 8, \
        f"no register tile of FMAs in {gv.name_hint} for {target_name}"
    spilled = [ln for f in compute for ln in _accumulator_spills(f, store, fma_dest)]
    assert not spilled, f"{gv.name_hint} spills its accumulators on {target_name}: {spilled[:3]}"


def test_blocked_and_nchw_builds_agree(pointwise_onnx, tmp_path, monkeypatch):
    """The blocked build equals the NCHW build of the same model (not only onnxruntime)."""
    import compile.layout as layout
    from compile import VMExecutor, random_inputs

    host = targets.load_target("host")
    model = load_model(pointwise_onnx)
    inputs = [random_inputs(model.inputs, 1)[s.name] for s in model.inputs]
    blocked = compile_model(pointwise_onnx, host, tmp_path / "blocked").artifact
    monkeypatch.setattr(layout, "blocked_layout_passes", lambda target: [])
    plain = compile_model(pointwise_onnx, host, tmp_path / "plain")
    assert not any("nchwc" in v for v in plain.manifest["tuning"]["kernels"].values())
    a = VMExecutor(blocked / "model.so", "cpu").run(inputs)[0]
    b = VMExecutor(plain.artifact / "model.so", "cpu").run(inputs)[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _conv_pad_chain(path: Path) -> Path:
    """Three 16-channel convs with a spatial Pad between each (Pad imports as an opaque TE call)."""
    import onnx
    from onnx import TensorProto as T, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        inits.append(numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[0, 0, 0, 0]))
        nodes.append(helper.make_node("Pad", [f"c{i}", "pads"], [f"p{i}"], mode="reflect"))
        x = f"p{i}"
    inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 16, 12, 12])],
                          [helper.make_tensor_value_info(x, T.FLOAT, [1, 16, 12, 12])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_blocking_is_dropped_where_transforms_would_surround_every_op(tmp_path):
    """A layout transform before and after every op between the convs costs more than blocking saves."""
    from compile.layout import _activation_transforms, blocked_layout_passes

    host = targets.load_target("x86-64-avx2")
    model = load_model(_conv_pad_chain(tmp_path / "chain.onnx"))
    import tvm

    out = tvm.transform.Sequential(blocked_layout_passes(host))(model.mod)
    assert _activation_transforms(out) == 0 and "nchwc" not in out["main"].script().lower()
    result = compile_model(tmp_path / "chain.onnx", targets.load_target("host"), tmp_path / "art")
    assert result.manifest["verification"]["passed"] is True
    # the same convs without the Pads between them are blocked, with transforms only at the two ends
    mobilenet = tvm.transform.Sequential(blocked_layout_passes(host))(load_model(
        export_zoo_model("convnet", tmp_path / "convnet.onnx")).mod)
    assert 1 <= _activation_transforms(mobilenet) <= 2


@pytest.mark.parametrize("target_name", list(ISA_TARGETS))
def test_tflite_convs_with_a_pad_and_vector_biases_are_blocked(small_tflite, target_name):
    """litert-torch writes a conv's padding as a PAD op in front of it and TVM's TFLite importer adds each
    bias as a [C] vector: the pad folds into the conv (no padded copy of the input) and the biases become
    4-D constants, so every conv takes the blocked layout (either left in place kept the model unblocked)."""
    target = targets.load_target(target_name)
    names = schedule_names(_scheduled(load_model(small_tflite).mod, target))
    convs = {k: v for k, v in names.items() if "conv" in k}
    assert len(convs) == 3 and all("-nchwc-" in v for v in convs.values()), names
    assert not [k for k in names if "pad" in k], names
