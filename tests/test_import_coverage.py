"""Import coverage: LSTM, GRU and RNN through the toolkit's converters.

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
from compile import UnsupportedOperatorError, VMExecutor, compile_model
from conftest import assert_nothing_written, assert_user_error, run_cli


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
