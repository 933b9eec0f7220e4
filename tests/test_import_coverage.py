"""Import coverage: LSTM/GRU, `If` folding and run-time `If`s, TFLite custom operators and sparse weights.

Every model is built here (onnx.helper, torch.onnx, or a TFLite flatbuffer written with the `tflite`
package's builders), compiled for the host through `compile_model` or the `autoglm` CLI, and checked
against onnxruntime / LiteRT.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import targets
from compile import UnsupportedOperatorError, VMExecutor, compile_model, load_model
from conftest import assert_nothing_written, assert_user_error, run_cli
from tflite_flatbuffer import int_vector, offset_vector, tfl, write_tflite


@pytest.fixture(scope="module")
def host():
    return targets.load_target("host")


def _save(graph, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _out(name: str, rank: int):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * rank)


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def _verified(result) -> float:
    v = result.manifest["verification"]
    assert v["passed"] is True and v["reference"] == "onnxruntime", v
    return v["max_abs_error"]


# --------------------------------------------------------------------------- LSTM / GRU


def rnn_model(op: str, path: Path, *, seq: int = 3, batch: int = 2, inp: int = 4, hidden: int = 5,
              direction: str = "forward", layout: int = 0, bias: bool = True, init_h: bool = False,
              init_c: bool = False, peepholes: bool = False, full_seq_lens: bool = False, lbr: int | None = None,
              clip: float | None = None, outputs: tuple[str, ...] = ("Y", "Y_h", "Y_c"),
              activations: list[str] | None = None, input_forget: int | None = None,
              runtime_seq_lens: bool = False, opset: int = 14, seed: int = 0) -> Path:
    """One ONNX LSTM, GRU or RNN node with constant weights; initial states (if any) are graph inputs."""
    rng = np.random.default_rng(seed)
    nd = 2 if direction == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]

    def w(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    inits = [numpy_helper.from_array(w(nd, gates * hidden, inp), "W"), numpy_helper.from_array(w(nd, gates * hidden, hidden), "R")]
    ins = ["X", "W", "R", "", "", "", "", ""]
    xshape = [seq, batch, inp] if layout == 0 else [batch, seq, inp]
    sshape = [nd, batch, hidden] if layout == 0 else [batch, nd, hidden]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xshape)]
    if bias:
        inits.append(numpy_helper.from_array(w(nd, 2 * gates * hidden), "B"))
        ins[3] = "B"
    if full_seq_lens:
        inits.append(numpy_helper.from_array(np.full((batch,), seq, np.int32), "L"))
        ins[4] = "L"
    if runtime_seq_lens:
        graph_inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, [batch]))
        ins[4] = "L"
    if init_h:
        graph_inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, sshape))
        ins[5] = "h0"
    if init_c:
        graph_inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, sshape))
        ins[6] = "c0"
    if peepholes:
        inits.append(numpy_helper.from_array(w(nd, 3 * hidden), "P"))
        ins[7] = "P"
    ins = ins[:8 if op == "LSTM" else 6]
    while ins[-1] == "":
        ins.pop()
    attrs: dict = {"hidden_size": hidden, "direction": direction}
    for key, value in (("layout", layout if opset >= 14 else None), ("linear_before_reset", lbr), ("clip", clip),
                       ("activations", activations), ("input_forget", input_forget)):
        if value is not None:
            attrs[key] = value
    outs = list(outputs) if op == "LSTM" else [o for o in outputs if o != "Y_c"]
    node = helper.make_node(op, ins, outs, name=f"my_{op.lower()}", **attrs)
    graph = helper.make_graph([node], "g", graph_inputs, [_out(o, 4 if o == "Y" else 3) for o in outs if o], inits)
    return _save(graph, path, opset)


LSTM_CASES = {
    "forward": {},
    "reverse-no-bias-full-seq-lens": {"direction": "reverse", "bias": False, "full_seq_lens": True},
    "bidirectional-initial-states": {"direction": "bidirectional", "init_h": True, "init_c": True},
    "peepholes-clip": {"peepholes": True, "clip": 0.7, "direction": "bidirectional"},
    "only-Y_h-opset7": {"outputs": ("", "Y_h", ""), "opset": 7},
    "relu-cell": {"activations": ["Sigmoid", "Relu", "Tanh"], "seq": 6, "hidden": 16, "inp": 12, "batch": 1},
}

GRU_CASES = {
    "forward": {},
    "linear-before-reset": {"lbr": 1, "init_h": True},
    "reverse-no-bias": {"direction": "reverse", "bias": False},
    "bidirectional-lbr-clip": {"direction": "bidirectional", "lbr": 1, "clip": 0.5, "init_h": True},
}


@pytest.mark.parametrize("case", list(LSTM_CASES))
def test_lstm_matches_onnxruntime(case, host, tmp_path):
    path = rnn_model("LSTM", tmp_path / "lstm.onnx", **LSTM_CASES[case])
    assert _verified(compile_model(path, host, tmp_path / "art")) < 1e-5


@pytest.mark.parametrize("case", list(GRU_CASES))
def test_gru_matches_onnxruntime(case, host, tmp_path):
    path = rnn_model("GRU", tmp_path / "gru.onnx", **GRU_CASES[case])
    assert _verified(compile_model(path, host, tmp_path / "art")) < 1e-5


@pytest.mark.parametrize("kw", [{}, {"direction": "bidirectional", "init_h": True, "activations": ["Relu", "Tanh"]}],
                         ids=["forward", "bidirectional-relu"])
def test_rnn_matches_onnxruntime(kw, host, tmp_path):
    path = rnn_model("RNN", tmp_path / "rnn.onnx", **kw)
    assert _verified(compile_model(path, host, tmp_path / "art")) < 1e-5


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_batch_major_layout_matches_seq_major(op, host, tmp_path):
    """layout=1 ([batch, seq, ...]); onnxruntime refuses it, so the reference is the same cell with layout=0."""
    kw = {"direction": "bidirectional", "init_h": True, "init_c": op == "LSTM", "seq": 4, "batch": 3}
    batch_major = rnn_model(op, tmp_path / "l1.onnx", layout=1, **kw)
    seq_major = rnn_model(op, tmp_path / "l0.onnx", layout=0, **kw)
    result = compile_model(batch_major, host, tmp_path / "art", verify=False)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 4)).astype(np.float32)  # [batch, seq, input]
    states = [rng.standard_normal((3, 2, 5)).astype(np.float32) for _ in range(2 if op == "LSTM" else 1)]
    got = VMExecutor(result.artifact / "model.so").run([x, *states])
    feeds = {"X": x.transpose(1, 0, 2), "h0": states[0].transpose(1, 0, 2)}
    if op == "LSTM":
        feeds["c0"] = states[1].transpose(1, 0, 2)
    expected = ort.InferenceSession(str(seq_major), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got[0], expected[0].transpose(2, 0, 1, 3), atol=1e-5)  # Y: [seq,dir,batch,H] -> [batch,seq,dir,H]
    for g, e in zip(got[1:], expected[1:]):
        np.testing.assert_allclose(g, e.transpose(1, 0, 2), atol=1e-5)


class _TorchRNN(torch.nn.Module):
    def __init__(self, kind: str, **kw):
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(**kw)

    def forward(self, x):
        return self.rnn(x)[0]


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return path


def test_torch_lstm_compiles_through_the_cli(tmp_path):
    """A 2-layer bidirectional batch-first nn.LSTM, exported by torch.onnx, through `autoglm compile`."""
    torch.manual_seed(0)
    path = _export(_TorchRNN("LSTM", input_size=6, hidden_size=8, num_layers=2, bidirectional=True, batch_first=True),
                   torch.randn(2, 5, 6), tmp_path / "lstm.onnx")
    out = tmp_path / "art"
    proc = run_cli("compile", path, "--target", "host", "-o", out, check=True)
    assert "verify:  passed" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["passed"] is True and manifest["verification"]["max_abs_error"] < 1e-5
    assert manifest["outputs"] == [{"name": "y", "shape": [2, 5, 16], "dtype": "float32"}]


def test_torch_gru_matches_onnxruntime(host, tmp_path):
    torch.manual_seed(1)
    path = _export(_TorchRNN("GRU", input_size=6, hidden_size=8, bidirectional=True), torch.randn(5, 2, 6),
                   tmp_path / "gru.onnx")
    assert _verified(compile_model(path, host, tmp_path / "art")) < 1e-5


@pytest.mark.parametrize("kw, fragment", [
    ({"input_forget": 1}, "input_forget=1"),
    ({"activations": ["Sigmoid", "Elu", "Tanh"]}, "activation(s) Elu"),
    ({"runtime_seq_lens": True}, "runtime sequence_lens"),
])
def test_unsupported_lstm_attributes_are_named(kw, fragment, host, tmp_path):
    path = rnn_model("LSTM", tmp_path / "lstm.onnx", **kw)
    with pytest.raises(UnsupportedOperatorError, match="LSTM node 'my_lstm'") as info:
        compile_model(path, host, tmp_path / "art")
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert_nothing_written(tmp_path / "art")


def test_unsupported_lstm_attribute_through_the_cli(tmp_path):
    path = rnn_model("LSTM", tmp_path / "lstm.onnx", activations=["Sigmoid", "Tanh", "Softsign"])
    out = tmp_path / "art"
    assert_user_error(run_cli("compile", path, "--target", "host", "-o", out), 1, "LSTM node 'my_lstm'", "Softsign", "re-export")
    assert_nothing_written(out)


# --------------------------------------------------------------------------- If


def _lstm_then_reshape(prefix: str, x: str, out: str, inp: int, hidden: int, rng) -> tuple[list, list]:
    """An LSTM on `x` whose Y_h [1, B, H] becomes [B, H] through a Shape -> Gather -> Reshape subgraph."""
    inits = [numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, inp)) * 0.5).astype(np.float32), f"{prefix}W"),
             numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, hidden)) * 0.5).astype(np.float32), f"{prefix}R")]
    nodes = [
        helper.make_node("LSTM", [x, f"{prefix}W", f"{prefix}R"], ["", f"{prefix}h"], hidden_size=hidden, name=f"{prefix}lstm"),
        helper.make_node("Shape", [f"{prefix}h"], [f"{prefix}s"]),
        _const(f"{prefix}i", np.array([1, 2], np.int64)),
        helper.make_node("Gather", [f"{prefix}s", f"{prefix}i"], [f"{prefix}bh"]),
        helper.make_node("Reshape", [f"{prefix}h", f"{prefix}bh"], [out]),
    ]
    return nodes, inits


def _reduce_first_axis(x: str, out: str, prefix: str) -> list:
    return [_const(f"{prefix}ax", np.array([0], np.int64)), helper.make_node("ReduceSum", [x, f"{prefix}ax"], [out], keepdims=0)]


def constant_if_model(path: Path, seed: int = 0) -> Path:
    """If(Constant True) whose then-branch holds If(batch == 2) around an LSTM with a shape subgraph.

    Only shape fixing makes the inner condition constant; the outer one is constant from the start.
    """
    rng = np.random.default_rng(seed)
    lstm_nodes, lstm_inits = _lstm_then_reshape("a_", "x", "a_out", 4, 5, rng)
    inner_then = helper.make_graph(lstm_nodes, "inner_then", [], [_out("a_out", 2)], lstm_inits)
    inner_else = helper.make_graph(_reduce_first_axis("x", "b_out", "b_"), "inner_else", [], [_out("b_out", 2)])
    outer_then = helper.make_graph([
        helper.make_node("Shape", ["x"], ["o_s"]), _const("o_i", np.array(1, np.int64)),
        helper.make_node("Gather", ["o_s", "o_i"], ["o_b"]), _const("o_two", np.array(2, np.int64)),
        helper.make_node("Equal", ["o_b", "o_two"], ["o_c"]),
        helper.make_node("If", ["o_c"], ["o_out"], then_branch=inner_then, else_branch=inner_else, name="inner"),
    ], "outer_then", [], [_out("o_out", 2)])
    outer_else = helper.make_graph(_reduce_first_axis("x", "z_out", "z_"), "outer_else", [], [_out("z_out", 2)])
    graph = helper.make_graph(
        [_const("c", np.array(True)),
         helper.make_node("If", ["c"], ["y"], then_branch=outer_then, else_branch=outer_else, name="outer")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", 4])], [_out("y", 2)])
    return _save(graph, path)


def runtime_if_model(path: Path, *, squeeze_else: bool = False, seed: int = 0) -> Path:
    """If(flag > 1) on an int64 scalar input: both branches run an LSTM behind a shape subgraph.

    With `squeeze_else` the else-branch squeezes the batch axis, which is valid only for batch 1 (as
    silero-vad's 8 kHz branch is valid only for some input lengths).
    """
    rng = np.random.default_rng(seed)
    then_nodes, then_inits = _lstm_then_reshape("t_", "x", "t_out", 5, 5, rng)
    if squeeze_else:
        else_nodes, else_inits = [
            _const("e_ax", np.array([1], np.int64)), helper.make_node("Squeeze", ["x", "e_ax"], ["e_sq"]),
            _const("e_z", np.array([0], np.int64)), helper.make_node("ReduceSum", ["e_sq", "e_z"], ["e_out"], keepdims=1),
        ], []
    else:
        else_nodes, else_inits = _lstm_then_reshape("e_", "x", "e_out", 5, 5, rng)
    graph = helper.make_graph(
        [_const("one", np.array(1, np.int64)), helper.make_node("Greater", ["flag", "one"], ["cond"]),
         helper.make_node("If", ["cond"], ["y"], name="pick",
                          then_branch=helper.make_graph(then_nodes, "then", [], [_out("t_out", 2)], then_inits),
                          else_branch=helper.make_graph(else_nodes, "else", [], [_out("e_out", 2)], else_inits))],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", 5]),
              helper.make_tensor_value_info("flag", TensorProto.INT64, [])],
        [_out("y", 2)])
    return _save(graph, path)


def test_constant_if_is_folded_before_import(host, tmp_path):
    path = constant_if_model(tmp_path / "cif.onnx")
    prepared = onnx.load_from_string(load_model(path, {"x": (3, 2, 4)}).prepared_onnx)
    assert "If" not in {n.op_type for n in prepared.graph.node}
    assert {n.op_type for n in prepared.graph.node} >= {"LSTM"}
    assert _verified(compile_model(path, host, tmp_path / "art", input_shapes={"x": (3, 2, 4)})) < 1e-5
    # batch 3 takes the inner else-branch: no LSTM left at all.
    prepared3 = onnx.load_from_string(load_model(path, {"x": (3, 3, 4)}).prepared_onnx)
    assert {n.op_type for n in prepared3.graph.node}.isdisjoint({"If", "LSTM"})


def test_inlining_a_constant_if_keeps_the_results(tmp_path):
    """The toolkit's own inliner (used where onnxslim leaves a constant If) gives onnxruntime's results."""
    from compile.onnx_simplify import _inline_constant_ifs

    path = constant_if_model(tmp_path / "cif.onnx")
    model = onnx.load(str(path))
    assert _inline_constant_ifs(model.graph) == 1
    assert [n.op_type for n in model.graph.node].count("If") == 1  # the inner If, now at the top
    assert _inline_constant_ifs(model.graph) == 0  # its condition is not constant until shapes are folded
    onnx.checker.check_model(model)
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_runtime_if_on_a_scalar_input_keeps_both_branches(host, tmp_path):
    """The condition depends on an input: both branches are simplified and compiled, and each one matches."""
    path = runtime_if_model(tmp_path / "rif.onnx")
    result = compile_model(path, host, tmp_path / "art", input_shapes={"x": (3, 2, 5)})
    _verified(result)
    assert result.manifest["inputs"][1] == {"name": "flag", "shape": [], "dtype": "int64"}
    vm = VMExecutor(result.artifact / "model.so")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 2, 5)).astype(np.float32)
    for flag in (0, 2):  # else-branch, then-branch; a 0-d input must stay 0-d on its way into the VM
        f = np.array(flag, np.int64)
        np.testing.assert_allclose(vm.run([x, f])[0], sess.run(None, {"x": x, "flag": f})[0], atol=1e-5)


def test_runtime_if_with_a_branch_invalid_for_the_shapes_is_explained(tmp_path):
    path = runtime_if_model(tmp_path / "rif.onnx", squeeze_else=True)
    out = tmp_path / "art"
    assert_user_error(run_cli("compile", path, "-o", out, "--input-shape", "x=3,2,5"), 1,
                      "else_branch of If node 'pick'", "chosen at run time from input 'flag'", "Squeeze",
                      "input shapes valid for both")
    assert_nothing_written(out)


# --------------------------------------------------------------------------- TFLite


def _csr_sparsity(dense: np.ndarray):
    """TFLite sparsity parameters for a 2-D matrix stored with dense rows and CSR columns, and its non-zeros."""
    segments, indices = [0], []
    for row in dense:
        indices.extend(np.nonzero(row)[0].tolist())
        segments.append(len(indices))

    def build(b):
        SP, DM, IV = tfl("SparsityParameters"), tfl("DimensionMetadata"), tfl("Int32Vector")
        INT32 = tfl("SparseIndexVector").SparseIndexVector.Int32Vector

        def int32_vector(values):
            vec = int_vector(b, IV.Int32VectorStartValuesVector, values)
            IV.Int32VectorStart(b)
            IV.Int32VectorAddValues(b, vec)
            return IV.Int32VectorEnd(b)

        seg, ind = int32_vector(segments), int32_vector(indices)
        DM.DimensionMetadataStart(b)
        DM.DimensionMetadataAddFormat(b, 0)  # DENSE
        DM.DimensionMetadataAddDenseSize(b, dense.shape[0])
        rows = DM.DimensionMetadataEnd(b)
        DM.DimensionMetadataStart(b)
        DM.DimensionMetadataAddFormat(b, 1)  # SPARSE_CSR
        DM.DimensionMetadataAddArraySegmentsType(b, INT32)
        DM.DimensionMetadataAddArraySegments(b, seg)
        DM.DimensionMetadataAddArrayIndicesType(b, INT32)
        DM.DimensionMetadataAddArrayIndices(b, ind)
        cols = DM.DimensionMetadataEnd(b)
        order = int_vector(b, SP.SparsityParametersStartTraversalOrderVector, [0, 1])
        dims = offset_vector(b, SP.SparsityParametersStartDimMetadataVector, [rows, cols])
        SP.SparsityParametersStart(b)
        SP.SparsityParametersAddTraversalOrder(b, order)
        SP.SparsityParametersAddDimMetadata(b, dims)
        return SP.SparsityParametersEnd(b)

    return build, dense[dense != 0]


def _fully_connected_options(b):
    FC = tfl("FullyConnectedOptions")
    FC.FullyConnectedOptionsStart(b)
    FC.FullyConnectedOptionsAddFusedActivationFunction(b, 0)
    return tfl("BuiltinOptions").BuiltinOptions.FullyConnectedOptions, FC.FullyConnectedOptionsEnd(b)


def test_tflite_sparse_float16_weights_match_litert(host, tmp_path):
    """DENSIFY(sparse fp16) -> DEQUANTIZE -> FULLY_CONNECTED, MediaPipe's sparse pattern (pose_detection):
    TVM 0.27 alone fails on it with "a bytes-like object is required, not 'int'"."""
    pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert) is the TFLite reference runtime")
    TT, BO = tfl("TensorType").TensorType, tfl("BuiltinOperator").BuiltinOperator
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 8)).astype(np.float16)
    weight[rng.random(weight.shape) < 0.6] = 0
    sparsity, values = _csr_sparsity(weight)
    bias = rng.standard_normal(6).astype(np.float32)
    path = write_tflite(
        tmp_path / "sparse_fc.tflite",
        tensors=[{"name": "x", "shape": [1, 8], "type": TT.FLOAT32, "buffer": 0},
                 {"name": "w_sparse", "shape": [6, 8], "type": TT.FLOAT16, "buffer": 1, "sparsity": sparsity},
                 {"name": "w_fp16", "shape": [6, 8], "type": TT.FLOAT16, "buffer": 0},
                 {"name": "w", "shape": [6, 8], "type": TT.FLOAT32, "buffer": 0},
                 {"name": "b", "shape": [6], "type": TT.FLOAT32, "buffer": 2},
                 {"name": "y", "shape": [1, 6], "type": TT.FLOAT32, "buffer": 0}],
        ops=[{"code": BO.DENSIFY, "inputs": [1], "outputs": [2]},
             {"code": BO.DEQUANTIZE, "inputs": [2], "outputs": [3]},
             {"code": BO.FULLY_CONNECTED, "inputs": [0, 3, 4], "outputs": [5], "options": _fully_connected_options}],
        inputs=[0], outputs=[5], buffers=[b"", values.tobytes(), bias.tobytes()])
    result = compile_model(path, host, tmp_path / "art")
    v = result.manifest["verification"]
    assert v["passed"] is True and v["reference"] in ("litert", "tflite-runtime") and v["max_abs_error"] < 1e-5
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    np.testing.assert_allclose(VMExecutor(result.artifact / "model.so").run([x])[0], x @ weight.astype(np.float32).T + bias,
                               atol=1e-5)


def test_tflite_custom_operators_are_named(tmp_path):
    TT = tfl("TensorType").TensorType
    customs = ["Convolution2DTransposeBias", "MaxUnpooling2D", "MaxUnpooling2D"]
    path = write_tflite(
        tmp_path / "custom.tflite",
        tensors=[{"name": f"t{i}", "shape": [1, 4, 4, 2], "type": TT.FLOAT32, "buffer": 0} for i in range(len(customs) + 1)],
        ops=[{"custom": c, "inputs": [i], "outputs": [i + 1]} for i, c in enumerate(customs)],
        inputs=[0], outputs=[len(customs)], buffers=[b""])
    out = tmp_path / "art"
    assert_user_error(run_cli("compile", path, "--target", "host", "-o", out), 1,
                      "custom operator(s) Convolution2DTransposeBias (x1), MaxUnpooling2D (x2)",
                      "TRANSPOSE_CONV followed by ADD", "re-export")
    assert_nothing_written(out)
