"""`autoglm bench` and `autoglm history` through the real CLI: host runs against onnxruntime, the Python
runtime, a loopback TVM RPC tracker + server, JSON/CSV/report outputs, the results database, and faults.

Timings are never asserted; the fields, the output checks and the database contents are.
"""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

import targets
from conftest import AUTOGLM, ROOT, assert_user_error, have, run_cli, wait_for_rpc_servers

pytestmark = pytest.mark.skipif(targets.host_arch() != "x86_64" or not have("cmake"),
                                reason="bench runs the C++ runner built for an x86_64 host (needs cmake, g++)")

SCHEMA_FILE = ROOT / "docs" / "bench-schema.json"
FAST = ("--repeat", "6", "--warmup", "1", "--block", "2")


def _validate(doc: dict) -> None:
    import jsonschema

    jsonschema.validate(doc, json.loads(SCHEMA_FILE.read_text()))


def _runs(db: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
    finally:
        conn.close()


def _measurements(db: Path, run_id: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM measurements WHERE run_id = ?", (run_id,)).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def host_bench(host_artifact, tmp_path_factory):
    """One real host run with the onnxruntime baseline at 1 and 2 threads, every output format, recorded."""
    out = tmp_path_factory.mktemp("bench-host")
    proc = run_cli("bench", host_artifact, "--baseline", "onnxruntime", "--threads", "1,2", *FAST, "--profile",
                   "--json", out / "bench.json", "--csv", out / "bench.csv", "--report", out / "report.html",
                   "--db", out / "results.sqlite", check=True)
    return out, proc, json.loads((out / "bench.json").read_text())


def test_host_bench_against_onnxruntime(host_bench):
    out, proc, doc = host_bench
    assert doc["schema"] == "autoglm-bench/1" and doc["status"] == "completed"
    assert doc["device"] == {"spec": "local", "kind": "local", "emulated": False}
    assert doc["baseline"]["runtime"] == "onnxruntime" and doc["baseline"]["model_origin"] == "prepared.onnx"
    assert [(r["runtime"], r["threads"]) for r in doc["results"]] == [
        ("autoglm-cpp", 1), ("onnxruntime", 1), ("autoglm-cpp", 2), ("onnxruntime", 2)]
    for r in doc["results"]:
        assert r["latency_ms"]["count"] == 6 and len(r["samples_ms"]) == 6
        for key in ("load_ms", "first_inference_ms", "throughput_per_s", "peak_rss_bytes"):
            assert r[key] is not None and r[key] > 0, key
        assert set(r["latency_ms"]) == {"count", "mean", "std", "min", "max", "p50", "p90", "p95", "p99"}
        if r["role"] == "toolkit":
            assert r["processes"] == 3  # 6 iterations in blocks of 2: one runner process per block
            assert set(r["ratio_vs_baseline"]) == {"p50", "mean"}
    a = doc["artifact"]
    assert a["planned_activation_bytes"] > 0 and a["weight_bytes"] > 0 and a["artifact_bytes"] > a["library_bytes"] > 0
    c = doc["correctness"]
    assert c["reference"] == "onnxruntime" and c["outputs_match"] is True and c["max_abs_error"] < 1e-4
    assert {(x["runtime"], x["threads"]) for x in c["comparisons"]} == {("autoglm-cpp", 1), ("autoglm-cpp", 2)}
    assert "outputs: match" in proc.stdout and "ratio p50" in proc.stdout


def test_json_matches_the_documented_schema(host_bench):
    _out, _proc, doc = host_bench
    _validate(doc)
    assert "autoglm-bench/1" in (ROOT / "docs" / "bench-schema.md").read_text()


def test_profile_has_every_kernel(host_bench, host_artifact):
    _out, _proc, doc = host_bench
    p = doc["profile"]
    kernels = json.loads((host_artifact / "manifest.json").read_text())["fusion"]["kernel_names"]
    assert {k["name"] for k in p["kernels"]} == set(kernels)
    assert abs(sum(k["share"] for k in p["kernels"]) - 1) < 1e-6


def test_csv_rows(host_bench):
    out, _proc, doc = host_bench
    rows = list(csv.DictReader((out / "bench.csv").open()))
    results = [r for r in rows if r["record"] == "result"]
    kernels = [r for r in rows if r["record"] == "kernel"]
    assert {r["schema"] for r in rows} == {"autoglm-bench-csv/1"}
    assert [(r["runtime"], r["threads"]) for r in results] == [(x["runtime"], str(x["threads"])) for x in doc["results"]]
    assert all(float(r["p50_ms"]) > 0 and int(r["peak_rss_bytes"]) > 0 for r in results)
    assert all(r["ratio_p50"] for r in results if r["role"] == "toolkit")
    assert len(kernels) == len(doc["profile"]["kernels"])


def test_html_report_embeds_plots(host_bench):
    out, _proc, doc = host_bench
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # latency CDF, kernel profile
    assert doc["run_id"] in html and "onnxruntime" in html


def test_markdown_report_writes_side_images(host_artifact, tmp_path):
    report = tmp_path / "r" / "report.md"
    run_cli("bench", host_artifact, *FAST, "--report", report, "--no-db", check=True)
    text = report.read_text()
    images = sorted((tmp_path / "r" / "report_files").iterdir())
    assert [p.name for p in images] == ["latency_cdf.png"]
    assert "](report_files/latency_cdf.png)" in text and images[0].read_bytes()[:4] == b"\x89PNG"


def test_run_is_recorded_in_one_row_with_its_measurements(host_bench):
    out, _proc, doc = host_bench
    (run,) = _runs(out / "results.sqlite")
    assert run["run_id"] == doc["run_id"] and run["status"] == "completed" and run["outputs_match"] == 1
    ms = _measurements(out / "results.sqlite", run["run_id"])
    assert sorted((m["runtime"], m["threads"]) for m in ms) == sorted((r["runtime"], r["threads"]) for r in doc["results"])
    assert json.loads(run["document"])["run_id"] == doc["run_id"]


def test_python_runtime(host_artifact, tmp_path):
    proc = run_cli("bench", host_artifact, "--python", "--threads", "1", *FAST, "--json", "-",
                   env={"AUTOGLM_RESULTS_DB": str(tmp_path / "env.sqlite")}, check=True)
    doc = json.loads(proc.stdout)
    _validate(doc)
    (r,) = doc["results"]
    assert r["runtime"] == "autoglm-python" and r["processes"] == 1 and r["peak_rss_bytes"] > r["rss_before_load_bytes"] > 0
    # no --baseline: the outputs are still checked, against onnxruntime on the artifact's prepared.onnx
    assert doc["baseline"] is None and doc["correctness"]["reference"] == "onnxruntime"
    assert doc["correctness"]["outputs_match"] is True
    assert [x["run_id"] for x in _runs(tmp_path / "env.sqlite")] == [doc["run_id"]]  # $AUTOGLM_RESULTS_DB


def test_original_model_file_as_baseline(host_artifact, convnet_onnx, transformer_onnx, tmp_path):
    proc = run_cli("bench", host_artifact, "-b", "auto", "--model-file", convnet_onnx, "-t", "1", *FAST, "--json", "-",
                   "--no-db", check=True)
    doc = json.loads(proc.stdout)
    assert doc["baseline"]["model_origin"] == "model-file" and doc["baseline"]["model_file"] == str(convnet_onnx)
    bad = run_cli("bench", host_artifact, "-b", "onnxruntime", "--model-file", transformer_onnx, "--no-db")
    assert_user_error(bad, 2, "--model-file", "not the model")


def test_tflite_artifact_carries_its_model_for_litert(small_tflite, tmp_path):
    """A TFLite artifact ships source.tflite: the LiteRT baseline and the output check need no --model-file,
    and the artifact's copy must really be the model (an edited copy is refused by the checksums)."""
    art = tmp_path / "cnn-host"
    run_cli("compile", small_tflite, "-o", art, check=True)
    assert (art / "source.tflite").read_bytes() == small_tflite.read_bytes()
    db = tmp_path / "r.sqlite"
    proc = run_cli("bench", art, "--baseline", "litert", "-t", "1", *FAST, "--json", "-", "--db", db, check=True)
    doc = json.loads(proc.stdout)
    _validate(doc)
    assert [r["runtime"] for r in doc["results"]] == ["autoglm-cpp", "litert"] and doc["correctness"]["outputs_match"]
    assert doc["baseline"]["model_origin"] == "artifact-source"
    proc = run_cli("bench", art, "--baseline", "litert", "--model-file", small_tflite, "-t", "1", *FAST, "--json", "-",
                   "--db", db, check=True)
    assert json.loads(proc.stdout)["baseline"]["model_origin"] == "model-file"


@pytest.mark.parametrize("args, code, fragment", [
    (("--device", "rpc://10.0.0.5:9190/rpi4"), 2, "loopback"),
    (("--device", "rpc://127.0.0.1/rpi4"), 2, "rpc://HOST:PORT/KEY"),
    (("--device", "board"), 2, "local, qemu or rpc://"),
    (("--threads", "0"), 2, "--threads"),
    (("--baseline", "litert"), 2, "--baseline onnxruntime"),
    (("--python", "--device", "qemu"), 2, "--python"),
    (("--device", "qemu"), 2, "--device local"),
    (("--report", "r.pdf"), 2, ".md or .html"),
    (("--profile", "--device", "rpc://127.0.0.1:9/k"), 2, "--profile"),
])
def test_bad_flags(host_artifact, tmp_path, args, code, fragment):
    db = tmp_path / "r.sqlite"
    proc = run_cli("bench", host_artifact, *args, "--db", db)
    assert_user_error(proc, code, fragment)
    assert not db.exists() or not _runs(db)


def test_history_flags_a_slower_median(tmp_path):
    from toolkit.bench import db as results_db

    db = tmp_path / "h.sqlite"
    common = dict(model_name="mbv2", model_sha256="a" * 64, target="host", device="local", runtime="autoglm-cpp", threads=1)
    results_db.insert_measurement_run(db, run_id="1" * 32, started_utc="2026-01-01T00:00:00+00:00", p50_ms=10.0, **common)
    results_db.insert_measurement_run(db, run_id="2" * 32, started_utc="2026-01-02T00:00:00+00:00", p50_ms=10.5, **common)
    results_db.insert_measurement_run(db, run_id="3" * 32, started_utc="2026-01-03T00:00:00+00:00", p50_ms=12.0, **common)
    # not comparable with the runs above: other threads, other model version
    results_db.insert_measurement_run(db, run_id="4" * 32, started_utc="2026-01-04T00:00:00+00:00", p50_ms=50.0,
                                      **{**common, "threads": 2})
    results_db.insert_measurement_run(db, run_id="5" * 32, started_utc="2026-01-05T00:00:00+00:00", p50_ms=90.0,
                                      **{**common, "model_sha256": "b" * 64})
    doc = json.loads(run_cli("history", "--db", db, "--json", check=True).stdout)
    flags = {r["run_id"][0]: (r["regression"], r["change"]) for r in doc["rows"]}
    assert flags["1"] == (False, None) and flags["2"][0] is False and flags["3"][0] is True
    assert abs(flags["3"][1] - (12.0 / 10.5 - 1)) < 1e-9
    assert flags["4"] == (False, None) and flags["5"] == (False, None) and doc["regressions"] == 1
    table = run_cli("history", "--db", db, "--model", "mbv2", check=True).stdout
    assert "REGRESSION" in table and "+14.3%" in table
    assert "REGRESSION" not in run_cli("history", "--db", db, "--threshold", "20%", check=True).stdout
    strict = run_cli("history", "--db", db, "--fail-on-regression")
    assert strict.returncode == 1
    assert "no runs recorded" in run_cli("history", "--db", db, "--model", "resnet18", check=True).stdout
    assert_user_error(run_cli("history", "--db", tmp_path / "missing.sqlite"), 2, "does not exist")


def test_history_lists_real_runs(host_bench):
    out, _proc, doc = host_bench
    hist = json.loads(run_cli("history", "--db", out / "results.sqlite", "--model", "convnet", "--json", check=True).stdout)
    assert {r["run_id"] for r in hist["rows"]} == {doc["run_id"]}
    assert {(r["runtime"], r["threads"]) for r in hist["rows"]} == {(x["runtime"], x["threads"]) for x in doc["results"]}


def test_corrupt_database_is_refused_not_overwritten(host_artifact, tmp_path):
    db = tmp_path / "not-a-db.sqlite"
    db.write_bytes(b"this is not sqlite" * 100)
    proc = run_cli("bench", host_artifact, *FAST, "--db", db)
    assert_user_error(proc, 2, "not a usable results database")
    assert db.read_bytes() == b"this is not sqlite" * 100


# --- TVM RPC on loopback ------------------------------------------------------------------------

def test_bench_over_rpc_fleet(host_artifact, rpc_tracker, tmp_path):
    port, add_server = rpc_tracker
    add_server("bench-test")
    add_server("bench-test")
    wait_for_rpc_servers(port, "bench-test", 2)
    db = tmp_path / "r.sqlite"
    proc = run_cli("bench", host_artifact, "--device", f"rpc://127.0.0.1:{port}/bench-test", "--baseline", "onnxruntime",
                   "--threads", "1", "--repeat", "8", "--block", "4", "--warmup", "1", "--json", tmp_path / "rpc.json",
                   "--db", db, check=True)
    doc = json.loads((tmp_path / "rpc.json").read_text())
    _validate(doc)
    tk, base = doc["results"]
    assert tk["runtime"] == "autoglm-rpc" and tk["where"] == f"rpc://127.0.0.1:{port}/bench-test"
    assert tk["processes"] == 2 and tk["latency_ms"]["count"] == 8 and any("fleet of 2" in n for n in tk["notes"])
    assert tk["ratio_vs_baseline"] is None and "not comparable" in tk["ratio_note"]  # the baseline ran here, not there
    assert base["runtime"] == "onnxruntime"
    (cmp,) = doc["correctness"]["comparisons"]
    assert cmp["output_sets"] == 2 and cmp["passed"]  # every server's outputs were checked
    assert "autoglm-rpc" in proc.stdout
    assert [r["status"] for r in _runs(db)] == ["completed"]


def test_rpc_with_no_server_under_the_key(host_artifact, rpc_tracker, tmp_path):
    port, _add = rpc_tracker
    wait_for_rpc_servers(port, "none", 0)
    proc = run_cli("bench", host_artifact, "--device", f"rpc://127.0.0.1:{port}/rpi4", *FAST, "--db", tmp_path / "r.sqlite")
    assert_user_error(proc, 1, "no RPC server is registered under key 'rpi4'", "--host 127.0.0.1")


def _start_bench(*args) -> tuple[subprocess.Popen, list[str], threading.Event, threading.Thread]:
    """`autoglm bench` in the background; its stderr lines are collected, `seen` is set on a progress line."""
    proc = subprocess.Popen([str(AUTOGLM), "bench", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    seen = threading.Event()

    def pump():
        for line in proc.stderr:
            lines.append(line)
            if "timed" in line or "starting autoglm-cpp" in line:
                seen.set()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return proc, lines, seen, t


def _assert_failed_run_recorded(db: Path) -> None:
    runs = _runs(db)
    assert [r["status"] for r in runs] == ["failed"], [dict(r) for r in runs]
    assert runs[0]["error"] and not _measurements(db, runs[0]["run_id"])
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_rpc_server_killed_mid_run(host_artifact, rpc_tracker, tmp_path):
    port, add_server = rpc_tracker
    server = add_server("doomed")
    wait_for_rpc_servers(port, "doomed", 1)
    db = tmp_path / "r.sqlite"
    proc, lines, seen, pump = _start_bench(host_artifact, "--device", f"rpc://127.0.0.1:{port}/doomed", "--threads", "1",
                                           "--repeat", "100000", "--block", "1000", "--warmup", "1", "--db", db)
    try:
        assert seen.wait(120), "".join(lines)
        server.kill()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    pump.join(10)
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, "".join(lines)
    assert "RPC session" in errors[0] and "discarded" in errors[0] and "Traceback" not in "".join(lines)
    _assert_failed_run_recorded(db)


def test_runner_killed_mid_run(host_artifact, tmp_path):
    import psutil

    db = tmp_path / "r.sqlite"
    proc, lines, seen, pump = _start_bench(host_artifact, "--threads", "1", "--repeat", "2000000", "--block", "1000000",
                                           "--warmup", "0", "--db", db, "--json", tmp_path / "b.json")
    try:
        assert seen.wait(120), "".join(lines)
        runner = None
        deadline = time.monotonic() + 60
        while runner is None and time.monotonic() < deadline:
            runner = next((p for p in psutil.Process(proc.pid).children(recursive=True)
                           if p.name() == "autoglm-runner"), None)
            time.sleep(0.05)
        assert runner is not None, "no autoglm-runner child appeared"
        time.sleep(0.5)
        runner.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    pump.join(10)
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, "".join(lines)
    assert "SIGKILL" in errors[0] and "discarded" in errors[0]
    assert not (tmp_path / "b.json").exists()
    _assert_failed_run_recorded(db)
