"""armv7 (32-bit ARM, hard float, NEON): the TVM runtime built from the wheels' C++ sources, the C++ runner
cross-built against it and run under qemu-arm-static, against onnxruntime; `compile --target armv7`
verifying under qemu-arm.

No armv7 TVM wheel exists, so the first `build_runtime("arm")` on a machine compiles libtvm_ffi.so and
libtvm_runtime.so (runtime_cpp/tvm_from_wheel; ~1-3 minutes on 2 cores), cached under
<cache>/tvm-libs/. Each test skips with the reason when arm-linux-gnueabihf-g++, qemu-arm-static or
cmake is missing.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import targets
from compile import compile_model, elf_machine, native  # toolkit.native re-exports part of compile.native
from conftest import run_cli, tampered_copy

pytestmark = pytest.mark.skipif(targets.host_arch() != "x86_64", reason="emulates armv7 on an x86_64 host")

QEMU = "qemu-arm-static"
SYSROOT = "/usr/arm-linux-gnueabihf"
TOOLS = (("arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf"), (QEMU, "qemu-user-static"), ("cmake", "cmake"))


def _need_tools() -> None:
    for tool, package in TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: apt-get install {package}")


@pytest.fixture(scope="session")
def armv7_runtime() -> Path:
    _need_tools()
    return native.build_runtime("arm")


@pytest.fixture(scope="session")
def armv7_artifact(convnet_onnx, tmp_path_factory) -> Path:
    _need_tools()
    target = targets.load_target("armv7")
    assert target.tvm["mtriple"] == "armv7a-linux-gnueabihf" and "+neon" in target.tvm["mattr"]
    return compile_model(convnet_onnx, target, tmp_path_factory.mktemp("armv7") / "convnet-armv7", verify=False).artifact


@pytest.fixture(scope="session")
def sample() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _onnxruntime(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_runtime_is_built_for_armv7_and_cached(armv7_runtime):
    assert native.emulation_unavailable("arm") is None and native.emulator_name("arm") == "qemu-arm"
    assert native.build_runtime("arm") == armv7_runtime  # a finished build is reused
    for name in ("autoglm-runner", "classify", "libtvm_runtime.so", "libtvm_ffi.so"):
        assert elf_machine(armv7_runtime / "bin" / name) == "arm", name
    assert (armv7_runtime / "lib" / "libautoglm_runtime.a").is_file()
    dynamic = subprocess.run(["readelf", "-d", str(armv7_runtime / "bin" / "libtvm_runtime.so")], capture_output=True,
                             text=True).stdout
    assert "libtvm_ffi.so" in dynamic and "[$ORIGIN]" in dynamic  # the pair can be copied to a board as it is
    # The TVM libraries are cached apart from the runner, with the recipe they were built by.
    libs = next((native.cache_root() / "tvm-libs").glob("arm-tvm*-ffi*"))
    stamp = json.loads((libs / ".autoglm-build.json").read_text())
    assert stamp["arch"] == "arm" and stamp["tvm"] == list(native._tvm_versions())
    # Only the two libraries and the stamp are kept (the CMake build tree is deleted). (.partial- siblings are
    # not checked: the cache is shared, and another process may be building, or may have been killed mid-build.)
    assert sorted(p.name for p in libs.iterdir()) == [".autoglm-build.json", "libtvm_ffi.so", "libtvm_runtime.so"]


def test_runner_under_qemu_arm_matches_onnxruntime(armv7_runtime, armv7_artifact, convnet_onnx, sample):
    result = native.run_artifact(armv7_artifact, {"x": sample}, emulate=True, warmup=1, repeat=2, runtime_dir=armv7_runtime)
    assert result.emulated and result.arch == "arm" and result.report["runtime_arch"] == "arm"
    assert result.report["target"] == "armv7" and len(result.latencies_ms) == 2
    (actual,) = result.outputs.values()
    expected = _onnxruntime(convnet_onnx, {"x": sample})[0]
    assert actual.shape == expected.shape and actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_int64_inputs_under_qemu_arm(armv7_runtime, transformer_onnx, tmp_path):
    """The transformer: int64 token ids, embedding gathers, shape constants in the VM executable."""
    artifact = compile_model(transformer_onnx, targets.load_target("armv7"), tmp_path / "transformer", verify=False).artifact
    ids = np.random.default_rng(2).integers(0, 64, (1, 16)).astype(np.int64)
    result = native.run_artifact(artifact, {"ids": ids}, emulate=True, repeat=0, runtime_dir=armv7_runtime)
    (actual,) = result.outputs.values()
    np.testing.assert_allclose(actual, _onnxruntime(transformer_onnx, {"ids": ids})[0], rtol=0, atol=1e-5)


def test_float64_to_float16_cast_under_qemu_arm(armv7_runtime, tmp_path):
    """A float64 -> float16 cast calls __truncdfhf2, which armv7's libgcc lacks (runtime_cpp/tvm_from_wheel/shim/fp16.cc)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE), helper.make_node("Mul", ["d", "k"], ["m"]),
             helper.make_node("Cast", ["m"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "f64_to_f16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor("k", TensorProto.DOUBLE, [1], [3.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "cast.onnx")
    artifact = compile_model(tmp_path / "cast.onnx", targets.load_target("armv7"), tmp_path / "cast", verify=False).artifact
    x = (np.random.default_rng(3).standard_normal((1, 64)) * 1000).astype(np.float32)
    result = native.run_artifact(artifact, {"x": x}, emulate=True, repeat=0, runtime_dir=armv7_runtime)
    np.testing.assert_array_equal(result.outputs["y"], (x.astype(np.float64) * 3).astype(np.float16).astype(np.float32))


def test_compile_verifies_under_qemu_arm(convnet_onnx, tmp_path):
    _need_tools()
    out = tmp_path / "convnet-armv7"
    proc = run_cli("compile", convnet_onnx, "--target", "armv7", "-o", out, check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    v = manifest["verification"]
    assert v["passed"] is True and v["how"].startswith("verified under qemu-arm with the C++ runner"), v
    assert v["reference"] == "onnxruntime" and v["max_abs_error"] <= 1e-5
    assert "verify under qemu" in manifest["compile_seconds"] and "verified under qemu-arm " in proc.stdout


def test_tampered_artifact_is_refused_under_qemu_arm(armv7_runtime, armv7_artifact, tmp_path):
    tampered = tampered_copy(armv7_artifact, tmp_path / "tampered")
    with pytest.raises(native.NativeRuntimeError, match="checksum mismatch") as info:
        native.run_artifact(tampered, None, emulate=True, repeat=0, runtime_dir=armv7_runtime)
    assert info.value.kind == "ChecksumError"


def test_classify_example_under_qemu_arm(armv7_runtime, armv7_artifact, convnet_onnx, sample, tmp_path):
    np.save(tmp_path / "x.npy", sample)
    proc = subprocess.run([QEMU, "-L", SYSROOT, str(armv7_runtime / "bin" / "classify"), str(armv7_artifact),
                           str(tmp_path / "x.npy"), "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("armv7 on arm")
    scores = _onnxruntime(convnet_onnx, {"x": sample})[0][0]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("top")]
    assert [int(r[2]) for r in rows] == list(np.argsort(-scores)[:5])


def test_cli_runtime_build_armv7(armv7_runtime):
    proc = run_cli("runtime", "build", "--target", "armv7", check=True)
    assert f"runtime for arm: {armv7_runtime}" in proc.stdout
    assert f"run it here: {QEMU} -L {SYSROOT} {native.runner_path(armv7_runtime)}" in proc.stdout


# The support headers the wheel lacks, written for this project (runtime_cpp/tvm_from_wheel/shim): the
# byte layout the armv7 runtime reads must be the one TVM writes on the compiling machine.
_SHIM_PROGRAM = r"""
#include <tvm/support/serializer.h>
#include "support/base64.h"
#include "support/bytes_io.h"
#include <cstdio>
#include <string>
using namespace tvm::support;
int main() {
  std::string out;
  BytesOutStream s(&out);
  s.Write(std::vector<std::string>{"ab", ""});
  s.Write(DLDataType{2, 32, 1});
  s.Write(DLDevice{kDLCPU, 3});
  s.Write(std::vector<int64_t>{-1, 7});
  s.Write(tvm::ffi::String("xyz"));
  BytesInStream in(out);
  std::vector<std::string> strs; DLDataType dt; DLDevice dev; std::vector<int64_t> ints; tvm::ffi::String str;
  bool ok = in.Read(&strs) && in.Read(&dt) && in.Read(&dev) && in.Read(&ints) && in.Read(&str) && !in.Read(&dt);
  ok = ok && strs.size() == 2 && strs[0] == "ab" && dt.bits == 32 && dev.device_id == 3 && ints[0] == -1 && str == "xyz";
  for (size_t n = 0; n <= 5; ++n) {  // every padding case of base64
    std::string enc;
    BytesOutStream es(&enc);
    Base64OutStream b64(&es);
    b64.Write(out.data(), n);
    b64.Finish();
    BytesInStream ds(enc);
    Base64InStream d64(&ds);
    d64.InitPosition();
    std::string back(n + 2, '\0');
    ok = ok && d64.Read(&back[0], n + 2) == n && back.compare(0, n, out, 0, n) == 0;
    std::printf("%s\n", enc.c_str());
  }
  for (unsigned char c : out) std::printf("%02x", c);
  std::printf("\n%s\n", ok ? "ok" : "MISMATCH");
  return 0;
}
"""


def test_shim_headers_byte_layout(tmp_path):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: apt-get install g++")
    ffi = native._package_dir("tvm_ffi")
    shim = native.TVM_FROM_WHEEL_DIR / "shim"
    (tmp_path / "t.cc").write_text(_SHIM_PROGRAM)
    subprocess.run(["g++", "-std=c++17", "-O1", str(tmp_path / "t.cc"), f"-I{shim / 'include'}", f"-I{shim}",
                    f"-I{ffi / 'include'}", f"-L{ffi / 'lib'}", "-ltvm_ffi", f"-Wl,-rpath,{ffi / 'lib'}",
                    "-o", str(tmp_path / "t")], check=True, capture_output=True, timeout=300)
    *encoded, data, verdict = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True, check=True,
                                             timeout=60).stdout.splitlines()
    assert verdict == "ok"
    expected = (struct.pack("<Q", 2) + struct.pack("<Q", 2) + b"ab" + struct.pack("<Q", 0)
                + struct.pack("<BBH", 2, 32, 1) + struct.pack("<ii", 1, 3)
                + struct.pack("<Qqq", 2, -1, 7) + struct.pack("<Q", 3) + b"xyz")
    assert bytes.fromhex(data) == expected
    assert encoded == [base64.b64encode(expected[:n]).decode() for n in range(6)]
