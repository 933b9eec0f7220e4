"""Full-integer TFLite models (compile/tflite_int8.py): import as a QDQ graph, integer kernels per target,
verification against LiteRT's integer execution, through the real CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import targets
from compile import load_model
from compile.build import cpu_front_passes
from compile.quantize import quantize_tflite
from compile.reference import ReferenceRuntime
from compile.schedules import schedule_names, schedule_passes
from conftest import assert_nothing_written, assert_user_error, have, run_cli


def _quantized_fixture(small_tflite: Path, out: Path, io_dtype: str) -> Path:
    """tests/fixtures/small_cnn.tflite (litert-torch: transpose, pad, conv, depthwise, 1x1 conv, mean, dense)
    quantized to full integer by LiteRT's own post-training quantizer on 16 seeded random inputs."""
    rng = np.random.default_rng(0)
    samples = [[rng.standard_normal((1, 3, 32, 32)).astype(np.float32)] for _ in range(16)]
    out.write_bytes(quantize_tflite(small_tflite.read_bytes(), samples, io_dtype))
    return out


@pytest.fixture(scope="module")
def int8_io(small_tflite, tmp_path_factory) -> Path:
    return _quantized_fixture(small_tflite, tmp_path_factory.mktemp("tfl") / "small_cnn_int8.tflite", "int8")


@pytest.fixture(scope="module")
def float_io(small_tflite, tmp_path_factory) -> Path:
    return _quantized_fixture(small_tflite, tmp_path_factory.mktemp("tfl") / "small_cnn_int8_float_io.tflite", "float32")


@pytest.fixture(scope="module")
def host_artifact(int8_io, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "host"
    proc = run_cli("compile", int8_io, "-o", out, "--explain", check=True)
    return out, proc


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_full_integer_tflite_compiles_to_integer_kernels_and_matches_litert(host_artifact, int8_io):
    out, proc = host_artifact
    m = _manifest(out)
    assert m["model"]["format"] == "tflite" and m["precision"]["mode"] == "int8"
    # every conv (stem, depthwise, pointwise) and the dense layer are 8-bit x 8-bit -> int32 kernels
    assert m["precision"]["integer_ops"] == {"conv2d": 3, "matmul": 1}, m["precision"]
    assert m["precision"]["float_ops"] == {}, m["precision"]["float_ops"]
    assert [i["dtype"] for i in m["inputs"]] == ["int8"] and [o["dtype"] for o in m["outputs"]] == ["int8"]
    v = m["verification"]
    assert v["passed"] is True and v["max_abs_error"] <= 2, v
    ops = v["litert_operators"]
    assert ops["passed"] and ops["operators"] >= 5 and ops["max_steps"] <= 1, ops   # the PAD folds into the stem
    assert v["litert_end_to_end"]["runtime"] == "litert" and v["litert_end_to_end"]["max_steps"] <= 2, v
    assert "u8×i8→i32" in proc.stdout or "i8×i8→i32" in proc.stdout, proc.stdout   # --explain: integer kernels
    assert "full-integer TFLite" in proc.stdout


def test_run_matches_litert_on_an_int8_input(host_artifact, int8_io, tmp_path):
    out, _ = host_artifact
    x = np.random.default_rng(7).integers(-128, 128, (1, 3, 32, 32)).astype(np.int8)
    name = _manifest(out)["inputs"][0]["name"]
    np.save(tmp_path / "x.npy", x)
    run_cli("run", out, "--input", f"{name}={tmp_path / 'x.npy'}", "--output",
            tmp_path / "y.npz", check=True)
    ours = next(iter(np.load(tmp_path / "y.npz").values()))
    litert = ReferenceRuntime.open(int8_io, "tflite").run({name: x})[0]
    assert ours.dtype == np.int8 and ours.shape == litert.shape
    assert np.abs(ours.astype(int) - litert.astype(int)).max() <= 2


def test_float_inputs_and_outputs_quantized_inside(float_io, tmp_path):
    out = tmp_path / "fio"
    run_cli("compile", float_io, "-o", out, check=True)
    m = _manifest(out)
    assert [i["dtype"] for i in m["inputs"]] == ["float32"] and [o["dtype"] for o in m["outputs"]] == ["float32"]
    assert m["precision"]["integer_ops"] == {"conv2d": 3, "matmul": 1} and m["verification"]["passed"] is True
    assert m["verification"]["litert_operators"]["passed"]


def test_inspect_says_where_the_model_came_from(host_artifact):
    proc = run_cli("inspect", host_artifact[0], check=True)
    assert "int8" in proc.stdout and "tflite" in proc.stdout


def _integer_schedules(path: Path, target):
    import tvm
    from tvm import relax

    tt = tvm.target.Target(target.tvm)
    mod = load_model(path).mod
    with tt:
        mod = tvm.transform.Sequential(cpu_front_passes(tt, target) + [
            relax.transform.FoldConstant(), relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(),
            relax.transform.FuseTIR()] + schedule_passes(target))(mod)
    return mod, schedule_names(mod)


def test_rpi5_build_uses_sdot_on_int8_activations(int8_io):
    """TFLite's activations are int8: on a +dotprod core the convs run on `sdot` (s8 x s8) as they are."""
    import tvm

    target = targets.load_target("rpi5")
    mod, sched = _integer_schedules(int8_io, target)
    sdot = [n for n, s in sched.items() if s and s.startswith("conv2d-nchwc-int8-sdot")]
    assert sdot, sched
    lib = tvm.tirx.build(tvm.IRModule({"main": mod[sdot[0]].with_attr("global_symbol", "main")}),
                         target=tvm.target.Target(target.tvm))
    assert re.search(r"sdot\s+v\d+\.4s", lib.inspect_source("asm"))


@pytest.mark.skipif(not have("qemu-aarch64-static") and not have("qemu-aarch64"), reason="qemu-user-static not installed")
@pytest.mark.skipif(not have("aarch64-linux-gnu-g++"), reason="g++-aarch64-linux-gnu not installed")
def test_rpi4_artifact_matches_under_qemu(int8_io, tmp_path):
    out = tmp_path / "rpi4"
    run_cli("compile", int8_io, "-o", out, "--target", "rpi4", check=True)
    v = _manifest(out)["verification"]
    assert v["passed"] is True and "qemu-aarch64" in v["how"] and v["litert_operators"]["passed"], v


def _with_operator_replaced(src: Path, out: Path, old: str, new: str) -> Path:
    """The model with every `old` operator code turned into `new` (a model using an operator we do not import)."""
    import ai_edge_litert.schema_py_generated as s
    import flatbuffers

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(src.read_bytes(), 0))
    for code in model.operatorCodes:
        if code.builtinCode == getattr(s.BuiltinOperator, old):
            code.builtinCode = getattr(s.BuiltinOperator, new)
            code.deprecatedBuiltinCode = min(code.builtinCode, 127)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    out.write_bytes(bytes(b.Output()))
    return out


def test_unsupported_operator_is_named_in_one_line(int8_io, tmp_path):
    model = _with_operator_replaced(int8_io, tmp_path / "sum.tflite", "MEAN", "SUM")
    out = tmp_path / "art"
    proc = run_cli("compile", model, "-o", out)
    assert_user_error(proc, 1, "full-integer TFLite import does not support SUM", "supported:")
    assert_nothing_written(out)


def test_a_truncated_weight_buffer_is_refused(int8_io, tmp_path):
    """Untrusted input: a weight buffer shorter than its tensor's shape is named, not read past."""
    import ai_edge_litert.schema_py_generated as s
    import flatbuffers

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(int8_io.read_bytes(), 0))
    graph = model.subgraphs[0]
    weight = next(t for t in graph.tensors if list(t.shape) == [16, 1, 1, 8])
    model.buffers[weight.buffer].data = model.buffers[weight.buffer].data[:-5]
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    bad = tmp_path / "short.tflite"
    bad.write_bytes(bytes(b.Output()))
    out = tmp_path / "art"
    proc = run_cli("compile", bad, "-o", out, "--no-verify")
    assert_user_error(proc, 2, "its buffer holds 123 bytes", "needs 128")
    assert_nothing_written(out)


def test_int8_calibrates_a_float_tflite_model_with_litert(small_tflite, tmp_path):
    """`compile model.tflite --int8`: LiteRT's own quantizer makes the full-integer model, which the artifact
    computes, ships (source.tflite: what LiteRT runs in `bench`) and is compared with the float model."""
    import tflite

    from compile.frontend import sha256_file
    from compile.tflite_int8 import is_quantized_tflite

    calib = tmp_path / "calib"
    calib.mkdir()
    np.save(calib / "batch.npy", np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "art"
    proc = run_cli("compile", small_tflite, "--int8", "--calibration", calib, "-o", out, check=True)
    m = _manifest(out)
    cal = m["precision"]["calibration"]
    assert cal["method"] == "minmax" and cal["samples"] == 16 and "LiteRT" in cal["quantizer"], cal
    assert cal["activation_dtype"] == "int8" and cal["tensor_ranges"], cal
    assert m["precision"]["quantized_model"] == "source.tflite" and m["model"]["sha256"] == sha256_file(small_tflite)
    assert is_quantized_tflite(tflite.Model.GetRootAsModel((out / "source.tflite").read_bytes(), 0))
    assert m["precision"]["integer_ops"] == {"conv2d": 3, "matmul": 1} and m["verification"]["passed"] is True
    acc = m["precision"]["accuracy"]
    assert acc["samples"] == 16 and acc["argmax_agreement"] >= 0.9 and acc["cosine_similarity"] > 0.99, acc
    assert "accuracy vs fp32" in proc.stdout


@pytest.mark.parametrize("which, extra, fragment", [
    ("float", ["--calibration-method", "entropy"], "min/max ranges only"),
    ("int8", [], "already a quantized (full-integer) TFLite model"),
])
def test_int8_bad_options_for_tflite(small_tflite, int8_io, tmp_path, which, extra, fragment):
    out = tmp_path / "art"
    proc = run_cli("compile", small_tflite if which == "float" else int8_io, "--int8", "--calibration-random", "4",
                   *extra, "-o", out)
    assert_user_error(proc, 2, fragment)
    assert_nothing_written(out)


def test_bench_times_litert_and_checks_the_qdq_graph(host_artifact):
    """`bench` on a full-integer TFLite artifact: LiteRT times source.tflite (its own integer kernels); the
    outputs are checked against the QDQ graph the artifact computes, within the steps compile verified with."""
    proc = run_cli("bench", host_artifact[0], "--baseline", "auto", "-t", "1", "--repeat", "6", "--warmup", "1",
                   "--json", "-", "--no-db", check=True)
    doc = json.loads(proc.stdout)
    assert doc["status"] == "completed"
    assert [(r["runtime"], r["role"]) for r in doc["results"]] == [("autoglm-cpp", "toolkit"), ("litert", "baseline")]
    (cmp,) = doc["correctness"]["comparisons"]
    assert cmp["against"] == "onnxruntime (QDQ graph as written)" and cmp["passed"] and cmp["max_abs_error"] <= 2, cmp
    assert cmp["atol"] >= 2.0, cmp   # int8 outputs: steps of 1


@pytest.mark.parametrize("target_name, instr", [("x86-64-avx512", r"vpdpbusd\s+%zmm"), ("x86-64-avx2", None)])
def test_x86_runs_int8_activations_on_its_u8_dot_product(int8_io, target_name, instr):
    """TFLite's activations are int8, x86's dot products take u8: moved up by 128 (zero point too), the convs
    and the 10-class dense layer (N padded to whole vector panels) are the packed integer kernels; on
    AVX-512 VNNI tensorized with vpdpbusd (AVX2 keeps widening multiplies for full-range TFLite weights,
    whose u8 x s8 pairs could saturate vpmaddubsw)."""
    import tvm

    target = targets.load_target(target_name)
    mod, sched = _integer_schedules(int8_io, target)
    convs = [n for n, s in sched.items() if s and s.startswith("conv2d-nchwc-int8")]
    dense = [n for n, s in sched.items() if s and s.startswith("dense-int8")]
    assert len(convs) == 2 and len(dense) == 1, sched   # stem + pointwise; the classifier
    if instr is None:
        return
    assert all(sched[n].startswith("conv2d-nchwc-int8-vnni") for n in convs), sched
    assert sched[dense[0]].startswith("dense-int8-vnni"), sched
    lib = tvm.tirx.build(tvm.IRModule({"main": mod[convs[0]].with_attr("global_symbol", "main")}),
                         target=tvm.target.Target(target.tvm))
    assert re.search(instr, lib.inspect_source("asm"))


def _pad_then_max_pool(path: Path, relu: bool) -> Path:
    """conv (+ReLU) -> PAD 1 -> MAX_POOL_2D 3x3/2 VALID -> conv (litert-torch's form of a padded torch max pool),
    quantized to full integer (int8 I/O) by LiteRT's quantizer."""
    from corpus.generated import _TfliteWriter

    rng = np.random.default_rng(3)
    w = _TfliteWriter()
    s = w.s
    x = w.tensor([1, 16, 16, 4])
    c1 = w.tensor([1, 16, 16, 8])
    w.op("CONV_2D", [x, w.const(rng.standard_normal((8, 3, 3, 4)).astype(np.float32) * 0.3),
                     w.const(rng.standard_normal(8).astype(np.float32) * 0.1)], [c1], "Conv2DOptions",
         padding=s.Padding.SAME, strideH=1, strideW=1, dilationHFactor=1, dilationWFactor=1,
         fusedActivationFunction=s.ActivationFunctionType.RELU if relu else s.ActivationFunctionType.NONE)
    padded = w.tensor([1, 18, 18, 8])
    w.op("PAD", [c1, w.const(np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32), "int32")], [padded], "PadOptions")
    pooled = w.tensor([1, 8, 8, 8])
    w.op("MAX_POOL_2D", [padded], [pooled], "Pool2DOptions", padding=s.Padding.VALID, strideW=2, strideH=2,
         filterWidth=3, filterHeight=3)
    y = w.tensor([1, 8, 8, 8])
    w.op("CONV_2D", [pooled, w.const(rng.standard_normal((8, 1, 1, 8)).astype(np.float32) * 0.3),
                     w.const(np.zeros(8, np.float32))], [y], "Conv2DOptions", padding=s.Padding.VALID, strideH=1,
         strideW=1, dilationHFactor=1, dilationWFactor=1)
    float_model = w.finish([x], [y])
    samples = [[rng.standard_normal((1, 16, 16, 4)).astype(np.float32)] for _ in range(8)]
    path.write_bytes(quantize_tflite(float_model, samples, "int8"))
    return path


@pytest.mark.parametrize("relu", [True, False])
def test_a_pad_in_front_of_a_max_pool_folds_only_where_it_cannot_win(tmp_path, relu):
    """After a ReLU (zero point at -128) the PAD's zeros never exceed a window's maximum: the max pool pads
    itself and no float Pad remains; without the ReLU the PAD stays. Both match LiteRT."""
    import onnx

    model = _pad_then_max_pool(tmp_path / "m.tflite", relu)
    out = tmp_path / "art"
    run_cli("compile", model, "-o", out, check=True)
    m = _manifest(out)
    assert m["verification"]["passed"] and m["verification"]["litert_operators"]["passed"], m["verification"]
    nodes = onnx.load(str(out / "prepared.onnx")).graph.node
    pools = [n for n in nodes if n.op_type == "MaxPool"]
    pads = {a.name: list(a.ints) for a in pools[0].attribute}["pads"]
    if relu:
        assert not any(n.op_type == "Pad" for n in nodes) and pads == [1, 1, 1, 1]
    else:
        assert any(n.op_type == "Pad" for n in nodes) and pads == [0, 0, 0, 0]


def test_integer_kernels_tune_and_their_records_apply(int8_io, tmp_path):
    """`autoglm tune` on a full-integer model stores records of tensorized 8-bit kernels (their traces name the
    toolkit's dot-product intrinsics and TVM's), and `compile --tuning-db` parses and applies them."""
    db = tmp_path / "db"
    tuned = json.loads(run_cli("tune", int8_io, "--target", "host", "--trials", "6", "--batch", "3", "--db", db,
                               "--json", "--quiet", check=True).stdout)
    assert any("int8" in (t["default_rule"] or "") and t["records"] >= 1 for t in tuned["tasks"]), tuned["tasks"]
    out = tmp_path / "art"
    run_cli("compile", int8_io, "--tuning-db", db, "-o", out, check=True)
    m = _manifest(out)
    assert m["verification"]["passed"] and m["precision"]["mode"] == "int8"
    faster = {t["name"] for t in tuned["tasks"] if t["best_ms"] is not None and (t["default_ms"] is None or t["best_ms"] < t["default_ms"])}
    applied = {k for k, v in m["tuning"]["kernels"].items() if v == "tuned"}
    # the kernels whose record measured faster than their default schedule, and only those (named: a count
    # once differed by one under a loaded machine and did not say which)
    assert applied == faster and m["tuning"]["records_applied"] == len(faster), (applied, tuned["tasks"])


def _attention_tflite(path: Path) -> tuple[Path, int, int]:
    """A float self-attention layer written as a TFLite flatbuffer: GATHER (embedding of int32 token ids),
    FULLY_CONNECTED on the 3-D activations (keep_num_dims), BATCH_MATMUL with adj_y (q k^T), SOFTMAX,
    BATCH_MATMUL (p v). Returns (path, vocabulary, sequence length)."""
    from tflite_flatbuffer import tfl, write_tflite

    def options(kind: str, **fields):
        def build(b):
            mod = tfl(kind)
            getattr(mod, f"{kind}Start")(b)
            for k, v in fields.items():
                getattr(mod, f"{kind}Add{k}")(b, v)
            return getattr(tfl("BuiltinOptions").BuiltinOptions, kind), getattr(mod, f"{kind}End")(b)
        return build

    TT, BO = tfl("TensorType").TensorType, tfl("BuiltinOperator").BuiltinOperator
    rng = np.random.default_rng(0)
    vocab, length, dim = 16, 8, 12
    emb = rng.standard_normal((vocab, dim)).astype(np.float32)
    wq = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    bq = (0.1 * rng.standard_normal(dim)).astype(np.float32)
    act = TT.FLOAT32
    tensors = [dict(name="ids", shape=[1, length], type=TT.INT32, buffer=0),
               dict(name="embedding", shape=[vocab, dim], type=act, buffer=1),
               dict(name="x", shape=[1, length, dim], type=act, buffer=0),
               dict(name="wq", shape=[dim, dim], type=act, buffer=2),
               dict(name="bq", shape=[dim], type=act, buffer=3),
               dict(name="q", shape=[1, length, dim], type=act, buffer=0),
               dict(name="scores", shape=[1, length, length], type=act, buffer=0),
               dict(name="probs", shape=[1, length, length], type=act, buffer=0),
               dict(name="context", shape=[1, length, dim], type=act, buffer=0)]
    ops = [dict(code=BO.GATHER, inputs=[1, 0], outputs=[2], options=options("GatherOptions", Axis=0)),
           dict(code=BO.FULLY_CONNECTED, inputs=[2, 3, 4], outputs=[5], options=options("FullyConnectedOptions", KeepNumDims=True)),
           dict(code=BO.BATCH_MATMUL, inputs=[5, 2], outputs=[6], options=options("BatchMatMulOptions", AdjY=True)),
           dict(code=BO.SOFTMAX, inputs=[6], outputs=[7], options=options("SoftmaxOptions", Beta=1.0)),
           dict(code=BO.BATCH_MATMUL, inputs=[7, 2], outputs=[8], options=options("BatchMatMulOptions"))]
    return write_tflite(path, tensors, ops, [0], [8], [b"", emb.tobytes(), wq.tobytes(), bq.tobytes()]), vocab, length


def test_full_integer_attention_with_gather_and_batch_matmul_matches_litert(tmp_path):
    """A full-integer transformer layer (LiteRT's own quantizer: int8 embedding rows, int8 q k^T and p v)
    compiles to integer kernels only (the adjoint operand transposed before its dequantize) and matches
    LiteRT's integer execution."""
    src, vocab, length = _attention_tflite(tmp_path / "attention.tflite")
    rng = np.random.default_rng(1)
    samples = [[rng.integers(0, vocab, (1, length)).astype(np.int32)] for _ in range(16)]
    model = tmp_path / "attention_int8.tflite"
    model.write_bytes(quantize_tflite(src.read_bytes(), samples, "float32"))
    out = tmp_path / "art"
    run_cli("compile", model, "-o", out, check=True)
    m = _manifest(out)
    assert m["precision"]["mode"] == "int8" and m["inputs"][0]["dtype"] == "int32"
    # the projection and both attention matmuls are 8-bit x 8-bit -> int32 kernels; nothing is left in float
    assert m["precision"]["integer_ops"] == {"matmul": 3} and m["precision"]["float_ops"] == {}, m["precision"]
    ver = m["verification"]
    assert ver["passed"] is True and ver["litert_operators"]["passed"] is True
    assert ver["litert_end_to_end"]["max_steps"] <= 2
    ids = rng.integers(0, vocab, (1, length)).astype(np.int32)
    np.save(tmp_path / "ids.npy", ids)
    run_cli("run", out, "--input", f"ids={tmp_path / 'ids.npy'}", "--output", tmp_path / "y.npz", check=True)
    ours = np.load(tmp_path / "y.npz")["context"]
    litert = ReferenceRuntime.open(model, "tflite").run({"ids": ids})[0]
    from ai_edge_litert.interpreter import Interpreter

    (step,) = [d["quantization"][0] for d in Interpreter(model_path=str(model)).get_tensor_details()
               if d["name"] == "context_int8"]  # the int8 output LiteRT dequantizes at the end
    assert ours.dtype == np.float32 and ours.shape == litert.shape == (1, length, 12)
    assert np.abs(ours - litert).max() <= 2 * step + 1e-6
