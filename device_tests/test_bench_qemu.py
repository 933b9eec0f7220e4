"""`autoglm bench ARTIFACT --device qemu`: an aarch64 (rpi4) artifact under qemu-aarch64-static, checked on the host.

Needs g++-aarch64-linux-gnu, qemu-user-static, cmake and the aarch64 TVM wheels (downloaded once into
~/.cache/autoglm/wheels); each test skips with the reason otherwise.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import targets
from toolkit import native

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import AUTOGLM, run_cli  # noqa: E402

pytestmark = pytest.mark.skipif(targets.host_arch() != "x86_64", reason="emulates aarch64 on an x86_64 host")


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not found: apt-get install {package}")


@pytest.fixture(scope="module")
def rpi4_convnet(tmp_path_factory) -> Path:
    for tool, package in (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("qemu-aarch64-static", "qemu-user-static"),
                          ("cmake", "cmake")):
        _need(tool, package)
    try:
        native.build_runtime("aarch64")
    except native.NativeRuntimeError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"aarch64 TVM wheels unavailable: {exc}")
        raise
    from toolkit.export import export_zoo_model

    work = tmp_path_factory.mktemp("bench-qemu")
    onnx = export_zoo_model("convnet", work / "convnet.onnx")
    run_cli("compile", onnx, "--target", "rpi4", "-o", work / "convnet-rpi4", check=True)
    return work / "convnet-rpi4"


def test_bench_under_qemu_is_emulated_and_matches_the_host(rpi4_convnet, tmp_path):
    db = tmp_path / "r.sqlite"
    proc = run_cli("bench", rpi4_convnet, "--device", "qemu", "--baseline", "onnxruntime", "--threads", "1,2",
                   "--repeat", "6", "--block", "3", "--warmup", "1", "--json", tmp_path / "q.json", "--db", db, check=True)
    doc = json.loads((tmp_path / "q.json").read_text())
    import jsonschema

    jsonschema.validate(doc, json.loads((Path(__file__).resolve().parent.parent / "docs" / "bench-schema.json").read_text()))
    assert doc["device"] == {"spec": "qemu", "kind": "qemu", "emulated": True} and doc["status"] == "completed"
    toolkit_rows = [r for r in doc["results"] if r["role"] == "toolkit"]
    assert [(r["runtime"], r["threads"], r["where"]) for r in toolkit_rows] == [
        ("autoglm-cpp", 1, "qemu-aarch64"), ("autoglm-cpp", 2, "qemu-aarch64")]
    for r in toolkit_rows:
        assert r["emulated"] is True and r["latency_ms"]["count"] == 6
        assert r["ratio_vs_baseline"] is None and "emulated" in r["ratio_note"]  # never compared with native timings
    assert all(r["where"] == "host" and not r["emulated"] for r in doc["results"] if r["role"] == "baseline")
    c = doc["correctness"]
    assert c["reference"] == "onnxruntime" and c["outputs_match"] is True and c["max_abs_error"] < 1e-4
    assert "EMULATED" in proc.stdout and "n/a (emulated)" in proc.stdout
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM measurements WHERE emulated = 1").fetchone()[0] == 2
    finally:
        conn.close()


def test_qemu_killed_mid_run_is_one_line(rpi4_convnet, tmp_path):
    import psutil

    db = tmp_path / "r.sqlite"
    proc = subprocess.Popen([str(AUTOGLM), "bench", str(rpi4_convnet), "--device", "qemu", "--threads", "1",
                             "--repeat", "1000000", "--block", "1000000", "--warmup", "0", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    pump = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    pump.start()
    try:
        qemu = None
        deadline = time.monotonic() + 180
        while qemu is None and time.monotonic() < deadline and proc.poll() is None:
            qemu = next((p for p in psutil.Process(proc.pid).children(recursive=True)
                         if "qemu-aarch64" in p.name()), None)
            time.sleep(0.1)
        assert qemu is not None, "".join(lines)
        time.sleep(1.0)
        qemu.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    pump.join(10)
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, "".join(lines)
    assert "under qemu" in errors[0] and "SIGKILL" in errors[0]
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("failed",)]
        assert conn.execute("SELECT count(*) FROM measurements").fetchone()[0] == 0
    finally:
        conn.close()
