"""The Python runtime: load/run against onnxruntime, concurrent runs, and live swap under load."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from compile import UsageError, compile_model
from targets import load_target
from toolkit import runtime
from toolkit.export import export_zoo_model


def _ref(onnx_path, x):
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_load_and_run_matches_onnxruntime(host_artifact, convnet_onnx):
    m = runtime.load(host_artifact)
    assert [s.name for s in m.inputs] == ["x"] and m.outputs[0].shape == (1, 10)
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(m.run({"x": x})["y"], _ref(convnet_onnx, x), atol=1e-4, rtol=1e-3)
    with pytest.raises(UsageError, match="expects float32"):
        m.run({"x": x.astype(np.float64)})


def test_load_sizes_tvm_threads_from_the_artifact_unless_told(host_artifact):
    """Without TVM_NUM_THREADS TVM ran one thread through its pool (2.6x slower calls here): `load` sets it."""
    import json
    import os
    import subprocess
    import sys

    code = ("import os, sys; from toolkit import runtime; runtime.load(sys.argv[1]); print(os.environ['TVM_NUM_THREADS']); "
            "runtime.load(sys.argv[1], threads=1); print(os.environ['TVM_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    declared = json.loads((host_artifact / "manifest.json").read_text())["target"]["threads"]
    out = subprocess.run([sys.executable, "-c", code, str(host_artifact)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(declared), "1"]
    out = subprocess.run([sys.executable, "-c", code, str(host_artifact)], env={**env, "TVM_NUM_THREADS": "3"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "1"]  # the user's setting wins over the artifact's
    with pytest.raises(UsageError, match="threads is 0"):
        runtime.load(host_artifact, threads=0)


def test_concurrent_runs_are_independent(host_artifact, convnet_onnx):
    m = runtime.load(host_artifact)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(16)]
    expected = [_ref(convnet_onnx, x) for x in xs]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: m.run({"x": xs[i % 16]})["y"], range(400)))
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, expected[i % 16], atol=1e-4, rtol=1e-3)


@pytest.fixture(scope="module")
def second_version(model_dir, tmp_path_factory):
    """The same network with other weights (seed 1): same signature, different answers."""
    onnx_path = export_zoo_model("convnet", model_dir / "convnet-v2.onnx", seed=1)
    out = tmp_path_factory.mktemp("v2") / "convnet-v2"
    compile_model(onnx_path, load_target("host"), out)
    return onnx_path, out


def test_hot_swap_under_load_drops_nothing(host_artifact, convnet_onnx, second_version):
    v2_onnx, v2_artifact = second_version
    x = np.random.default_rng(11).standard_normal((1, 3, 32, 32)).astype(np.float32)
    old, new = _ref(convnet_onnx, x), _ref(v2_onnx, x)
    assert not np.allclose(old, new, atol=1e-3)

    m = runtime.load(host_artifact)
    total, swap_at = 2000, 600
    done = threading.Semaphore(0)
    answers: list[str] = []
    lock = threading.Lock()

    def request(i: int) -> str:
        y = m.run({"x": x})["y"]
        done.release()
        if np.allclose(y, old, atol=1e-4, rtol=1e-3):
            return "old"
        if np.allclose(y, new, atol=1e-4, rtol=1e-3):
            return "new"
        return "wrong"

    def swapper():
        for _ in range(swap_at):
            done.acquire()
        m.swap(v2_artifact)

    t = threading.Thread(target=swapper)
    t.start()
    with ThreadPoolExecutor(8) as pool:
        for a in pool.map(request, range(total)):
            with lock:
                answers.append(a)
    t.join()
    assert len(answers) == total and "wrong" not in answers
    assert answers.count("old") >= swap_at - 8 and answers.count("new") > 0
    assert m.path == v2_artifact
    np.testing.assert_allclose(m.run({"x": x})["y"], new, atol=1e-4, rtol=1e-3)


def test_swap_refuses_a_different_signature(host_artifact, tmp_path):
    onnx_path = export_zoo_model("transformer", tmp_path / "enc.onnx")
    other = compile_model(onnx_path, load_target("host"), tmp_path / "enc").artifact
    m = runtime.load(host_artifact)
    with pytest.raises(UsageError, match="inputs/outputs differ"):
        m.swap(other)
    assert m.path == host_artifact
