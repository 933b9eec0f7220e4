"""The C++ runtime on the host: real CMake build, real artifacts, outputs against onnxruntime."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import targets
from conftest import have, run_cli, tampered_copy
from toolkit import native

pytestmark = pytest.mark.skipif(targets.host_arch() != "x86_64", reason="these tests build the runtime for an x86_64 host")


@pytest.fixture(scope="session")
def host_runtime() -> Path:
    if not have("cmake") or not have("g++"):
        pytest.skip("cmake and g++ are needed to build the C++ runtime: apt-get install cmake g++")
    return native.build_runtime("x86_64")


@pytest.fixture(scope="session")
def convnet_input() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _onnxruntime(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)


def _runner(runtime: Path, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(native.runner_path(runtime)), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_build_is_cached_and_self_contained(host_runtime):
    assert native.build_runtime("x86_64") == host_runtime  # a finished build is reused
    for name in ("bin/autoglm-runner", "bin/classify", "bin/libtvm_runtime.so", "bin/libtvm_ffi.so",
                 "lib/libautoglm_runtime.a", "include/autoglm/runtime.h"):
        assert (host_runtime / name).is_file(), name
    dynamic = subprocess.run(["readelf", "-d", str(native.runner_path(host_runtime))], capture_output=True, text=True).stdout
    assert "[$ORIGIN]" in dynamic and "libtvm_runtime.so" in dynamic
    assert not [p for p in host_runtime.parent.iterdir() if ".partial-" in p.name]


def test_runner_matches_onnxruntime(host_runtime, host_artifact, convnet_onnx, convnet_input):
    result = native.run_artifact(host_artifact, {"x": convnet_input}, warmup=1, repeat=3, runtime_dir=host_runtime)
    expected = _onnxruntime(convnet_onnx, {"x": convnet_input})
    assert list(result.outputs) == [o["name"] for o in json.loads((host_artifact / "manifest.json").read_text())["outputs"]]
    (actual,) = result.outputs.values()
    assert actual.shape == expected[0].shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected[0], rtol=0, atol=1e-5)
    assert not result.emulated and result.arch == "x86_64"
    assert len(result.latencies_ms) == 3 and set(result.latency_ms) == {
        "count", "mean", "std", "min", "max", "p50", "p90", "p95", "p99"}
    assert result.latency_ms["min"] <= result.latency_ms["p50"] <= result.latency_ms["max"]
    assert result.load_ms > 0 and result.first_inference_ms > 0 and result.peak_rss_bytes > 1_000_000


def test_runner_threads_and_random_inputs_are_deterministic(host_runtime, host_artifact):
    one = native.run_artifact(host_artifact, None, seed=3, repeat=0, threads=1, runtime_dir=host_runtime)
    two = native.run_artifact(host_artifact, None, seed=3, repeat=2, threads=2, runtime_dir=host_runtime)
    other = native.run_artifact(host_artifact, None, seed=4, repeat=0, runtime_dir=host_runtime)
    assert one.latencies_ms == [] and one.latency_ms is None and two.threads == 2
    np.testing.assert_allclose(one.outputs["y"], two.outputs["y"], rtol=0, atol=1e-6)
    assert not np.allclose(one.outputs["y"], other.outputs["y"])
    assert one.report["inputs"][0]["source"] == "random:3"


def test_runner_json_and_npy_files(host_runtime, host_artifact, convnet_onnx, convnet_input, tmp_path):
    np.save(tmp_path / "x.npy", convnet_input)
    out = tmp_path / "out"
    out.mkdir()
    proc = _runner(host_runtime, host_artifact, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", out,
                   "--warmup", "0", "--repeat", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["schema"] == "autoglm-runner/1" and report["arch"] == report["runtime_arch"] == "x86_64"
    assert report["inputs"] == [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32", "source": str(tmp_path / "x.npy")}]
    (output,) = report["outputs"]
    assert output["path"] == str(out / "y.npy") and output["shape"] == [1, 10] and output["dtype"] == "float32"
    np.testing.assert_allclose(np.load(output["path"]), _onnxruntime(convnet_onnx, {"x": convnet_input})[0], rtol=0, atol=1e-5)
    # Without --json the same run prints a human summary.
    text = _runner(host_runtime, host_artifact, "--repeat", "1")
    assert text.returncode == 0 and "latency    mean" in text.stdout and "output     y float32 [1, 10]" in text.stdout


def test_classify_example_prints_top5(host_runtime, host_artifact, convnet_onnx, convnet_input, tmp_path):
    np.save(tmp_path / "x.npy", convnet_input)
    proc = subprocess.run([str(host_runtime / "bin" / "classify"), str(host_artifact), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    scores = _onnxruntime(convnet_onnx, {"x": convnet_input})[0][0]
    printed = [int(line.split()[2]) for line in proc.stdout.splitlines() if line.startswith("top")]
    assert printed == list(np.argsort(-scores)[:5])


def test_int64_inputs_transformer(host_runtime, transformer_onnx, tmp_path):
    from compile import compile_model

    artifact = compile_model(transformer_onnx, targets.load_target("host"), tmp_path / "transformer", verify=False).artifact
    ids = np.random.default_rng(1).integers(0, 64, (1, 16)).astype(np.int64)
    result = native.run_artifact(artifact, {"ids": ids}, repeat=1, runtime_dir=host_runtime)
    (actual,) = result.outputs.values()
    np.testing.assert_allclose(actual, _onnxruntime(transformer_onnx, {"ids": ids})[0], rtol=0, atol=1e-5)


def test_tampered_library_is_refused(host_runtime, host_artifact, tmp_path):
    tampered = tampered_copy(host_artifact, tmp_path / "tampered")
    with pytest.raises(native.NativeRuntimeError, match="checksum mismatch for .*model.so") as info:
        native.run_artifact(tampered, None, repeat=0, runtime_dir=host_runtime)
    assert info.value.kind == "ChecksumError"
    proc = _runner(host_runtime, tampered)
    assert proc.returncode == 4 and "modified or corrupted" in proc.stderr

    (tampered / "model.so").unlink()
    proc = _runner(host_runtime, tampered, "--json")
    assert proc.returncode == 4
    assert json.loads(proc.stdout)["error"]["message"].endswith("is listed in manifest.json but missing")


def test_aarch64_artifact_is_refused_by_host_runner(host_runtime, convnet_onnx, tmp_path):
    if not have("aarch64-linux-gnu-g++"):
        pytest.skip("aarch64-linux-gnu-g++ not found: apt-get install g++-aarch64-linux-gnu")
    from compile import compile_model

    artifact = compile_model(convnet_onnx, targets.load_target("rpi4"), tmp_path / "convnet-rpi4").artifact
    proc = _runner(host_runtime, artifact, "--json")
    assert proc.returncode == 5
    error = json.loads(proc.stdout)["error"]
    assert error["type"] == "ArchMismatchError"
    assert "was built for aarch64 (target rpi4) but this runtime is x86_64" in error["message"]
    with pytest.raises(native.NativeRuntimeError, match="is for aarch64 and this machine is x86_64: pass emulate=True"):
        native.run_artifact(artifact, None, runtime_dir=host_runtime)


def test_bad_inputs_are_reported(host_runtime, host_artifact, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 32, 31), np.float32))
    with pytest.raises(native.NativeRuntimeError, match=r"input 'x' must be float32 \[1, 3, 32, 32\], got float32 \[1, 3, 32, 31\]"):
        native.run_artifact(host_artifact, {"x": np.zeros((1, 3, 32, 31), np.float32)}, runtime_dir=host_runtime)
    with pytest.raises(native.NativeRuntimeError, match="the model has no input 'z'") as info:
        native.run_artifact(host_artifact, {"z": np.zeros((1, 3, 32, 32), np.float32)}, runtime_dir=host_runtime)
    assert info.value.kind == "UsageError"
    proc = _runner(host_runtime, tmp_path / "nowhere")
    assert proc.returncode == 3 and "is not an artifact directory" in proc.stderr


def test_cli_runtime_build_prints_location(host_runtime):
    proc = run_cli("runtime", "build", "--target", "host", check=True)
    assert f"runtime for x86_64: {host_runtime}" in proc.stdout
    assert str(native.runner_path(host_runtime)) in proc.stdout
    # (armv7, whose TVM runtime is built from the wheels' sources: tests/test_armv7_runtime.py)
