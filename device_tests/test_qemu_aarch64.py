"""The C++ runtime cross-built for aarch64 and run under qemu-aarch64-static, against the host and onnxruntime.

Needs g++-aarch64-linux-gnu, qemu-user-static, cmake, and network access to PyPI once (the aarch64
TVM wheels are downloaded into ~/.cache/autoglm/wheels); each test skips with the reason otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import targets
from compile import compile_model
from toolkit import native
from toolkit.export import export_zoo_model

pytestmark = pytest.mark.skipif(targets.host_arch() != "x86_64", reason="emulates aarch64 on an x86_64 host")

QEMU = "qemu-aarch64-static"
SYSROOT = "/usr/aarch64-linux-gnu"


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not found: apt-get install {package}")


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory) -> Path:
    return export_zoo_model("convnet", tmp_path_factory.mktemp("qemu-models") / "convnet.onnx")


@pytest.fixture(scope="session")
def aarch64_runtime() -> Path:
    _need("cmake", "cmake")
    _need("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")
    try:
        return native.build_runtime("aarch64")
    except native.NativeRuntimeError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"aarch64 TVM wheels unavailable: {exc}")
        raise


@pytest.fixture(scope="session")
def host_runtime() -> Path:
    _need("cmake", "cmake")
    return native.build_runtime("x86_64")


@pytest.fixture(scope="session")
def rpi4_artifact(onnx_model, tmp_path_factory) -> Path:
    _need("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")
    target = targets.load_target("rpi4")
    assert target.tvm["mcpu"] == "cortex-a72" and "+neon" in target.tvm["mattr"]
    return compile_model(onnx_model, target, tmp_path_factory.mktemp("qemu-artifacts") / "convnet-rpi4").artifact


@pytest.fixture(scope="session")
def host_artifact(onnx_model, tmp_path_factory) -> Path:
    return compile_model(onnx_model, targets.load_target("host"), tmp_path_factory.mktemp("qemu-artifacts") / "convnet-host").artifact


@pytest.fixture(scope="session")
def sample() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((1, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="session")
def reference(onnx_model, sample) -> np.ndarray:
    return ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"]).run(None, {"x": sample})[0]


def test_cross_built_runner_is_aarch64(aarch64_runtime):
    from compile import elf_machine

    for name in ("autoglm-runner", "classify", "libtvm_runtime.so", "libtvm_ffi.so"):
        assert elf_machine(aarch64_runtime / "bin" / name) == "aarch64", name


def test_qemu_outputs_match_host_and_onnxruntime(aarch64_runtime, host_runtime, rpi4_artifact, host_artifact, sample, reference):
    _need(QEMU, "qemu-user-static")
    emulated = native.run_artifact(rpi4_artifact, {"x": sample}, emulate=True, warmup=1, repeat=2,
                                   runtime_dir=aarch64_runtime)
    native_run = native.run_artifact(host_artifact, {"x": sample}, repeat=1, runtime_dir=host_runtime)
    assert emulated.emulated and emulated.arch == "aarch64" and emulated.report["runtime_arch"] == "aarch64"
    assert emulated.report["target"] == "rpi4" and len(emulated.latencies_ms) == 2
    np.testing.assert_allclose(emulated.outputs["y"], reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(emulated.outputs["y"], native_run.outputs["y"], rtol=0, atol=1e-5)


def test_qemu_refuses_tampered_artifact(aarch64_runtime, rpi4_artifact, tmp_path):
    _need(QEMU, "qemu-user-static")
    tampered = tmp_path / "tampered"
    shutil.copytree(rpi4_artifact, tampered)
    with open(tampered / "model.so", "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(native.NativeRuntimeError, match="checksum mismatch") as info:
        native.run_artifact(tampered, None, emulate=True, repeat=0, runtime_dir=aarch64_runtime)
    assert info.value.kind == "ChecksumError"


@pytest.mark.parametrize("how", ["cmake", "embedded"])
def test_classify_example_under_qemu(how, aarch64_runtime, rpi4_artifact, sample, reference, tmp_path):
    """The example app as built by CMake, and as an edge app would build it from the installed library."""
    _need(QEMU, "qemu-user-static")
    app = aarch64_runtime / "bin" / "classify"
    if how == "embedded":
        app_dir = tmp_path / "app"
        shutil.copytree(aarch64_runtime / "bin", app_dir, ignore=shutil.ignore_patterns("autoglm-runner", "classify"))
        app = app_dir / "classify"
        subprocess.run(["aarch64-linux-gnu-g++", "-std=c++17", "-O2", str(native.SOURCE_DIR / "examples" / "classify.cpp"),
                        f"-I{aarch64_runtime / 'include'}", str(aarch64_runtime / "lib" / "libautoglm_runtime.a"),
                        f"-L{app_dir}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-ldl", "-Wl,-rpath,$ORIGIN",
                        "-o", str(app)], check=True, capture_output=True, timeout=300)
    np.save(tmp_path / "x.npy", sample)
    proc = subprocess.run([QEMU, "-L", SYSROOT, str(app), str(rpi4_artifact), str(tmp_path / "x.npy"), "--threads", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("rpi4 on aarch64")
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("top")]
    assert [int(r[2]) for r in rows] == list(np.argsort(-reference[0])[:5])
    np.testing.assert_allclose([float(r[4]) for r in rows], np.sort(reference[0])[::-1][:5], rtol=0, atol=1e-5)
