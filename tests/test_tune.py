"""`autoglm tune` and `compile --tuning-db` through the real CLI, with tiny budgets.

The models are small MLPs (one fused matmul kernel per layer) so each tuning run takes seconds.
Nothing here asserts a timing: only what was measured, reused, kept and applied.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import AUTOGLM, assert_user_error, free_port, run_cli, wait_for_rpc_servers

RECORDS = "database_tuning_record.json"
WORKLOADS = "database_workload.json"


def make_mlp(path: Path, sizes: tuple[int, ...], seed: int = 0) -> Path:
    """An ONNX MLP: MatMul+Add(+Relu) per layer, i.e. one fused kernel (tuning task) per layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal((b,)).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        cur = f"a{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [1, sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def tune(*args, check: bool = True, timeout: int = 300) -> dict:
    proc = run_cli("tune", *args, "--json", "--quiet", check=check, timeout=timeout)
    return json.loads(proc.stdout)


def record_lines(db: Path) -> list[str]:
    return [ln for ln in (db / RECORDS).read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    return make_mlp(tmp_path_factory.mktemp("tune-models") / "mlp.onnx", (64, 128, 32))


@pytest.fixture(scope="module")
def tuned(mlp, tmp_path_factory) -> tuple[Path, dict]:
    db = tmp_path_factory.mktemp("tune") / "db"
    # 2 trials for 2 kernels: one search round each (each round costs seconds: a search and a cost-model fit)
    summary = tune(mlp, "--target", "host", "--trials", "2", "--batch", "2", "--db", db)
    return db, summary


def test_tune_writes_a_database(tuned):
    db, s = tuned
    assert s["tasks_total"] == 2 and s["tasks_tuned"] == 2 and s["tasks_reused"] == 0
    assert s["trials_measured"] >= 2 and s["default_measurements"] == 2
    assert len(record_lines(db)) == s["records_in_db"] >= 2
    meta = json.loads((db / "autoglm-db.json").read_text())
    assert meta["target"] == "host"
    events = [json.loads(ln) for ln in (db / "autoglm-tasks.jsonl").read_text().splitlines()]
    assert sorted(e["task"] for e in events if e["event"] == "done") == sorted(t["name"] for t in s["tasks"])
    for t in s["tasks"]:
        assert t["status"] == "tuned" and t["trials"] >= 1 and t["records"] >= 1
        assert t["default_rule"] is None or t["default_rule"].startswith("matmul")


def test_second_run_measures_nothing(tuned, mlp):
    db, first = tuned
    before = record_lines(db)
    s = tune(mlp, "--target", "host", "--trials", "2", "--batch", "2", "--db", db)
    assert s["tasks_tuned"] == 0 and s["tasks_reused"] == 2
    assert s["trials_measured"] == 0 and s["default_measurements"] == 0
    assert record_lines(db) == before


def test_tuning_at_a_thread_count_keeps_its_own_database(tuned, mlp, tmp_path):
    """`--threads 1` measures in runner workers running one TVM thread (the count a 1-thread deployment runs
    at) and the database records it; a database of another thread count is refused, in one line."""
    import targets
    from compile import tuning_db

    host = targets.load_target("host")
    db = tmp_path / "db1"
    s = tune(mlp, "--target", "host", "--threads", "1", "--trials", "2", "--batch", "2", "--db", db)
    assert s["threads"] == 1 and s["measured_on"] == "local, 1 thread(s)" and s["tasks_tuned"] == 2
    assert json.loads((db / "autoglm-db.json").read_text())["threads"] == 1
    assert json.loads((tuned[0] / "autoglm-db.json").read_text())["threads"] == host.threads == tuned[1]["threads"]
    if host.threads != 1:
        proc = run_cli("tune", mlp, "--target", "host", "--threads", "1", "--trials", "2", "--db", tuned[0])
        assert_user_error(proc, 2, f"measured at {host.threads} thread(s), not 1")
        assert tuning_db.default_db_dir(host, 1).name == "host-1t" and tuning_db.default_db_dir(host).name == "host"
    assert_user_error(run_cli("tune", mlp, "--threads", "0", "--trials", "2", "--db", tmp_path / "db0"), 2, "--threads 0")


def test_records_are_reused_across_models(tuned, tmp_path):
    """A second model sharing the first layer (same workload) measures only its new kernel."""
    db = tmp_path / "db"
    shutil.copytree(tuned[0], db)
    other = make_mlp(tmp_path / "other.onnx", (64, 128, 16), seed=3)  # same layer-1 shapes, other weights
    s = tune(other, "--target", "host", "--trials", "2", "--batch", "2", "--db", db)
    status = {t["name"]: t["status"] for t in s["tasks"]}
    assert sorted(status.values()) == ["reused", "tuned"], status
    assert s["default_measurements"] == 1


def test_compile_applies_the_records(tuned, mlp, tmp_path):
    db, s = tuned
    out = tmp_path / "art"
    proc = run_cli("compile", mlp, "--target", "host", "--tuning-db", db, "-o", out, check=True)
    m = json.loads((out / "manifest.json").read_text())
    assert m["verification"]["passed"] is True
    tun = m["tuning"]
    assert tun["database"] == str(db.resolve())
    assert set(tun["kernels"]) == set(m["fusion"]["kernel_names"])
    assert all(v == "tuned" or v == "none" or v.startswith("default:") for v in tun["kernels"].values())
    # a record is applied exactly where it measured faster than the default schedule
    faster = sum(1 for t in s["tasks"] if t["best_ms"] is not None and (t["default_ms"] is None or t["best_ms"] < t["default_ms"]))
    assert tun["records_applied"] == faster == sum(v == "tuned" for v in tun["kernels"].values())
    assert f"{faster} tuned kernels" in proc.stdout


def test_compile_applies_records_without_baselines(tuned, mlp, tmp_path):
    """With no default-schedule latency known (records from elsewhere), every kernel with a record is tuned."""
    db = tmp_path / "db"
    shutil.copytree(tuned[0], db)
    (db / "autoglm-tasks.jsonl").unlink()
    out = tmp_path / "art"
    run_cli("compile", mlp, "--tuning-db", db, "-o", out, check=True)
    m = json.loads((out / "manifest.json").read_text())
    assert m["verification"]["passed"] is True
    assert m["tuning"]["records_applied"] == 2
    assert set(m["tuning"]["kernels"].values()) == {"tuned"}
    assert {r["schedule"] for r in m["fusion"]["kernel_table"]} == {"tuned"}  # the fusion report agrees


def test_interrupted_run_resumes(tmp_path):
    model = make_mlp(tmp_path / "mlp3.onnx", (32, 96, 48, 24), seed=1)
    db = tmp_path / "db"
    # 3 trials for 3 kernels: one search round each. The run is killed as soon as its first record is written
    # (that kernel not marked done, two kernels not started); the resumed run has to finish all three.
    cmd = [str(AUTOGLM), "tune", str(model), "--trials", "3", "--batch", "2", "--db", str(db), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (db / RECORDS).exists() and record_lines(db):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = record_lines(db)
    assert kept
    # a kill in the middle of an append leaves half a line: the next run must cope with it
    with open(db / RECORDS, "a") as f:
        f.write(kept[-1][: len(kept[-1]) // 2])
    s = tune(model, "--trials", "3", "--batch", "2", "--db", db)
    assert s["repaired_lines"] >= 1
    after = record_lines(db)
    for line in kept:
        assert line in after
    assert s["records_in_db"] == len(after) >= len(kept)
    assert s["tasks_reused"] + s["tasks_tuned"] == s["tasks_total"] == 3
    assert all(t["status"] in ("reused", "tuned", "resumed") for t in s["tasks"])
    # finished now: a third run measures nothing
    again = tune(model, "--trials", "3", "--batch", "2", "--db", db)
    assert again["trials_measured"] == 0 and again["tasks_reused"] == 3


def test_time_budget(tmp_path):
    model = make_mlp(tmp_path / "one.onnx", (48, 24), seed=4)
    # the budget is the search's (import and default measurements come first): its first batch always runs
    s = tune(model, "--budget", "5s", "--batch", "2", "--db", tmp_path / "db")
    assert s["budget"] == "5 s" and s["tasks_tuned"] == 1 and s["trials_measured"] >= 2


@pytest.fixture
def loopback_rpc(rpc_tracker) -> int:
    """The port of a loopback tracker with one RPC server registered under key 'loopback'."""
    port, add_server = rpc_tracker
    add_server("loopback")
    wait_for_rpc_servers(port, "loopback", 1)
    return port


def test_rpc_runner_records_measurements(loopback_rpc, tmp_path):
    model = make_mlp(tmp_path / "one.onnx", (64, 32), seed=2)
    db = tmp_path / "db"
    s = tune(model, "--trials", "2", "--batch", "2", "--db", db, "--rpc", f"127.0.0.1:{loopback_rpc}/loopback")
    assert s["measured_on"] == f"rpc 127.0.0.1:{loopback_rpc}/loopback"
    assert s["tasks_total"] == 1 and s["trials_measured"] >= 1
    (task,) = s["tasks"]
    assert task["best_ms"] is not None and task["default_ms"] is not None
    assert len(record_lines(db)) >= 1


# ---- errors: one line, the right exit code, nothing written ---------------------------------------

def test_bad_budget(mlp, tmp_path):
    db = tmp_path / "db"
    assert_user_error(run_cli("tune", mlp, "--budget", "soon", "--db", db), 2, "--budget", "15m")
    assert not db.exists()


def test_missing_budget(mlp, tmp_path):
    db = tmp_path / "db"
    assert_user_error(run_cli("tune", mlp, "--db", db), 2, "--trials")
    assert not db.exists()


def test_unknown_target(mlp, tmp_path):
    db = tmp_path / "db"
    assert_user_error(run_cli("tune", mlp, "--target", "rpi9", "--trials", "2", "--db", db), 2, "unknown target")
    assert not db.exists()


def test_db_not_writable(mlp, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run_cli("tune", mlp, "--trials", "2", "--db", blocker / "db"), 2, "tuning database", "--db")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            assert_user_error(run_cli("tune", mlp, "--trials", "2", "--db", ro / "db"), 2, "not writable")
            assert not (ro / "db").exists()
        finally:
            ro.chmod(0o755)


def test_rpc_tracker_unreachable(mlp, tmp_path):
    db = tmp_path / "db"
    port = free_port()
    line = assert_user_error(run_cli("tune", mlp, "--trials", "2", "--db", db, "--rpc", f"127.0.0.1:{port}/x"), 1,
                             "RPC tracker", "unreachable")
    assert str(port) in line
    assert not db.exists()


def test_bad_rpc_spec(mlp, tmp_path):
    assert_user_error(run_cli("tune", mlp, "--trials", "2", "--db", tmp_path / "db", "--rpc", "nohost"), 2, "HOST:PORT")


def test_cross_target_needs_rpc(mlp, tmp_path):
    assert_user_error(run_cli("tune", mlp, "--target", "rpi4", "--trials", "2", "--db", tmp_path / "db"), 2, "--rpc")


def test_compile_with_missing_db(mlp, tmp_path):
    out = tmp_path / "art"
    assert_user_error(run_cli("compile", mlp, "--tuning-db", tmp_path / "nope", "-o", out), 2, "does not exist", "autoglm tune")
    assert not out.exists()


def test_compile_refuses_db_of_another_target(tuned, mlp, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(tuned[0], db)
    meta = json.loads((db / "autoglm-db.json").read_text())
    meta.update(target="rpi4", tvm_target='{"kind":"llvm","mtriple":"aarch64-linux-gnu"}')
    (db / "autoglm-db.json").write_text(json.dumps(meta))
    out = tmp_path / "art"
    assert_user_error(run_cli("compile", mlp, "--tuning-db", db, "-o", out), 2, "rpi4")
    assert not out.exists()


def test_estimate_leaves_out_kernels_it_could_not_measure():
    """A kernel the runner could not time (an embedding gather fed random indices) is left out of both sums."""
    from compile.tune import TaskReport, TuneSummary

    s = TuneSummary("m", "host", "db", "local", "60 s")
    s.tasks = [TaskReport("matmul", "w1", 2, "tuned", "matmul-x86-avx2", 1.0, 0.5),
               TaskReport("conv", "w2", 1, "tuned", "conv2d-x86-avx2", 0.3, 0.4),
               TaskReport("take", "w3", 1, "tuned", "elementwise-x86-avx2", None, None)]
    assert s.unmeasured == ["take"]
    assert s.estimate_ms("default") == pytest.approx(2 * 1.0 + 0.3)
    assert s.estimate_ms("best") == pytest.approx(2 * 0.5 + 0.3)  # a slower tuned record is not used
    assert s.to_json()["estimated_kernel_ms"]["unmeasured_kernels"] == ["take"]
    s.tasks = s.tasks[2:]
    assert s.estimate_ms("default") is None


class _ConvBlock(__import__("torch").nn.Module):
    """A pointwise expansion and a depthwise conv: kernels of the blocked-layout rules, whose knobs tuning explores."""

    def __init__(self):
        from torch import nn

        super().__init__()
        self.pw = nn.Conv2d(16, 64, 1)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)

    def forward(self, x):
        return self.dw(self.pw(x).relu()).relu()


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory) -> Path:
    import torch

    from toolkit.export import export_onnx

    torch.manual_seed(0)
    return export_onnx(_ConvBlock().eval(), torch.randn(1, 16, 14, 14), tmp_path_factory.mktemp("conv") / "conv.onnx")


def _conv_tasks(model: Path, target_name: str):
    import targets
    import tvm
    from compile.frontend import load_model
    from compile.tune import fused_module
    from tvm.s_tir import meta_schedule as ms

    target = targets.load_target(target_name)
    tt = tvm.target.Target(target.tvm)
    mod = fused_module(load_model(model, None).mod, target)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, tt) if "conv2d_nchwc" in t.task_name]
    return target, tt, tasks


@pytest.mark.parametrize("target_name", ["x86-64-avx2", "x86-64-avx512", "rpi4"])
def test_rule_variants_start_from_the_default_and_replay(conv_onnx, target_name):
    """The default rule's alternatives: the default schedule first, all distinct, each rebuilt from its trace alone."""
    import tvm_ffi
    from compile.schedules import cpu_config, schedule_func, schedule_variants
    from tvm import s_tir

    target, tt, tasks = _conv_tasks(conv_onnx, target_name)
    assert {("depthwise" in t.task_name) for t in tasks} == {True, False}
    cfg = cpu_config(target)
    for task in tasks:
        wmod = task.dispatched[0]
        variants = schedule_variants(wmod["main"], cfg, tt)
        assert len(variants) >= 2, task.task_name  # a 14-pixel row has several register tiles
        default, rule = schedule_func(wmod["main"], cfg, tt)
        assert variants[0].is_default and variants[0].rule == rule
        assert tvm_ffi.structural_equal(variants[0].sch.mod["main"], default)
        hashes = {tvm_ffi.structural_hash(v.sch.mod) for v in variants}
        assert len(hashes) == len(variants)
        for v in variants[1:]:
            assert v.knobs and all(k.split(".")[0] in ("conv", "depthwise") for k in v.knobs)
            replayed = s_tir.Schedule(wmod)
            v.sch.trace.apply_to_schedule(replayed, remove_postproc=False)
            assert tvm_ffi.structural_equal(replayed.mod, v.sch.mod)


def test_tuning_measures_the_default_rules_alternatives_first(conv_onnx, tmp_path):
    """Each conv kernel's first trials are its rule's own variants; compile applies one only where it measured faster."""
    import tvm_ffi
    from compile import tuning_db
    from compile.schedules import cpu_config, schedule_variants
    from tvm import s_tir

    db = tmp_path / "db"
    s = tune(conv_onnx, "--target", "host", "--trials", "8", "--batch", "4", "--db", db)
    convs = [t for t in s["tasks"] if t["default_rule"] and "nchwc" in t["default_rule"]]
    assert len(convs) == 2 and all(t["trials"] >= 1 and t["records"] >= 1 for t in convs)
    target, tt, tasks = _conv_tasks(conv_onnx, "host")
    source = tuning_db.load_readonly(db)
    for task in tasks:
        wmod = task.dispatched[0]
        alternatives = {tvm_ffi.structural_hash(v.sch.mod)
                        for v in schedule_variants(wmod["main"], cpu_config(target), tt) if not v.is_default}
        recorded = set()
        for rec in source.get_top_k(source.commit_workload(wmod), 1 << 20):
            sch = s_tir.Schedule(wmod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            recorded.add(tvm_ffi.structural_hash(sch.mod))
        assert recorded & alternatives, task.task_name
    out = tmp_path / "art"
    run_cli("compile", conv_onnx, "--target", "host", "--tuning-db", db, "-o", out, check=True)
    m = json.loads((out / "manifest.json").read_text())
    assert m["verification"]["passed"] is True
    faster = sum(1 for t in s["tasks"] if t["best_ms"] is not None and (t["default_ms"] is None or t["best_ms"] < t["default_ms"]))
    assert m["tuning"]["records_applied"] == faster
