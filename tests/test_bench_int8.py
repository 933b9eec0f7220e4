"""`autoglm bench` on int8 artifacts through the real CLI: with the float model it was quantized from
(`--model-file`), onnxruntime times the QDQ model and the fp32 model in the same interleaved run.

Timings are never asserted; the rows, the ratios' consistency with the medians, the output checks and
what is recorded are.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from pathlib import Path

import pytest
import torch
from torch import nn

import targets
from conftest import ROOT, assert_user_error, have, run_cli

pytestmark = pytest.mark.skipif(targets.host_arch() != "x86_64" or not have("cmake"),
                                reason="bench runs the C++ runner built for an x86_64 host (needs cmake, g++)")

FAST = ("--repeat", "4", "--warmup", "1", "--block", "2")
LITERAL = "onnxruntime (QDQ graph as written)"


class _TinyNet(nn.Module):
    """A few convs and a classifier on 8x8 inputs: every one becomes an integer kernel with --int8."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def _export(seed: int, path: Path) -> Path:
    from toolkit.export import export_onnx

    torch.manual_seed(seed)
    return export_onnx(_TinyNet().eval(), torch.randn(1, 1, 8, 8), path)


@pytest.fixture(scope="module")
def int8_art(tmp_path_factory) -> dict[str, Path]:
    """A float ONNX model, another float model (not it), and its `compile --int8` artifact."""
    root = tmp_path_factory.mktemp("bench-int8")
    float_onnx = _export(0, root / "tiny.onnx")
    art = root / "tiny-int8"
    # random calibration: the speed and the output checks do not depend on it, and it skips the accuracy gate
    run_cli("compile", float_onnx, "-o", art, "--int8", "--calibration-random", "8", check=True)
    return {"float": float_onnx, "other": _export(1, root / "other.onnx"), "art": art, "root": root}


def _validate(doc: dict) -> None:
    import jsonschema

    jsonschema.validate(doc, json.loads((ROOT / "docs" / "bench-schema.json").read_text()))


def _rows(db: Path, sql: str, *args) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def three_way(int8_art):
    """One run at 1 and 2 threads with the float model: JSON on stdout, CSV, Markdown report, database."""
    out = int8_art["root"] / "three-way"
    proc = run_cli("bench", int8_art["art"], "--baseline", "onnxruntime", "--model-file", int8_art["float"],
                   "--threads", "1,2", *FAST, "--json", "-", "--csv", out / "b.csv", "--report", out / "r.md",
                   "--db", out / "r.sqlite", check=True)
    return out, json.loads(proc.stdout)


def test_three_runtimes_per_thread_count(three_way, int8_art):
    _out, doc = three_way
    _validate(doc)
    assert doc["status"] == "completed" and doc["schema"] == "autoglm-bench/1"
    assert [(r["runtime"], r["role"], r["threads"]) for r in doc["results"]] == [
        ("autoglm-cpp", "toolkit", 1), ("onnxruntime", "baseline", 1), ("onnxruntime fp32", "baseline-fp32", 1),
        ("autoglm-cpp", "toolkit", 2), ("onnxruntime", "baseline", 2), ("onnxruntime fp32", "baseline-fp32", 2)]
    assert all(r["latency_ms"]["count"] == 4 and r["peak_rss_bytes"] > 0 for r in doc["results"])
    b = doc["baseline"]
    assert b["runtime"] == "onnxruntime" and b["model_origin"] == "prepared.onnx"  # the QDQ model, not the float one
    assert b["fp32"]["runtime"] == "onnxruntime fp32" and b["fp32"]["model_file"] == str(int8_art["float"])
    assert b["fp32"]["model_origin"] == "model-file"
    assert not doc["notes"]


def test_both_ratios_follow_from_the_medians(three_way):
    _out, doc = three_way
    stat = {(r["role"], r["threads"]): r["latency_ms"] for r in doc["results"]}
    for tk in (r for r in doc["results"] if r["role"] == "toolkit"):
        t = tk["threads"]
        for key, role in (("ratio_vs_baseline", "baseline"), ("ratio_vs_fp32_baseline", "baseline-fp32")):
            for s in ("p50", "mean"):
                assert math.isclose(tk[key][s], tk["latency_ms"][s] / stat[(role, t)][s], rel_tol=1e-9), (key, s, t)
    assert all(r["ratio_vs_baseline"] is None and r["ratio_vs_fp32_baseline"] is None
               for r in doc["results"] if r["role"] != "toolkit")


def test_toolkit_checked_against_the_qdq_graph_and_fp32_only_recorded(three_way):
    """The output check is the toolkit against the artifact's QDQ graph; the float model's outputs only
    record how far int8 is from fp32, and a deviation beyond the fp32 tolerance does not fail the run."""
    _out, doc = three_way
    c = doc["correctness"]
    assert c["outputs_match"] is True and c["reference"] == "onnxruntime"
    assert [(x["runtime"], x["threads"], x["against"]) for x in c["comparisons"]] == [
        ("autoglm-cpp", 1, LITERAL), ("autoglm-cpp", 2, LITERAL)]
    assert all(x["passed"] and x["atol"] > 1e-4 for x in c["comparisons"])  # output steps, not the fp32 tolerance
    dev = c["int8_vs_fp32"]
    assert [(d["runtime"], d["threads"], d["against"]) for d in dev] == [
        ("autoglm-cpp", 1, "onnxruntime fp32"), ("onnxruntime", 1, "onnxruntime fp32"),
        ("autoglm-cpp", 2, "onnxruntime fp32"), ("onnxruntime", 2, "onnxruntime fp32")]
    for d in dev:
        assert d["argmax_rows"] == 1 and 0 <= d["argmax_agreement"] <= 1 and 0 <= d["max_abs_error"] < 1
    # int8 is about a quantization step from fp32 here: more than --atol would allow, yet the run completed
    assert max(d["max_abs_error"] for d in dev) > doc["settings"]["atol"]


def test_table_csv_report_and_database_carry_the_fp32_rows(three_way):
    from rich.console import Console

    from toolkit.bench.table import print_run

    out, doc = three_way
    tk1 = doc["results"][0]
    console = Console(record=True, width=260, force_terminal=False)
    print_run(console, doc)
    text = console.export_text()
    assert "onnxruntime fp32 (baseline)" in text and "vs fp32 p50" in text
    summary = (f"ratios (p50) at 1 thread: autoglm-cpp int8 / onnxruntime int8 {tk1['ratio_vs_baseline']['p50']:.2f}x; "
               f"autoglm-cpp int8 / onnxruntime fp32 {tk1['ratio_vs_fp32_baseline']['p50']:.2f}x")
    assert summary in text and "int8 vs fp32 (recorded, not checked)" in text

    rows = [r for r in csv.DictReader((out / "b.csv").open()) if r["record"] == "result"]
    assert [(r["runtime"], r["role"], int(r["threads"])) for r in rows] == [
        (x["runtime"], x["role"], x["threads"]) for x in doc["results"]]
    for r, x in zip(rows, doc["results"]):
        if x["role"] == "toolkit":
            assert math.isclose(float(r["ratio_fp32_p50"]), x["ratio_vs_fp32_baseline"]["p50"], rel_tol=1e-9)
            assert math.isclose(float(r["ratio_p50"]), x["ratio_vs_baseline"]["p50"], rel_tol=1e-9)
        else:
            assert r["ratio_fp32_p50"] == "" and r["ratio_p50"] == ""

    report = (out / "r.md").read_text()
    assert "onnxruntime fp32 (baseline)" in report and summary[1:] in report  # facts start with a capital

    (run,) = _rows(out / "r.sqlite", "SELECT * FROM runs")
    assert run["run_id"] == doc["run_id"] and run["status"] == "completed"
    ms = _rows(out / "r.sqlite", "SELECT runtime, role, threads, ratio_p50 FROM measurements WHERE run_id = ?",
               doc["run_id"])
    assert sorted((m["runtime"], m["role"], m["threads"]) for m in ms) == sorted(
        (x["runtime"], x["role"], x["threads"]) for x in doc["results"])
    assert json.loads(run["document"])["results"][0]["ratio_vs_fp32_baseline"] == tk1["ratio_vs_fp32_baseline"]


def test_without_the_float_model_a_note_says_what_to_pass(int8_art):
    proc = run_cli("bench", int8_art["art"], "-b", "auto", "-t", "1", *FAST, "--json", "-", "--no-db", check=True)
    doc = json.loads(proc.stdout)
    _validate(doc)
    assert [r["runtime"] for r in doc["results"]] == ["autoglm-cpp", "onnxruntime"]
    assert doc["baseline"]["fp32"] is None and doc["correctness"]["int8_vs_fp32"] is None
    assert doc["results"][0]["ratio_vs_fp32_baseline"] is None
    assert doc["notes"] == [f"pass --model-file {int8_art['float'].name} (the float model) to time onnxruntime fp32 "
                            f"in the same run"]


def test_float_model_without_a_baseline_still_checks_the_qdq_graph(int8_art):
    """Before, --model-file made the float model the reference and the int8 artifact 'differed' from it."""
    proc = run_cli("bench", int8_art["art"], "--model-file", int8_art["float"], "-t", "1", *FAST, "--json", "-",
                   "--no-db", check=True)
    doc = json.loads(proc.stdout)
    assert doc["status"] == "completed" and [r["runtime"] for r in doc["results"]] == ["autoglm-cpp"]
    (cmp,) = doc["correctness"]["comparisons"]
    assert cmp["against"] == LITERAL and cmp["passed"]
    assert any("timed only with --baseline" in n for n in doc["notes"])


@pytest.mark.parametrize("which, fragment", [("other", "is not the float model"),
                                             ("quantized", "is this artifact's quantized model")])
def test_model_file_that_is_not_the_float_model(int8_art, tmp_path, which, fragment):
    """One line, exit 2, nothing measured, recorded or written."""
    model = int8_art["other"] if which == "other" else tmp_path / "copy.onnx"
    if which == "quantized":
        model.write_bytes((int8_art["art"] / "quantized.onnx").read_bytes())
    db, js = tmp_path / "r.sqlite", tmp_path / "b.json"
    proc = run_cli("bench", int8_art["art"], "-b", "onnxruntime", "--model-file", model, "-t", "1", *FAST,
                   "--db", db, "--json", js)
    assert_user_error(proc, 2, "--model-file", fragment, int8_art["float"].name)
    assert not js.exists()
    assert not db.exists() or not _rows(db, "SELECT * FROM runs")


def test_qdq_model_quantized_elsewhere_is_its_own_model_file(int8_art, tmp_path):
    """No float model there: --model-file is the QDQ file itself, timed and checked as written."""
    qdq = tmp_path / "tiny_int8.onnx"
    qdq.write_bytes((int8_art["art"] / "quantized.onnx").read_bytes())
    art = tmp_path / "q"
    run_cli("compile", qdq, "-o", art, check=True)
    proc = run_cli("bench", art, "-b", "onnxruntime", "--model-file", qdq, "-t", "1", *FAST, "--json", "-", "--no-db",
                   check=True)
    doc = json.loads(proc.stdout)
    _validate(doc)
    assert [r["runtime"] for r in doc["results"]] == ["autoglm-cpp", "onnxruntime"] and not doc["notes"]
    assert doc["baseline"]["model_origin"] == "model-file" and doc["baseline"]["fp32"] is None
    (cmp,) = doc["correctness"]["comparisons"]
    assert cmp["against"] == LITERAL and cmp["passed"] and cmp["atol"] > 1e-4
    bad = run_cli("bench", art, "-b", "onnxruntime", "--model-file", int8_art["float"], "-t", "1", "--no-db")
    assert_user_error(bad, 2, "--model-file", "not the model")


def test_tflite_int8_with_its_float_model(small_tflite, tmp_path):
    """compile --int8 on a float .tflite: LiteRT times the artifact's full-integer source.tflite and the float
    model in the same run; the outputs are checked against the QDQ graph of the full-integer model (what the
    artifact computes, as compile verified it), not the float one."""
    art = tmp_path / "t8"
    run_cli("compile", small_tflite, "-o", art, "--int8", "--calibration-random", "8", check=True)
    proc = run_cli("bench", art, "-b", "litert", "--model-file", small_tflite, "-t", "1", *FAST, "--json", "-",
                   "--no-db", check=True)
    doc = json.loads(proc.stdout)
    _validate(doc)
    assert doc["status"] == "completed"
    assert [(r["runtime"], r["role"]) for r in doc["results"]] == [
        ("autoglm-cpp", "toolkit"), ("litert", "baseline"), ("litert fp32", "baseline-fp32")]
    assert doc["baseline"]["model_origin"] == "artifact-source" and doc["baseline"]["fp32"]["runtime"] == "litert fp32"
    (cmp,) = doc["correctness"]["comparisons"]
    assert cmp["against"] == "onnxruntime (QDQ graph as written)" and cmp["passed"]
    tk = doc["results"][0]
    assert math.isclose(tk["ratio_vs_fp32_baseline"]["p50"],
                        tk["latency_ms"]["p50"] / doc["results"][2]["latency_ms"]["p50"], rel_tol=1e-9)
    assert [d["against"] for d in doc["correctness"]["int8_vs_fp32"]] == ["litert fp32", "litert fp32"]
