"""Compile-for-target through the real CLI: host builds verified against the reference runtime, cross builds checked by ELF."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compile import elf_machine
from conftest import AUTOGLM, assert_nothing_written, have, run_cli

REQUIRED_TARGETS = {"host", "x86-64-avx2", "x86-64-avx512", "rpi3", "rpi4", "rpi5", "rk3588", "armv7", "jetson-orin", "nvidia-a100", "nvidia-h100"}


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_targets_lists_every_device():
    proc = run_cli("targets", "--json", check=True)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert REQUIRED_TARGETS <= set(rows)
    assert rows["rpi4"]["tvm_target"]["mcpu"] == "cortex-a72"
    assert rows["rpi5"]["tvm_target"]["mattr"] == ["+neon", "+dotprod"]
    assert rows["jetson-orin"]["tvm_target"]["arch"] == "sm_87"
    assert rows["jetson-orin"]["tvm_target"]["host"]["mtriple"] == "aarch64-linux-gnu"
    assert rows["nvidia-h100"]["tvm_target"]["arch"] == "sm_90"
    assert rows["host"]["runs_here"] == "native"
    table = run_cli("targets", check=True).stdout
    for name in REQUIRED_TARGETS:
        assert name in table


def test_user_target_directory(tmp_path):
    (tmp_path / "myboard.toml").write_text(
        (Path(__file__).parent.parent / "targets" / "rpi4.toml").read_text().replace('name = "rpi4"', 'name = "myboard"')
    )
    rows = {r["name"]: r for r in json.loads(run_cli("targets", "--json", "--targets-dir", tmp_path, check=True).stdout)}
    assert "myboard" in rows and rows["myboard"]["source"].endswith("myboard.toml")
    via_env = run_cli("targets", "--json", env={"AUTOGLM_TARGETS_DIR": str(tmp_path)}, check=True)
    assert "myboard" in {r["name"] for r in json.loads(via_env.stdout)}


def _reference(onnx_path: Path, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_compile_conv_net_for_host_and_run(host_artifact, convnet_onnx, tmp_path):
    m = _manifest(host_artifact)
    assert m["target"]["name"] == "host" and m["target"]["arch"] == "x86_64"
    assert m["verification"]["passed"] is True and m["verification"]["reference"] == "onnxruntime"
    assert m["verification"]["max_abs_error"] < 1e-4
    assert m["inputs"] == [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert m["outputs"] == [{"name": "y", "shape": [1, 10], "dtype": "float32"}]
    assert m["fusion"]["kernels"] < m["fusion"]["graph_ops"]  # fusion happened
    assert any("conv2d" in k and "add" in k for k in m["fusion"]["kernel_names"])
    assert m["memory"]["planned_activation_bytes"] > 0 and m["memory"]["weight_bytes"] > 0
    assert set(m["files"]) >= {"model.so"} and m["tvm_version"].startswith("0.27")
    assert elf_machine(host_artifact / "model.so") == "x86_64"

    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_cli("run", host_artifact, "--input", f"x={tmp_path / 'x.npy'}", "--output", tmp_path / "out.npz", check=True)
    assert "top-5" in proc.stdout
    got = np.load(tmp_path / "out.npz")["y"]
    np.testing.assert_allclose(got, _reference(convnet_onnx, {"x": x})[0], atol=1e-4, rtol=1e-3)

    random_run = run_cli("run", host_artifact, "--random", check=True)
    assert "y: shape [1, 10] float32" in random_run.stdout


def test_inspect_human_and_json(host_artifact):
    human = run_cli("inspect", host_artifact, check=True).stdout
    assert "graph operators ->" in human and "every file matches" in human
    data = json.loads(run_cli("inspect", host_artifact, "--json", check=True).stdout)
    assert data["integrity"].startswith("ok") and data["model"]["format"] == "onnx"


def test_compile_transformer_encoder(transformer_onnx, tmp_path):
    out = tmp_path / "enc"
    run_cli("compile", transformer_onnx, "-o", out, check=True)
    m = _manifest(out)
    assert m["inputs"][0]["dtype"] == "int64" and m["verification"]["passed"] is True
    assert any("matmul" in k for k in m["fusion"]["kernel_names"])


def test_compile_tflite_verified_against_litert(small_tflite, tmp_path):
    out = tmp_path / "tfl"
    proc = run_cli("compile", small_tflite, "-o", out, check=True)
    m = _manifest(out)
    assert m["model"]["format"] == "tflite"
    assert m["verification"]["reference"] in ("litert", "tflite-runtime") and m["verification"]["passed"] is True
    assert "verify:  passed against litert" in proc.stdout
    _only_stage_lines(proc.stderr)  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" is not shown


def _only_stage_lines(stderr: str) -> None:
    """A successful compile's stderr is its stage timings, nothing else (no TVM/LiteRT info or warnings)."""
    import re

    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and all(re.fullmatch(r"  [a-zA-Z +]+: [0-9.]+ s", ln) for ln in lines), stderr


def test_compile_of_a_gather_and_a_scatter_prints_no_native_warnings(tmp_path):
    """TOPI's take ("Fast mode segfaults...") and IR-builder kernels ("Unknown pragma") warn from C++ on fd 2."""
    import onnx
    from onnx import TensorProto as T, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "W")
    g = helper.make_graph(
        [helper.make_node("Gather", ["W", "ids"], ["e"]),
         helper.make_node("ScatterElements", ["e", "pos", "u"], ["y"], axis=1)], "g",
        [helper.make_tensor_value_info("ids", T.INT64, [3]), helper.make_tensor_value_info("pos", T.INT64, [3, 1]),
         helper.make_tensor_value_info("u", T.FLOAT, [3, 1])],
        [helper.make_tensor_value_info("y", T.FLOAT, [3, 4])], [table])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    proc = run_cli("compile", tmp_path / "g.onnx", "-o", tmp_path / "out", check=True)
    _only_stage_lines(proc.stderr)


def test_native_stderr_filter_keeps_everything_else():
    """Only the listed lines are dropped; other C-level writes to fd 2 pass through, in order."""
    code = (
        "import os\n"
        "from compile.native_stderr import quiet_native_stderr\n"
        "with quiet_native_stderr():\n"
        "    os.write(2, b'keep 1\\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')\n"
        "    with quiet_native_stderr():\n"
        "        os.write(2, b'[1:2:3] /x/transform.h:1261: Warning: Fast mode segfaults when there are out-of-bounds"
        " indices. Make sure input indices are in bound\\nkeep 2\\n')\n"
        "    os.write(2, b'no newline')\n"
        "os.write(2, b'|after')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and proc.stderr == b"keep 1\nkeep 2\nno newline|after", proc.stderr


class _Flatten(torch.nn.Module):
    """Conv then x.view(x.size(0), -1): the legacy exporter emits Shape -> Gather -> Concat -> Reshape."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


def _export_dynamic(module: torch.nn.Module, path: Path, example: torch.Tensor) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def test_shape_subgraph_model_imports_once_shapes_fixed(tmp_path):
    torch.manual_seed(0)
    path = _export_dynamic(_Flatten(), tmp_path / "flatten.onnx", torch.randn(2, 3, 8, 8))
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "Concat", "Reshape"} <= ops  # the real-world pattern is there
    out = tmp_path / "flat"
    run_cli("compile", path, "--input-shape", "x=3,3,8,8", "-o", out, check=True)
    m = _manifest(out)
    assert m["inputs"][0]["shape"] == [3, 3, 8, 8] and m["outputs"][0]["shape"] == [3, 5]
    assert m["verification"]["passed"] is True


def test_dynamic_input_without_shape_is_a_usage_error(tmp_path):
    torch.manual_seed(0)
    path = _export_dynamic(_Flatten(), tmp_path / "flatten.onnx", torch.randn(2, 3, 8, 8))
    out = tmp_path / "art"
    from conftest import assert_user_error

    assert_user_error(run_cli("compile", path, "-o", out), 2, "dynamic dimensions", "x [batch,3,8,8]", "--input-shape")
    assert_nothing_written(out)


@pytest.mark.parametrize("target,arch", [("rpi4", "aarch64"), ("armv7", "arm")])
def test_cross_compile_cpu(convnet_onnx, tmp_path, target, arch):
    pkg = {"aarch64": "aarch64-linux-gnu-g++", "arm": "arm-linux-gnueabihf-g++"}[arch]
    if not have(pkg):
        pytest.skip(f"{pkg} not installed: apt-get install g++-{pkg.removesuffix('-g++')}")
    from compile.native import emulation_unavailable, emulator_name

    out = tmp_path / target
    proc = run_cli("compile", convnet_onnx, "--target", target, "-o", out, check=True)
    assert elf_machine(out / "model.so") == arch
    m = _manifest(out)
    assert m["target"]["arch"] == arch and m["toolchain"]["compiler"] == pkg
    why_not = emulation_unavailable(arch)
    if why_not is None:  # verified by default wherever qemu and the C++ runner can run it
        qemu = emulator_name(arch)  # qemu-aarch64 / qemu-arm
        assert m["verification"]["passed"] is True and m["verification"]["how"].startswith(f"verified under {qemu} ")
        assert f"verified under {qemu} " in proc.stdout
    else:  # no qemu, cross compiler or cmake here: the manifest says why it is unverified
        assert m["verification"]["passed"] is None and why_not in m["verification"]["skipped"]
        assert "verify:  skipped" in proc.stdout
    # --no-verify skips on purpose and says so
    skipped = run_cli("compile", convnet_onnx, "--target", target, "-o", tmp_path / "nv", "--no-verify", check=True)
    assert "disabled with --no-verify" in skipped.stdout or why_not is not None


def test_cross_compile_jetson_carries_device_binary(convnet_onnx, tmp_path):
    from compile.cuda import find_nvcc
    from compile.errors import ToolchainError

    try:
        find_nvcc()
    except ToolchainError as exc:
        pytest.skip(str(exc))
    if not have("aarch64-linux-gnu-g++"):
        pytest.skip("aarch64-linux-gnu-g++ not installed: apt-get install g++-aarch64-linux-gnu")
    out = tmp_path / "orin"
    run_cli("compile", convnet_onnx, "--target", "jetson-orin", "-o", out, check=True)
    lib = (out / "model.so").read_bytes()
    assert elf_machine(out / "model.so") == "aarch64"
    assert b"__global__" not in lib, "the library carries CUDA source, not compiled device code"
    assert b"sm_87" in lib  # the fatbin nvcc built for Orin's GPU
    assert _manifest(out)["target"]["device"] == "cuda"


def test_interrupted_compile_leaves_nothing(tmp_path):
    from toolkit.export import export_zoo_model

    onnx_path = export_zoo_model("mobilenetv2", tmp_path / "mbv2.onnx")
    out = tmp_path / "mbv2-host"
    cmd = [str(AUTOGLM), "compile", str(onnx_path), "-o", str(out)] if AUTOGLM.exists() else \
        [sys.executable, "-m", "toolkit.cli", "compile", str(onnx_path), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not any(p.name.startswith(f".{out.name}.partial") for p in tmp_path.iterdir()):
        assert proc.poll() is None, "compile ended before its staging directory appeared"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # the staging directory may stay behind, the output path never half-exists
