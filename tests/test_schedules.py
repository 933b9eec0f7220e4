"""Default CPU schedules (compile/schedules): which rule each kernel gets, outputs equal onnxruntime,
and the scheduled kernels compile for aarch64 and armv7 (and run under qemu where the C++ runner is).

Every single-op model below goes through the real pipeline: torch -> ONNX (checked against
onnxruntime) -> Relax -> fuse -> schedule -> build -> verify against onnxruntime (1e-4 abs / 1e-3 rel).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import targets
from compile import compile_model
from compile.frontend import load_model
from compile.schedule import NO_SCHEDULES_ENV, schedule_passes
from compile.schedules import cpu_config, schedule_names
from toolkit.export import export_onnx

ARM_TARGETS = {
    "aarch64": ("rpi4", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "aarch64-neon"),
    "armv7": ("armv7", "arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf", "armv7-neon"),
}


class ConvAct(nn.Module):
    """conv2d + bias + ReLU6 (the clip epilogue), hard-swish (act="hswish") or nothing."""

    def __init__(self, cin, cout, k, stride=1, groups=1, pad=None, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2 if pad is None else pad, groups=groups)
        self.act = nn.Hardswish() if act == "hswish" else nn.ReLU6() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.conv(x))


class PointwiseResidual(nn.Module):
    """1x1 conv + bias + residual add."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.conv(x)


class Linear(nn.Module):
    def __init__(self, k, n):
        super().__init__()
        self.fc = nn.Linear(k, n)

    def forward(self, x):
        return torch.relu(self.fc(x))


class BatchMatmul(nn.Module):
    """Attention-style batch matmul with a scale epilogue: (q @ k^T) / 8 @ v."""

    def forward(self, x):
        return torch.softmax(x @ x.transpose(-1, -2) / 8.0, dim=-1) @ x


class Transcendentals(nn.Module):
    """Exact GELU (erf), tanh, exp and softmax: rewritten to TVM's vectorisable approximations on CPU."""

    def forward(self, x):
        return torch.softmax(nn.functional.gelu(x) + torch.tanh(x) + torch.exp(-x * x), dim=-1)


class LayerNormSoftmax(nn.Module):
    """A layer norm over 64 features, then a softmax over them: two row reductions of whole vectors."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(64)

    def forward(self, x):
        return torch.softmax(self.norm(x) * 4.0, dim=-1)


class Pools(nn.Module):
    def forward(self, x):
        return nn.functional.max_pool2d(x, 3, 2, 1) + nn.functional.avg_pool2d(x, 2, 2)


# name -> (module, input shape, rule kinds that must appear)
OPS = {
    "conv3x3": (lambda: ConvAct(8, 24, 3), (1, 8, 20, 20), {"conv2d"}),
    "conv3x3-stride2-odd": (lambda: ConvAct(3, 10, 3, stride=2), (1, 3, 29, 23), {"conv2d"}),
    "conv7x7-stride2": (lambda: ConvAct(3, 16, 7, stride=2, act=False), (1, 3, 32, 32), {"conv2d"}),
    "depthwise3x3": (lambda: ConvAct(16, 16, 3, groups=16), (1, 16, 14, 14), {"conv2d-depthwise"}),
    "depthwise3x3-stride2": (lambda: ConvAct(24, 24, 3, stride=2, groups=24), (1, 24, 15, 15), {"conv2d-depthwise"}),
    # even padded width: the padding stage is stored de-interleaved (even/odd columns)
    "depthwise3x3-stride2-even": (lambda: ConvAct(16, 16, 3, stride=2, groups=16), (1, 16, 20, 20), {"conv2d-depthwise"}),
    # the search space's wider windows, with its hard-swish epilogue
    "depthwise5x5-hswish": (lambda: ConvAct(24, 24, 5, groups=24, act="hswish"), (1, 24, 14, 14), {"conv2d-depthwise"}),
    "depthwise7x7-stride2": (lambda: ConvAct(32, 32, 7, stride=2, groups=32), (1, 32, 17, 17), {"conv2d-depthwise"}),
    "pointwise-residual": (lambda: PointwiseResidual(32), (1, 32, 7, 7), {"conv2d"}),
    "linear": (lambda: Linear(40, 10), (3, 40), {"matmul"}),
    # 48 outputs: divisible by the vector width, so the weight is prepacked into panels (matmul_packed)
    "dense-packed": (lambda: Linear(64, 48), (16, 64), {"matmul"}),
    # one row, 40 outputs (a classifier's GEMV): 8 divides them, 16 does not (half-width panels on AVX-512)
    "gemv-40": (lambda: Linear(64, 40), (1, 64), {"matmul"}),
    "batch-matmul": (lambda: BatchMatmul(), (2, 16, 12), {"matmul", "reduction"}),
    "pools": (lambda: Pools(), (1, 8, 16, 16), {"pool"}),
    "transcendentals": (lambda: Transcendentals(), (4, 96), {"row-reduction", "elementwise"}),
    "layernorm-softmax": (lambda: LayerNormSoftmax(), (2, 24, 64), {"row-reduction"}),
    # rows of 18: not whole vectors at any width
    "softmax-18": (lambda: nn.Softmax(dim=-1), (6, 18), {"reduction"}),
}


def _export(name: str, out: Path) -> Path:
    build, shape, _ = OPS[name]
    torch.manual_seed(0)
    module = build().eval()
    return export_onnx(module, torch.randn(shape), out / f"{name}.onnx")


def _schedule_only(onnx_path: Path, target) -> dict[str, str | None]:
    """Kernel -> rule after fusion and scheduling (before lowering), for `target`."""
    import tvm

    from compile.build import cpu_front_passes

    model = load_model(onnx_path)
    tt = tvm.target.Target(target.tvm)
    with tt:
        mod = tvm.transform.Sequential(cpu_front_passes(tt) + schedule_passes(target))(model.mod)
    return schedule_names(mod)


def _is_compute_kernel(name: str) -> bool:
    return any(k in name for k in ("conv2d", "matmul", "dense", "pool"))


@pytest.fixture(scope="module")
def op_models(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sched-ops")
    return {name: _export(name, out) for name in OPS}


@pytest.fixture(scope="module")
def host():
    return targets.load_target("host")


@pytest.mark.parametrize("name", list(OPS))
def test_rule_applied_and_matches_onnxruntime(name, op_models, host, tmp_path):
    names = _schedule_only(op_models[name], host)
    isa = cpu_config(host).isa
    kinds = {v[: -len(isa) - 1] for v in names.values() if v}
    assert OPS[name][2] <= kinds, names
    unscheduled = [k for k, v in names.items() if v is None and _is_compute_kernel(k)]
    assert not unscheduled, f"conv/matmul/pool kernels left unscheduled: {unscheduled}"
    assert all(v is None or v.endswith(isa) for v in names.values())
    # compile_model verifies against onnxruntime and raises VerificationError on a mismatch.
    result = compile_model(op_models[name], host, tmp_path / "art")
    assert result.manifest["verification"]["passed"] is True


def test_transcendentals_use_vectorisable_approximations(op_models, host, tmp_path):
    """No scalar libm erf/exp/tanh call is left in any kernel, and the result stays within 1e-5 of onnxruntime."""
    import tvm

    from compile.build import cpu_front_passes

    model = load_model(op_models["transcendentals"])
    with tvm.target.Target(host.tvm) as tt:
        mod = tvm.transform.Sequential(cpu_front_passes(tt))(model.mod)
    tir = "\n".join(f.script() for _, f in mod.functions_items() if not isinstance(f, tvm.relax.Function))
    assert tir and not any(f"T.{fn}(" in tir for fn in ("erf", "exp", "tanh")), tir
    result = compile_model(op_models["transcendentals"], host, tmp_path / "art", atol=1e-5, rtol=1e-4)
    assert result.manifest["verification"]["max_abs_error"] <= 1e-5


X86_ISAS = {"x86-64-avx2": "x86-avx2", "x86-64-avx512": "x86-avx512"}


@pytest.mark.parametrize("target_name", list(X86_ISAS))
def test_conv_weights_prepacked_at_compile_time(op_models, target_name):
    """Convs whose output channels are a multiple of 8 use OIHW[x]o weights, folded at build time, on AVX2
    and on AVX-512 alike (24 channels: 8-lane vectors on AVX-512). Both ISAs are checked on any x86 host."""
    target = targets.load_target(target_name)
    names = _schedule_only(op_models["conv3x3"], target)
    packed = [k for k in names if k.endswith("_prepacked")]
    assert packed and all(names[k] == f"conv2d-{X86_ISAS[target_name]}" for k in packed), names
    assert not [k for k in names if "weight_prepack" in k], f"weight repacking left as a runtime kernel: {names}"
    # 10 output channels: not a multiple of 8, so the spatially vectorised conv rule takes it.
    odd = _schedule_only(op_models["conv3x3-stride2-odd"], target)
    assert not [k for k in odd if k.endswith("_prepacked")] and any(v and v.startswith("conv2d-") for v in odd.values())


@pytest.mark.parametrize("target_name", [*X86_ISAS, "rpi4"])
def test_dense_weights_prepacked_into_panels(op_models, target_name):
    """A dense layer whose outputs divide by the vector width reads its weight as [N/vn, K, vn] panels,
    repacked at build time (no runtime repack kernel); one whose outputs do not keeps the generic rule."""
    target = targets.load_target(target_name)
    names = _schedule_only(op_models["dense-packed"], target)
    packed = [k for k in names if k.endswith("_prepacked")]
    isa = cpu_config(target).isa
    assert packed and all(names[k] == f"matmul-{isa}" for k in packed), names
    assert not [k for k in names if "weight_prepack" in k], f"weight repacking left as a runtime kernel: {names}"
    odd = _schedule_only(op_models["linear"], target)  # 10 outputs
    assert not [k for k in odd if k.endswith("_prepacked")] and any(v and v.startswith("matmul-") for v in odd.values())
    if target_name != "rpi4":
        # a single row whose outputs divide by 8, not by 16: packed too (8-lane panels on AVX-512)
        gemv = _schedule_only(op_models["gemv-40"], target)
        assert [k for k in gemv if k.endswith("_prepacked")], gemv


def _scheduled_module(onnx_path: Path, target):
    import tvm

    from compile.build import cpu_front_passes

    model = load_model(onnx_path)
    with tvm.target.Target(target.tvm) as tt:
        return tvm.transform.Sequential(cpu_front_passes(tt) + schedule_passes(target))(model.mod)


@pytest.mark.parametrize("target_name", [*X86_ISAS, "rpi4"])
def test_row_reductions_keep_partial_results_in_vectors(op_models, target_name):
    """Layer norm and softmax rows reduce into one vector of partial sums/maxima (rfactor), not lane by lane;
    a row that is not whole vectors (18 wide) keeps TVM's reduction rule."""
    from tvm import relax

    target = targets.load_target(target_name)
    cfg = cpu_config(target)
    mod = _scheduled_module(op_models["layernorm-softmax"], target)
    rows = {gv.name_hint: f.script() for gv, f in mod.functions_items()
            if not isinstance(f, relax.Function) and ("layer_norm" in gv.name_hint or "softmax" in gv.name_hint)}
    assert len(rows) == 2, list(rows)
    names = schedule_names(mod)
    lanes = cfg.lanes(32)
    for name, tir in rows.items():
        assert names[name] == f"row-reduction-{cfg.isa}", names
        # each factored reduction: its partial results written by a vectorised loop over the lanes
        assert tir.count("_rf") >= 2 and f"T.vectorized(T.int64({lanes}))" in tir, tir
    assert set(_schedule_only(op_models["softmax-18"], target).values()) == {f"reduction-{cfg.isa}"}


@pytest.mark.parametrize("target_name", [*X86_ISAS, "rpi4"])
def test_pools_read_their_padding_in_place(op_models, target_name):
    """A padded max pool reads its input with a bounds check per tap: no padded copy of the input is stored."""
    from tvm import relax

    target = targets.load_target(target_name)
    mod = _scheduled_module(op_models["pools"], target)
    pools = {gv.name_hint: f.script() for gv, f in mod.functions_items()
             if not isinstance(f, relax.Function) and "max_pool" in gv.name_hint}
    assert pools and all(schedule_names(mod)[k].startswith("pool-") for k in pools), schedule_names(mod)
    assert not any("pad_temp = T.sblock_alloc_buffer" in tir for tir in pools.values()), pools


@pytest.mark.parametrize("target_name", list(X86_ISAS))
def test_x86_isa_built_and_inspected(op_models, target_name, tmp_path):
    """Each x86 ISA's schedules build, use that ISA's vector registers, and run (and verify) where the CPU has it."""
    import tvm

    from compile.build import relax_pipeline

    target = targets.load_target(target_name)
    model = load_model(op_models["depthwise5x5-hswish"])
    tt = tvm.target.Target(target.tvm)
    with tt:
        ex = tvm.compile(relax_pipeline(target)(model.mod), target=tt, relax_pipeline=None)
    asm = "\n".join(m.inspect_source("asm") for m in [ex.mod, *ex.mod.imports] if m.kind == "llvm")
    register = {"x86-64-avx2": "%ymm", "x86-64-avx512": "%zmm"}[target_name]
    assert register in asm, f"no {register} register in the {target_name} build"
    result = compile_model(op_models["depthwise5x5-hswish"], target, tmp_path / "art")
    verification = result.manifest["verification"]
    if target.missing_cpu_features():
        assert verification["passed"] is None and "lacks" in verification["skipped"], verification
    else:
        assert verification["passed"] is True, verification


def test_zoo_convnet_every_kernel_scheduled(convnet_onnx, host, tmp_path):
    names = _schedule_only(convnet_onnx, host)
    assert names and all(v is not None for v in names.values()), names
    result = compile_model(convnet_onnx, host, tmp_path / "art")
    assert result.manifest["verification"]["passed"] is True
    assert result.manifest["verification"]["max_abs_error"] <= 1e-4


def test_zoo_transformer_matmuls_scheduled(transformer_onnx, host, tmp_path):
    names = _schedule_only(transformer_onnx, host)
    matmuls = {k: v for k, v in names.items() if "matmul" in k}
    assert matmuls and all(v and v.startswith("matmul-") for v in matmuls.values()), names
    result = compile_model(transformer_onnx, host, tmp_path / "art")
    assert result.manifest["verification"]["passed"] is True


def test_schedules_are_faithful_to_unscheduled_build(op_models, host, tmp_path, monkeypatch):
    """Scheduled and unscheduled kernels agree with each other, not only with onnxruntime."""
    from compile import VMExecutor, random_inputs

    model = load_model(op_models["conv3x3-stride2-odd"])
    inputs = random_inputs(model.inputs, 3)
    outs = []
    for disabled in (False, True):
        if disabled:
            monkeypatch.setenv(NO_SCHEDULES_ENV, "1")
        art = compile_model(op_models["conv3x3-stride2-odd"], host, tmp_path / f"art{int(disabled)}").artifact
        outs.append(VMExecutor(art / "model.so", "cpu").run([inputs[s.name] for s in model.inputs]))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)


def test_env_var_disables_schedules(host, monkeypatch):
    assert schedule_passes(host)
    monkeypatch.setenv(NO_SCHEDULES_ENV, "1")
    assert schedule_passes(host) == []


def test_cpu_config_from_targets(host):
    base = targets.load_target("x86-64-avx2")
    assert cpu_config(base).vector_bits == 256 and cpu_config(base).isa == "x86-avx2"
    avx512 = dataclasses.replace(base, tvm={**base.tvm, "mattr": ["+avx2", "+fma", "+avx512f"]}, features=())
    assert cpu_config(avx512).vector_bits == 512 and cpu_config(avx512).vector_regs == 32
    rpi4 = cpu_config(targets.load_target("rpi4"))
    assert (rpi4.vector_bits, rpi4.vector_regs, rpi4.isa, rpi4.threads) == (128, 32, "aarch64-neon", 4)
    armv7 = cpu_config(targets.load_target("armv7"))
    assert (armv7.vector_bits, armv7.vector_regs, armv7.isa) == (128, 16, "armv7-neon")
    assert cpu_config(host).lanes(32) >= 4


@pytest.mark.parametrize("arch", list(ARM_TARGETS))
def test_schedules_compile_for_arm(arch, op_models, convnet_onnx, tmp_path):
    target_name, compiler, package, isa = ARM_TARGETS[arch]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not found: apt-get install {package}")
    target = targets.load_target(target_name)
    for name in ("conv3x3-stride2-odd", "depthwise3x3-stride2-even", "depthwise7x7-stride2", "pointwise-residual",
                 "batch-matmul", "pools", "layernorm-softmax"):
        names = _schedule_only(op_models[name], target)
        assert any(v and v.endswith(isa) for v in names.values()), names
        assert not [k for k, v in names.items() if v is None and _is_compute_kernel(k)], names
        result = compile_model(op_models[name], target, tmp_path / name, verify=False)
        assert result.manifest["target"]["arch"] == target.arch
    names = _schedule_only(convnet_onnx, target)
    assert all(v is not None for v in names.values()), names


def test_scheduled_aarch64_model_runs_under_qemu(op_models, convnet_onnx, tmp_path):
    """The scheduled convnet built for the Raspberry Pi 4, run by the C++ runner under qemu, equals onnxruntime."""
    import onnxruntime as ort

    from toolkit import native

    for tool, package in (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("qemu-aarch64-static", "qemu-user-static"),
                          ("cmake", "cmake")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: apt-get install {package}")
    try:
        runtime = native.build_runtime("aarch64")
    except native.NativeRuntimeError as exc:
        pytest.skip(f"the aarch64 C++ runtime could not be built here: {exc}")
    target = targets.load_target("rpi4")
    rng = np.random.default_rng(5)
    models = [convnet_onnx] + [op_models[n] for n in ("batch-matmul", "depthwise5x5-hswish", "layernorm-softmax")]
    for model in models:
        art = compile_model(model, target, tmp_path / model.stem, verify=False).artifact
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = rng.standard_normal([int(d) for d in inp.shape]).astype(np.float32)
        result = native.run_artifact(art, {inp.name: x}, emulate=True, warmup=0, repeat=0, threads=2, runtime_dir=runtime)
        (actual,) = result.outputs.values()
        np.testing.assert_allclose(actual, sess.run(None, {inp.name: x})[0], rtol=1e-3, atol=1e-4)
        assert result.emulated
