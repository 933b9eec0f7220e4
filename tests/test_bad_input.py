"""Every kind of bad input: one line, the right exit code, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_nothing_written, assert_user_error, run_cli, tampered_copy


def test_missing_model_file(tmp_path):
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", tmp_path / "nope.onnx", "-o", out), 2, "does not exist")
    assert_nothing_written(out)


def test_file_that_is_not_a_model(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not a neural network\n" * 20)
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", bogus, "-o", out), 2, "neither a TFLite file nor a readable ONNX model")
    assert_nothing_written(out)


def test_truncated_onnx(convnet_onnx, tmp_path):
    data = convnet_onnx.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", cut, "-o", out), 2, "cut.onnx", "truncated or corrupt")
    assert_nothing_written(out)


def test_truncated_tflite(small_tflite, tmp_path):
    data = small_tflite.read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[:64])
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", cut, "-o", out), 2, "cut.tflite", "truncated or corrupt")
    assert_nothing_written(out)


class _Det(torch.nn.Module):
    """ONNX `Det`: an operator TVM 0.27's importer has no converter for (LSTM/GRU the toolkit now converts itself)."""

    def forward(self, x):
        return torch.linalg.det(x)


def test_operator_tvm_cannot_import(tmp_path):
    path = tmp_path / "det.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Det().eval(), (torch.randn(2, 3, 3),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", path, "-o", out), 1, "cannot import", "Det (node '")
    assert_nothing_written(out)


def test_unknown_target_lists_closest(convnet_onnx, tmp_path):
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", convnet_onnx, "--target", "rpi44", "-o", out), 2, "unknown target 'rpi44'", "rpi4")
    assert_nothing_written(out)


def test_missing_cross_compiler_names_the_package(convnet_onnx, tmp_path):
    tdir = tmp_path / "targets"
    tdir.mkdir()
    text = (Path(__file__).parent.parent / "targets" / "rpi4.toml").read_text()
    text = text.replace('name = "rpi4"', 'name = "oddboard"').replace(
        'cross_compiler = "aarch64-linux-gnu-g++"', 'cross_compiler = "aarch64-oddvendor-linux-g++"').replace(
        'cross_compiler_package = "g++-aarch64-linux-gnu"', 'cross_compiler_package = "g++-aarch64-oddvendor"')
    (tdir / "oddboard.toml").write_text(text)
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", convnet_onnx, "--target", "oddboard", "--targets-dir", tdir, "-o", out), 1,
                      "aarch64-oddvendor-linux-g++", "apt-get install g++-aarch64-oddvendor")
    assert_nothing_written(out)


def test_invalid_target_file(convnet_onnx, tmp_path):
    (tmp_path / "broken.toml").write_text('name = "broken"\narch = "mips"\n')
    assert_user_error(run_cli("targets", "--targets-dir", tmp_path), 2, "broken.toml", "missing required key")


def test_bad_input_shape_flag(convnet_onnx, tmp_path):
    out = tmp_path / "out"
    assert_user_error(run_cli("compile", convnet_onnx, "--input-shape", "x=1,three", "-o", out), 2, "NAME=D0,D1")
    assert_user_error(run_cli("compile", convnet_onnx, "--input-shape", "image=1,3,32,32", "-o", out), 2,
                      "names image", "inputs are: x")
    assert_user_error(run_cli("compile", convnet_onnx, "--input-shape", "x=1,3,64,64", "-o", out), 2, "conflicts")
    assert_nothing_written(out)


def test_output_path_that_is_not_an_artifact_is_left_alone(convnet_onnx, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "data.txt").write_text("keep me")
    assert_user_error(run_cli("compile", convnet_onnx, "-o", out), 2, "not an artifact")
    assert (out / "data.txt").read_text() == "keep me"


@pytest.mark.parametrize("case,fragments", [
    ("name", ("unknown input 'image'", "inputs are: x")),
    ("shape", ("input 'x' has shape [1, 3, 16, 16]", "expects [1, 3, 32, 32]")),
    ("dtype", ("input 'x' has dtype float64", "expects float32")),
])
def test_run_rejects_wrong_inputs(host_artifact, tmp_path, case, fragments):
    arr = {"name": np.zeros((1, 3, 32, 32), np.float32), "shape": np.zeros((1, 3, 16, 16), np.float32),
           "dtype": np.zeros((1, 3, 32, 32), np.float64)}[case]
    np.save(tmp_path / "in.npy", arr)
    name = "image" if case == "name" else "x"
    out = tmp_path / "out.npz"
    assert_user_error(run_cli("run", host_artifact, "--input", f"{name}={tmp_path / 'in.npy'}", "-o", out), 2, *fragments)
    assert not out.exists()


def test_run_needs_inputs_or_random(host_artifact):
    assert_user_error(run_cli("run", host_artifact), 2, "--random")


def test_run_input_file_not_npy(host_artifact, tmp_path):
    (tmp_path / "x.npy").write_text("garbage")
    assert_user_error(run_cli("run", host_artifact, "--input", f"x={tmp_path / 'x.npy'}"), 2, "is not a .npy file")


def test_tampered_artifact_is_refused(host_artifact, tmp_path):
    copy = tampered_copy(host_artifact, tmp_path / "tampered")
    assert_user_error(run_cli("run", copy, "--random"), 1, "model.so does not match its checksum")
    from compile import ArtifactError
    from toolkit import runtime

    with pytest.raises(ArtifactError, match="checksum"):
        runtime.load(copy)
    inspected = run_cli("inspect", copy)
    assert "FAILED" in inspected.stdout
    assert_user_error(inspected, 1, "model.so does not match its checksum")


def test_artifact_for_another_architecture_is_refused(convnet_onnx, tmp_path):
    if not shutil.which("aarch64-linux-gnu-g++"):
        pytest.skip("aarch64-linux-gnu-g++ not installed: apt-get install g++-aarch64-linux-gnu")
    out = tmp_path / "rpi4"
    run_cli("compile", convnet_onnx, "--target", "rpi4", "-o", out, check=True)
    assert_user_error(run_cli("run", out, "--random"), 1, "built for aarch64", "--device qemu")


def test_verify_on_a_target_that_cannot_run_here(convnet_onnx, tmp_path):
    out = tmp_path / "out"
    # jetson-orin: a CUDA target, which compile never runs here (not even on a machine with a GPU), so --verify
    # is refused before anything is built
    assert_user_error(run_cli("compile", convnet_onnx, "--target", "jetson-orin", "--verify", "-o", out), 2,
                      "cannot run here", "jetson-orin")
    assert_nothing_written(out)


def test_manifest_edit_is_refused(host_artifact, tmp_path):
    copy = tmp_path / "edited"
    shutil.copytree(host_artifact, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["files"]["model.so"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(m))
    assert_user_error(run_cli("run", copy, "--random"), 1, "checksum")
