"""CUDA artifacts run for real on an NVIDIA GPU through the C++ runner, matching onnxruntime.

Skips where there is no GPU. On a GPU machine without TVM's Python package, point it at
artifacts built elsewhere and a built runtime:
    AUTOGLM_CUDA_ARTIFACTS=dir1:dir2 AUTOGLM_RUNTIME_DIR=runtime-dir python -m pytest device_tests/test_cuda_gpu.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

HAS_GPU = Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU on this machine: run device_tests on a Jetson or GPU host")


def _artifacts(tmp_path_factory) -> list[Path]:
    given = os.environ.get("AUTOGLM_CUDA_ARTIFACTS")
    if given:
        return [Path(p) for p in given.split(os.pathsep) if p]
    from compile import compile_model
    from targets import load_target
    from toolkit.export import export_zoo_model

    target = load_target(os.environ.get("AUTOGLM_CUDA_TARGET", "nvidia-h100"))
    work = tmp_path_factory.mktemp("cuda")
    out = []
    for name in ("convnet", "transformer"):
        onnx_path = export_zoo_model(name, work / f"{name}.onnx")
        out.append(compile_model(onnx_path, target, work / f"{name}-{target.name}").artifact)
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> list[Path]:
    return _artifacts(tmp_path_factory)


@pytest.fixture(scope="module")
def runtime_dir() -> Path:
    given = os.environ.get("AUTOGLM_RUNTIME_DIR")
    if given:
        return Path(given)
    from toolkit.native import build_runtime

    return build_runtime()


def test_cuda_artifacts_match_onnxruntime(artifacts, runtime_dir):
    import onnxruntime as ort

    from compile import TensorSpec, random_inputs, read_manifest
    from toolkit.native import run_artifact

    for artifact in artifacts:
        manifest = read_manifest(artifact)
        assert manifest["target"]["device"] == "cuda"
        specs = [TensorSpec.from_json(s) for s in manifest["inputs"]]
        inputs = random_inputs(specs, seed=3)
        result = run_artifact(artifact, inputs, warmup=2, repeat=20, runtime_dir=runtime_dir)
        sess = ort.InferenceSession(str(artifact / "prepared.onnx"), providers=["CPUExecutionProvider"])
        expected = sess.run(None, inputs)
        for spec, ref in zip(manifest["outputs"], expected):
            got = result.outputs[spec["name"]]
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)
        assert result.latency_ms is not None and len(result.latencies_ms) == 20
        print(f"{artifact.name}: p50 {result.latency_ms['p50']:.3f} ms on GPU, outputs match onnxruntime")
