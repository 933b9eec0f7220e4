"""INT8: calibration, the integer rewrite, per-ISA integer schedules, accuracy gate, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import targets
from compile import load_model
from compile.build import cpu_front_passes
from compile.schedules import schedule_names, schedule_passes
from conftest import assert_nothing_written, assert_user_error, have, run_cli
from toolkit.datasets import load_dataset
from toolkit.export import export_onnx


class DigitsNet(nn.Module):
    """A small CNN for 8x8 digits: every conv divides by the AVX2 / NEON block (the stem reads 1 channel)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU6(),
            nn.Conv2d(32, 32, 1), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A DigitsNet trained here on the bundled digits (a few seconds), its ONNX file and data folders."""
    root = tmp_path_factory.mktemp("digits")
    ds = load_dataset("digits")
    torch.manual_seed(0)
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y)
    for _ in range(40):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    net.eval()
    onnx_path = export_onnx(net, torch.from_numpy(ds.test.x[:1]), root / "digits.onnx")
    calib, test = root / "calib", root / "test"
    calib.mkdir()
    test.mkdir()
    np.save(calib / "train.npy", ds.train.x[:128])                      # a batch in one file
    for i in range(len(ds.test.y)):
        np.save(test / f"{i:04d}.npy", ds.test.x[i:i + 1])            # one sample per file
    np.save(root / "labels.npy", ds.test.y)
    return {"onnx": onnx_path, "calib": calib, "test": test, "labels": root / "labels.npy", "root": root}


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


@pytest.fixture(scope="module")
def digits_int8(digits):
    """The digits net compiled with --int8 through the CLI: (artifact, the compile's process)."""
    out = digits["root"] / "int8"
    proc = run_cli("compile", digits["onnx"], "-o", out, "--int8", "--calibration", digits["calib"],
                   "--validation", digits["test"], "--labels", digits["labels"], "--explain", check=True)
    return out, proc


def test_int8_digits_keeps_accuracy_and_computes_in_integers(digits, digits_int8):
    """Through the CLI: calibrated on training data, top-1 on the test split within 1 point of fp32;
    every conv and the classifier are u8 x i8 -> i32 kernels, the output matches onnxruntime's literal
    QDQ execution within one quantization step."""
    out, proc = digits_int8
    p = _manifest(out)["precision"]
    assert p["mode"] == "int8" and p["float_ops"] == {}, p["float_ops"]
    assert p["integer_ops"] == {"conv2d": 4, "matmul": 1}
    cal = p["calibration"]
    assert cal["method"] == "minmax" and cal["samples"] == 128 and cal["tensor_ranges"]
    acc = p["accuracy"]
    assert acc["samples"] == 360 and acc["data"] == "validation"
    assert acc["reference_top1"] > 0.9, acc  # the float net learned the task
    assert acc["top1"] >= acc["reference_top1"] - 0.01, acc
    assert acc["argmax_agreement"] >= 0.98
    rows = _manifest(out)["fusion"]["kernel_table"]
    compute = [r for r in rows if r["pattern"].split("+")[0] in ("conv2d", "depthwise_conv2d", "matmul", "dense")]
    assert len(compute) == 5 and all(r["dtypes"].endswith("→i32") and "f32" not in r["dtypes"] for r in compute), \
        [(r["name"], r["dtypes"]) for r in compute]
    assert "u8×i8→i32" in proc.stdout and "accuracy vs fp32" in proc.stdout
    v = _manifest(out)["verification"]
    assert v["passed"] and v["atol"] > 1e-4  # one output step, not the fp32 tolerance
    # real inputs, not only the verification's random ones: within one step of the literal QDQ graph
    qdq = out / "quantized.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    literal = ort.InferenceSession(str(qdq), so, providers=["CPUExecutionProvider"])
    from compile.quantize import output_steps
    from toolkit.runtime import load

    step = max(output_steps(qdq).values())
    model = load(out)
    x = np.load(digits["calib"] / "train.npy")[:32]
    for i in range(len(x)):
        got = model.run({"x": x[i:i + 1]})["y"]
        want = literal.run(None, {"x": x[i:i + 1]})[0]
        assert np.abs(got - want).max() <= 1.001 * step


def test_accuracy_command(digits, digits_int8):
    out = digits_int8[0]
    proc = run_cli("accuracy", out, "--reference", digits["onnx"], "--data", digits["test"], "--labels",
                   digits["labels"], "--json", check=True)
    rep = json.loads(proc.stdout)
    assert rep["samples"] == 360 and 0 <= rep["argmax_agreement"] <= 1 and rep["top1"] is not None
    human = run_cli("accuracy", out, "--reference", digits["onnx"], "--data", digits["test"], check=True)
    assert "argmax agreement" in human.stdout


def test_agreement_gate_fails_the_compile_and_writes_nothing(digits, tmp_path):
    """Calibrated on inputs a thousandth of the real range, the int8 model saturates: below the gate."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    np.save(tiny / "t.npy", np.load(digits["calib"] / "train.npy")[:16] * 1e-3)
    out = tmp_path / "bad"
    proc = run_cli("compile", digits["onnx"], "-o", out, "--int8", "--calibration", tiny,
                   "--validation", digits["test"])
    assert_user_error(proc, 1, "agrees with the fp32 model", "--min-agreement")
    assert_nothing_written(out)


def test_qdq_model_compiles_as_integer_kernels(digits_int8, tmp_path):
    """A QDQ model quantized elsewhere (onnxruntime here) compiles without --int8, verified literally."""
    out = tmp_path / "q"
    qdq = tmp_path / "model_int8.onnx"
    qdq.write_bytes((digits_int8[0] / "quantized.onnx").read_bytes())
    run_cli("compile", qdq, "-o", out, check=True)
    p = _manifest(out)["precision"]
    assert p["mode"] == "int8" and p["calibration"] is None and p["integer_ops"]["conv2d"] == 4
    assert _manifest(out)["verification"]["passed"]
    assert_user_error(run_cli("compile", qdq, "-o", tmp_path / "x", "--int8", "--calibration-random", "4"),
                      2, "already quantized")


@pytest.mark.parametrize("args, fragment", [
    (["--calibration", "{calib}"], "--int8"),                               # an --int8 option without --int8
    (["--int8"], "calibration data"),
    (["--int8", "--calibration", "{calib}", "--calibration-random", "4"], "calibration data"),
    (["--int8", "--calibration", "/nonexistent"], "not a directory"),
    (["--int8", "--calibration-random", "4", "--calibration-method", "kl"], "minmax"),
    (["--int8", "--calibration-random", "4", "--min-agreement", "1.5"], "between 0 and 1"),
    (["--int8", "--calibration", "{bad}"], "shape"),
    (["--int8", "--calibration", "{nan}"], "NaN"),
    (["--int8", "--calibration", "{npz}"], "lacks the input(s) x"),
    (["--int8", "--calibration", "{calib}", "--validation", "{calib}", "--labels", "{labels}"], "360 labels for 128"),
])
def test_int8_bad_options(digits, tmp_path, args, fragment):
    """Each refused before anything is built (the labels' count included), one line, nothing written."""
    dirs = {k: tmp_path / k for k in ("bad", "nan", "npz")}
    for d in dirs.values():
        d.mkdir()
    np.save(dirs["bad"] / "wrong.npy", np.zeros((1, 3, 8, 8), np.float32))
    np.save(dirs["nan"] / "nan.npy", np.full((1, 1, 8, 8), np.nan, np.float32))
    np.savez(dirs["npz"] / "keyed.npz", y=np.zeros((1, 1, 8, 8), np.float32))
    args = [a.format(calib=digits["calib"], labels=digits["labels"], **dirs) for a in args]
    out = tmp_path / "o"
    assert_user_error(run_cli("compile", digits["onnx"], "-o", out, *args), 2, fragment)
    assert_nothing_written(out)


# ---- per-target integer schedules: built and inspected for every ISA on any host -------------------

_DOT = {
    "x86-64-avx2": (r"vpmaddubsw", "avx2"),
    "x86-64-avx512": (r"vpdpbusd", "vnni"),
    "rpi5": (r"sdot\s+v\d+\.4s", "sdot"),
}


@pytest.fixture(scope="module")
def qdq_for(digits, tmp_path_factory):
    """The digits net quantized for a target (activation type and reduce_range follow the target)."""
    from compile.quantize import load_samples, quantize_model
    from compile.frontend import fix_shapes, onnx_input_specs, _read_onnx

    cache: dict[str, Path] = {}

    def make(target_name: str) -> Path:
        if target_name not in cache:
            target = targets.load_target(target_name)
            specs = fix_shapes(onnx_input_specs(_read_onnx(digits["onnx"])), {})
            path = tmp_path_factory.mktemp("qdq") / f"{target_name}.onnx"
            quantize_model(digits["onnx"], path, target, load_samples(digits["calib"], specs), "minmax")
            cache[target_name] = path
        return cache[target_name]

    return make


def _integer_kernels(qdq: Path, target):
    import tvm

    tt = tvm.target.Target(target.tvm)
    mod = load_model(qdq).mod
    with tt:
        from tvm import relax

        mod = tvm.transform.Sequential(cpu_front_passes(tt, target) + [
            relax.transform.FoldConstant(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
            relax.transform.FuseTIR()] + schedule_passes(target))(mod)
    return mod, schedule_names(mod)


@pytest.mark.parametrize("target_name", list(_DOT))
def test_integer_conv_uses_the_targets_dot_product(qdq_for, target_name):
    import tvm

    target = targets.load_target(target_name)
    mod, sched = _integer_kernels(qdq_for(target_name), target)
    instr, dot = _DOT[target_name]
    tensorized = [n for n, s in sched.items() if s and s.startswith(f"conv2d-nchwc-int8-{dot}")]
    # all three regular convs, the 1-channel stem included (padded to 4 channels for the dot product)
    assert len(tensorized) == 3, sched
    assert not any(s and s.startswith("conv2d-nchwc-") and "int8" not in s for s in sched.values()), sched
    func = mod[tensorized[0]]
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=tvm.target.Target(target.tvm))
    assert re.search(instr, lib.inspect_source("asm")), f"no {instr} in {tensorized[0]} for {target_name}"


def test_rpi4_integer_convs_without_dotprod(qdq_for):
    """Cortex-A72 has no sdot: the integer convs are widening multiplies, still integer."""
    target = targets.load_target("rpi4")
    _, sched = _integer_kernels(qdq_for("rpi4"), target)
    assert any(s and s.startswith("conv2d-nchwc-int8-aarch64") for s in sched.values()), sched
    assert not any(s and "-sdot" in s for s in sched.values())


@pytest.mark.skipif(not have("qemu-aarch64-static") and not have("qemu-aarch64"), reason="qemu-user-static not installed")
@pytest.mark.parametrize("target_name", ["rpi5", "rpi4"])
def test_int8_cross_compiles_and_matches_under_qemu(digits, tmp_path, target_name):
    out = tmp_path / target_name
    run_cli("compile", digits["onnx"], "-o", out, "--target", target_name, "--int8", "--calibration", digits["calib"],
            check=True)
    m = _manifest(out)
    assert m["verification"]["passed"] and "qemu" in m["verification"]["how"]
    assert m["precision"]["calibration"]["activation_dtype"] == "int8"
    assert m["precision"]["float_ops"] == {}


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(_Mlp().eval(), torch.randn(16, 64), tmp_path_factory.mktemp("mlp") / "mlp.onnx")


@pytest.mark.parametrize("target_name", list(_DOT))
def test_dense_layers_use_the_targets_dot_product(mlp_onnx, tmp_path, target_name):
    """Dense layers by a constant weight: the packed dense_int8 kernel, tensorized like the convs."""
    import tvm
    from compile.frontend import _read_onnx, fix_shapes, onnx_input_specs
    from compile.quantize import quantize_model, random_samples

    target = targets.load_target(target_name)
    qdq = tmp_path / "mlp_int8.onnx"
    quantize_model(mlp_onnx, qdq, target, random_samples(fix_shapes(onnx_input_specs(_read_onnx(mlp_onnx)), {}), 8),
                   "minmax")
    mod, sched = _integer_kernels(qdq, target)
    instr, dot = _DOT[target_name]
    dense = [n for n, s in sched.items() if s and s.startswith(f"dense-int8-{dot}")]
    assert len(dense) == 2, sched
    lib = tvm.tirx.build(tvm.IRModule({"main": mod[dense[0]].with_attr("global_symbol", "main")}),
                         target=tvm.target.Target(target.tvm))
    assert re.search(instr, lib.inspect_source("asm"))


class _ConvPool(nn.Module):
    """A ResNet-style stem: conv + ReLU, then a 3x3 stride-2 max pool, then another conv."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
                                 nn.Conv2d(16, 16, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def test_max_pool_of_a_quantized_tensor_stays_8_bit(tmp_path):
    """quantize(max_pool(dequantize(q))) with the same scale is max_pool(q): the pool reads and writes 8-bit
    values (the stem's output would otherwise stay float for it), outputs still equal the QDQ graph's."""
    torch.manual_seed(0)
    model = export_onnx(_ConvPool().eval(), torch.randn(1, 3, 32, 32), tmp_path / "pool.onnx")
    out = tmp_path / "art"
    run_cli("compile", model, "-o", out, "--int8", "--calibration-random", "8", check=True)
    m = _manifest(out)
    pools = [r for r in m["fusion"]["kernel_table"] if "max_pool2d" in r["name"]]
    assert pools and all(r["dtypes"] in ("u8→u8", "i8→i8") for r in pools), pools
    assert m["verification"]["passed"] and m["precision"]["integer_ops"] == {"conv2d": 2}, m["verification"]


def test_int8_mlp_matches_the_literal_qdq_graph(mlp_onnx, tmp_path):
    out = tmp_path / "mlp"
    run_cli("compile", mlp_onnx, "-o", out, "--int8", "--calibration-random", "16", check=True)
    m = _manifest(out)
    assert m["verification"]["passed"] and m["precision"]["integer_ops"] == {"matmul": 2}
    assert "accuracy on real data is unknown" in json.dumps(m["precision"]["accuracy"])
    assert any(r["schedule"].startswith("dense-int8") for r in m["fusion"]["kernel_table"])


def test_bench_int8_artifact_against_onnxruntime_int8(digits_int8, tmp_path):
    """onnxruntime times the same QDQ model with its integer kernels; the outputs are checked against the
    QDQ graph executed as written, within the compile's tolerance."""
    proc = run_cli("bench", digits_int8[0], "--baseline", "onnxruntime", "-t", "1", "--repeat", "4", "--warmup", "1",
                   "--json", "-", "--no-db", check=True)
    doc = json.loads(proc.stdout)
    assert doc["status"] == "completed"
    (cmp,) = doc["correctness"]["comparisons"]
    assert cmp["against"] == "onnxruntime (QDQ graph as written)" and cmp["passed"] and cmp["atol"] > 1e-4
    assert {r["role"] for r in doc["results"]} == {"toolkit", "baseline"}


# ---- integer attention: batch-matmuls of two quantized activations ----------------------------------

class _Attention(nn.Module):
    """One self-attention block, 2 heads of 32 over 32 tokens: Q.K^T and softmax.V multiply two activations."""

    def __init__(self, dim: int = 64, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(b, s, d))


@pytest.fixture(scope="module")
def attention_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(_Attention().eval(), torch.randn(1, 32, 64), tmp_path_factory.mktemp("attn") / "attn.onnx")


def test_int8_attention_is_integer_and_matches_the_literal_qdq_graph(attention_onnx, tmp_path):
    """Q.K^T and softmax.V of a QDQ self-attention block are integer batch-matmuls: no float matmul is
    left, and the outputs stay within the compile's output steps of onnxruntime's literal QDQ execution."""
    from compile import INT8_VERIFY_STEPS
    from compile.quantize import output_steps
    from toolkit.runtime import load

    out = tmp_path / "attn"
    run_cli("compile", attention_onnx, "-o", out, "--int8", "--calibration-random", "16", check=True)
    m = _manifest(out)
    assert m["precision"]["integer_ops"] == {"matmul": 4} and m["precision"]["float_ops"] == {}, m["precision"]
    assert m["verification"]["passed"]
    rows = m["fusion"]["kernel_table"]
    batch = [r for r in rows if r["pattern"].startswith("batch_matmul")]
    assert len(batch) == 2 and all(r["dtypes"] == "u8×i8→i32" for r in batch), [(r["name"], r["dtypes"]) for r in rows]
    assert not any(r["pattern"].split("+")[0] in ("matmul", "dense", "batch_matmul") and "f32×" in r["dtypes"] for r in rows)
    # the head split / merge (reshape, transpose, split, squeeze) moves the 8-bit tensors, not requantized floats
    moves = [r for r in rows if r["pattern"].split("+")[0] in ("reshape", "transpose", "split", "squeeze")]
    assert moves and all(r["dtypes"] in ("u8→u8", "u8→i8") for r in moves), [(r["name"], r["dtypes"]) for r in moves]
    qdq = out / "quantized.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    literal = ort.InferenceSession(str(qdq), so, providers=["CPUExecutionProvider"])
    tol = INT8_VERIFY_STEPS * 1.001 * max(output_steps(qdq).values())
    model = load(out)
    rng = np.random.default_rng(1)
    for _ in range(8):
        x = rng.standard_normal((1, 32, 64)).astype(np.float32)
        assert np.abs(model.run({"x": x})["y"] - literal.run(None, {"x": x})[0]).max() <= tol


@pytest.mark.parametrize("target_name", list(_DOT))
def test_integer_attention_uses_the_targets_dot_product(attention_onnx, tmp_path, target_name):
    """The batch-matmuls get the packed dot-product kernel: vpdpbusd (AVX-512 VNNI) and sdot (rpi5, int8
    activations) tensorized; on AVX2 not vpmaddubsw, whose int16 pairs a run-time operand could saturate."""
    import tvm
    from compile.frontend import _read_onnx, fix_shapes, onnx_input_specs
    from compile.quantize import quantize_model, random_samples

    target = targets.load_target(target_name)
    qdq = tmp_path / "attn_int8.onnx"
    quantize_model(attention_onnx, qdq, target,
                   random_samples(fix_shapes(onnx_input_specs(_read_onnx(attention_onnx)), {}), 8), "minmax")
    mod, sched = _integer_kernels(qdq, target)
    batch = [n for n in sched if n.startswith("fused_batch_matmul_int8")]
    assert len(batch) == 2, sched
    aux = {n: s for n, s in sched.items() if re.search(r"pack_int8|row_sums_int8|col_sums_int8", n)}
    assert aux and all(aux.values()), aux  # the packing and zero-point sums are scheduled too
    instr, dot = _DOT[target_name]
    for name in batch:
        asm = tvm.tirx.build(tvm.IRModule({"main": mod[name].with_attr("global_symbol", "main")}),
                             target=tvm.target.Target(target.tvm)).inspect_source("asm")
        if dot == "avx2":
            assert sched[name] == "dense-int8-x86-avx2" and not re.search(instr, asm), name
        else:
            assert sched[name].startswith(f"dense-int8-{dot}") and re.search(instr, asm), (name, sched[name])


@pytest.mark.parametrize("target_name", [
    "x86-64-avx2",  # widening multiplies (not vpmaddubsw): runs on this x86 host
    pytest.param("rpi5", marks=pytest.mark.skipif(not have("qemu-aarch64-static") and not have("qemu-aarch64"),
                                                  reason="qemu-user-static not installed")),  # sdot, int8 activations
])
def test_int8_attention_verifies_on_other_isas(attention_onnx, tmp_path, target_name):
    """The attention block's other integer paths run and match the literal QDQ graph too."""
    out = tmp_path / target_name
    run_cli("compile", attention_onnx, "-o", out, "--target", target_name, "--int8", "--calibration-random", "16",
            check=True)
    m = _manifest(out)
    assert m["precision"]["integer_ops"] == {"matmul": 4} and m["precision"]["float_ops"] == {}
    assert m["verification"]["passed"]
    assert [r["dtypes"][:3] for r in m["fusion"]["kernel_table"] if r["pattern"].startswith("batch_matmul")] == \
        ["i8×" if target_name == "rpi5" else "u8×"] * 2


@pytest.mark.parametrize("dtype, za, zb, transpose, n", [
    ("uint8", 137, 9, "inner", 32),     # K^T as BERT's QDQ graph has it: the transpose of the 8-bit tensor
    ("uint8", 0, 128, "outer", 32),     # softmax.V-like: no zero-point sums at all
    ("uint8", 3, 250, None, 32),
    ("int8", -5, 7, "inner", 32),       # int8 activations (ARM): u8 x s8 instructions do not apply on x86
    ("uint8", 200, 1, None, 24),        # N not a multiple of the vector: Relax's integer matmul
])
def test_integer_batch_matmul_is_exact(dtype, za, zb, transpose, n):
    """matmul(dequant(a), dequant(b)) of two run-time 8-bit tensors: int32 accumulation with the zero points
    corrected at run time equals the exact integer result, rescaled by one float multiply (bit for bit)."""
    import tvm
    from tvm import relax

    from compile.build import relax_pipeline
    from compile.int8 import Int8Report

    target = targets.load_target("host")
    lead, m, k = (1, 2), 16, 64
    sa, sb = np.float32(0.021), np.float32(0.0037)
    rng = np.random.default_rng(0)
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    a = rng.integers(lo, hi, (*lead, m, k)).astype(dtype)
    b = rng.integers(lo, hi, (*lead, k, n)).astype(dtype)
    b_in = np.ascontiguousarray(np.swapaxes(b, -1, -2)) if transpose else b
    swap = [0, 1, 3, 2]
    bb = relax.BlockBuilder()
    av, bv = relax.Var("a", relax.TensorType(a.shape, dtype)), relax.Var("b", relax.TensorType(b_in.shape, dtype))
    with bb.function("main", [av, bv]):
        with bb.dataflow():
            bq = bb.emit(relax.op.permute_dims(bv, swap)) if transpose == "inner" else bv
            da = bb.emit(relax.op.dequantize(av, relax.const(sa), relax.const(za, dtype), axis=-1))
            db = bb.emit(relax.op.dequantize(bq, relax.const(sb), relax.const(zb, dtype), axis=-1))
            if transpose == "outer":
                db = bb.emit(relax.op.permute_dims(db, swap))
            out = bb.emit_output(relax.op.matmul(da, db))
        bb.emit_func_output(out)
    report = Int8Report()
    tt = tvm.target.Target(target.tvm)
    with tt:
        ex = tvm.compile(bb.get(), target=tt, relax_pipeline=relax_pipeline(target, None, report))
    assert report.integer_ops == {"matmul": 1} and report.float_ops == {}
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b_in)).numpy()
    exact = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
    np.testing.assert_array_equal(got, exact.astype(np.float32) * np.float32(np.float64(sa) * np.float64(sb)))


def test_requantization_feeding_float_ops_skips_the_casts():
    """dequantize(quantize(x)) whose 8-bit tensor nothing else reads is computed in float (clamp(round(x/s)
    + z) - z, then * s), bit for bit what the casts give; an 8-bit tensor an integer op reads is kept."""
    import tvm
    from tvm import relax

    from compile.build import relax_pipeline

    target = targets.load_target("host")
    s, z = np.float32(0.05), 131
    x = np.concatenate([np.random.default_rng(0).standard_normal(1000) * 8,
                        (np.arange(-140, 140) + 0.5) * s]).astype(np.float32)  # out of range and rounding ties
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            q = bb.emit(relax.op.quantize(xv, relax.const(s), relax.const(z, "uint8"), axis=-1, out_dtype="uint8"))
            d = bb.emit(relax.op.dequantize(q, relax.const(s), relax.const(z, "uint8"), axis=-1))
            out = bb.emit_output(relax.op.multiply(d, relax.const(np.float32(3.0))))
        bb.emit_func_output(out)
    tt = tvm.target.Target(target.tvm)
    with tt:
        lowered = relax_pipeline(target)(bb.get())
        ex = tvm.compile(lowered, target=tt, relax_pipeline=None)
    kernels = [f for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels and not any("uint8" in f.script() for f in kernels)  # no cast to 8 bits and back
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    q_ref = np.clip(np.round(x * (np.float32(1) / s)) + z, 0, 255).astype(np.uint8)
    want = (q_ref.astype(np.int32) - z).astype(np.float32) * s * np.float32(3.0)
    np.testing.assert_array_equal(got, want)
