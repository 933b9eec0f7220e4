"""Architecture search end to end through the CLI: the latency model built on this machine through compile +
bench (cached), evaluated on held-out networks; `pipeline` (search -> train -> export -> compile -> verify ->
bench -> report); a tighter budget measuring faster; lineage in the manifest, `inspect` and `swap`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_user_error, run_cli

SMALL = ("--epochs", "2", "--train-epochs", "3", "--threads", "1", "--search-steps", "0")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A latency model of this machine from 8 measured networks (the smallest the fit accepts)."""
    root = tmp_path_factory.mktemp("latency-cache")
    env = {"AUTOGLM_CACHE": str(root)}
    proc = run_cli("latency-model", "build", "--samples", "8", "--threads", "1", env=env, check=True)
    return env, root, proc


def _model_dir(root: Path) -> Path:
    (d,) = (root / "latency").glob("host-*")
    return d


def test_latency_model_is_measured_cached_and_evaluated(cache):
    env, root, first = cache
    assert "8 networks" in first.stdout and first.stderr.count("latency-model build: ") >= 8
    d = _model_dir(root)
    from toolkit.search import latency

    # one row per timing: a network timed again (its reference had not reached its best yet) has a later row
    assert len(latency.MeasurementStore(d).rows) == 8 and len((d / "measurements.csv").read_text().splitlines()) >= 1 + 8
    doc = json.loads((d / "model.json").read_text())
    assert doc["fit_count"] == 8 and doc["spec_version"] == 2 and all(c >= 0 for c in doc["coef"])
    assert doc["cache_key_parts"]["tvm"] and doc["cache_key_parts"]["threads"] == 1
    again = run_cli("latency-model", "build", "--samples", "8", "--threads", "1", env=env, check=True)
    assert "8 of 8 networks already measured" in again.stderr and "build: 1/" not in again.stderr
    ev = run_cli("latency-model", "eval", "--holdout", "3", "--threads", "1", env=env, check=True)
    assert "held-out accuracy on 3 networks" in ev.stdout and "Spearman" in ev.stdout
    hold = json.loads((d / "model.json").read_text())["holdout_accuracy"]
    assert hold["architectures"] == 3 and 0 <= hold["within_10pct"] <= 1 and hold["mean_abs_pct_error"] >= 0
    assert len(latency.MeasurementStore(d).rows) == 8 + 3  # held-out nets are not fit on, but cached


@pytest.fixture(scope="module")
def loose(cache, tmp_path_factory):
    env, _, _ = cache
    out = tmp_path_factory.mktemp("runs") / "loose"
    proc = run_cli("pipeline", "--dataset", "digits", "--latency-budget", "1s", "--random", "1", "-o", out, *SMALL,
                   env=env, check=True, timeout=900)
    return out, proc


def test_pipeline_searches_trains_compiles_verifies_benches_and_reports(loose):
    out, proc = loose
    assert "ratio" in proc.stdout and str(out / "report.md") in proc.stdout
    for stage in ("search: epoch 2/2", "finalists:", "budget check:", "retrain:", "compile:", "random 1/2", "baseline 2/2", "bench:"):
        assert stage in proc.stderr, stage
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["bench"]["outputs_match"] is True and summary["bench"]["onnxruntime_p50_ms"] > 0
    assert {c["kind"] for c in summary["candidates"]} == {"random", "baseline"}
    assert all(c["measured_ms"] > 0 and 0 <= c["test_accuracy"] <= 1 for c in summary["candidates"])
    assert summary["searched"]["test_accuracy"] > 0.5  # digits, even after 3 epochs
    report = (out / "report.md").read_text()
    assert "## Accuracy vs measured latency" in report and "budget check: 1000 ms budget" in report
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "artifact" / "manifest.json").read_text())
    assert m["verification"]["passed"] is True
    lin = m["lineage"]
    assert lin["architecture"] == json.loads((out / "architecture.json").read_text())
    assert lin["dataset"]["name"] == "digits" and len(lin["dataset"]["sha256"]) == 64
    assert lin["validation_accuracy"] == summary["searched"]["validation_accuracy"] and lin["latency_model"]["fit_count"] == 8
    dist = lin["training"]["distillation"]  # the distilled and the plain retraining, validation decides
    assert dist["used"] == (dist["distilled_val_accuracy"] >= dist["plain_val_accuracy"])
    assert lin["validation_accuracy"] == max(dist["distilled_val_accuracy"], dist["plain_val_accuracy"])
    assert "retraining: distilled from the supernet" in report
    shown = run_cli("inspect", out / "artifact", check=True).stdout
    assert f"lineage: run {out.resolve()}" in shown and "dataset digits" in shown


def test_tighter_budget_picks_a_faster_net_and_tunes_its_hyperparameters(cache, loose, tmp_path):
    env, _, _ = cache
    out = tmp_path / "tight"
    proc = run_cli("search", "--dataset", "digits", "--latency-budget", "20us", "--trials", "2", "-o", out, *SMALL,
                   env=env, check=True, timeout=900)
    tight = json.loads((out / "search.json").read_text())
    wide = json.loads((loose[0] / "search.json").read_text())
    assert tight["seed"] == wide["seed"]
    assert tight["measured_ms"] < wide["measured_ms"], (tight["architecture"], wide["architecture"])
    assert tight["predicted_ms"] < wide["predicted_ms"]
    assert tight["hyperparameters"]["tuned"] and tight["hyperparameters"]["trials"] == 2 and (out / "study.db").is_file()
    assert "hyperparameters: 2 trials run" in proc.stderr
    import optuna

    (study,) = optuna.get_all_study_summaries(f"sqlite:///{out / 'study.db'}")
    assert study.n_trials == 2  # resuming a killed study: tests/test_study.py


@pytest.fixture(scope="module")
def worse_version(loose, tmp_path_factory):
    """The searched net compiled again with a lineage 5 points less accurate: a version a live app should refuse."""
    from compile import compile_model
    import targets

    out, _ = loose
    lin = json.loads((out / "artifact" / "manifest.json").read_text())["lineage"]
    worse = compile_model(out / "model.onnx", targets.load_target("host"), tmp_path_factory.mktemp("worse") / "art",
                          verify=False, lineage={**lin, "validation_accuracy": lin["validation_accuracy"] - 0.05}).artifact
    return out / "artifact", worse, lin["validation_accuracy"] - 0.05


def test_swap_refuses_a_less_accurate_version_unless_forced(worse_version):
    from toolkit import runtime

    current, worse, _ = worse_version
    live = runtime.load(current)
    with pytest.raises(Exception, match="validation accuracy is lower"):
        live.swap(worse)
    assert live.path == current
    live.swap(worse, force=True)
    assert live.path == worse


def test_cpp_runtime_swap_refuses_a_less_accurate_version_unless_forced(worse_version, host_artifact):
    """Runtime::Swap in the C++ runtime edge apps embed, through autoglm-runner --swap-to."""
    import subprocess

    from compile.native import build_runtime, runner_path

    current, worse, worse_acc = worse_version
    runner = str(runner_path(build_runtime()))

    def run(art, *extra):
        return subprocess.run([runner, str(art), "--json", "--repeat", "0", *map(str, extra)], capture_output=True,
                              text=True, timeout=300)

    refused = run(current, "--swap-to", worse)
    assert refused.returncode == 6 and "validation accuracy is lower" in refused.stderr
    assert json.loads(refused.stdout)["error"]["type"] == "SwapRefusedError"
    forced = run(current, "--swap-to", worse, "--force-swap")
    assert forced.returncode == 0, forced.stderr
    doc = json.loads(forced.stdout)
    assert doc["artifact"] == str(worse) and doc["swapped_from"] == str(current)
    assert doc["validation_accuracy"] == pytest.approx(worse_acc, abs=1e-6)
    better = run(worse, "--swap-to", current)                      # a more accurate version swaps in
    assert better.returncode == 0 and json.loads(better.stdout)["artifact"] == str(current)
    other = run(host_artifact, "--swap-to", current, "--force-swap")  # another model: never, even forced
    assert other.returncode == 6 and "inputs/outputs differ" in other.stderr


def test_tiny_transformer_pipeline_on_text_recall(cache, tmp_path):
    """The second space end to end: its own latency model (measured on first use), search, retrain, compile,
    verify, bench and report on the bundled text task."""
    env, root, _ = cache
    out = tmp_path / "tt"
    proc = run_cli("pipeline", "--dataset", "text-recall", "--latency-samples", "8", "--random", "1", "--trial-epochs", "2",
                   "-o", out, *SMALL, env=env, check=True, timeout=900)
    assert "no tiny-transformer model for host yet" in proc.stderr and "search: tiny-transformer" in proc.stderr
    assert len(list((root / "latency").glob("host-*"))) == 2  # one model per space, side by side
    summary = json.loads((out / "pipeline.json").read_text())
    arch = summary["searched"]["architecture"]
    assert arch["space"] == "tiny-transformer" and arch["seq_len"] == 24 and arch["vocab"] == 32
    assert sum(layer["op"] == "skip" for layer in arch["layers"]) <= 2  # the space's collapse cap
    assert summary["bench"]["outputs_match"] is True
    m = json.loads((out / "artifact" / "manifest.json").read_text())
    assert m["verification"]["passed"] is True and m["lineage"]["space"] == "tiny-transformer"
    assert m["lineage"]["dataset"]["name"] == "text-recall"
    report = (out / "report.md").read_text()
    table = report.split("## Accuracy vs measured latency")[1].split("\n\n## ")[0]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert len(rows) == 1 + 1 + 2 and all(ln.count("|") == 6 for ln in rows), rows  # searched, random, baseline
    assert [c["kind"] for c in summary["candidates"]] == ["random", "baseline"]
    # no budget: the finalists are fitted to the derivation's predicted latency, trained 2 epochs each, ranked
    finals = summary["search"]["finalists"]
    assert len(finals) >= 2 and finals[0]["source"] and "finalists: 1/" in proc.stderr and "## Finalists" in report
    derived = next(f for f in finals if f["source"] == "supernet derivation")
    assert all(f["predicted_ms"] <= derived["predicted_ms"] + 1e-9 and f["epochs"] <= 2 for f in finals)
    keys = [(-f["val_accuracy"], f["val_loss"]) for f in finals]
    assert keys == sorted(keys)
    assert summary["budget_rounds"][0]["architecture"] == finals[0]["architecture"]  # the best one is what was kept


def test_multi_trial_search_through_the_cli(cache, tmp_path):
    """NSGA-II over architectures instead of the supernet: every trial trained briefly, the front recorded, the
    most accurate net within the budget retrained, compiled and verified; its lineage says how it was found."""
    env, _, _ = cache
    out = tmp_path / "mt"
    proc = run_cli("search", "--dataset", "digits", "--resolution", "8", "--multi-trial", "4", "--trial-epochs", "1",
                   "--train-epochs", "2", "--threads", "1", "--latency-budget", "1s", "-o", out, env=env, check=True, timeout=900)
    assert "multi-trial NSGA-II, 4 architectures" in proc.stderr and "multi-trial: 4/4 " in proc.stderr
    assert "distilled" not in proc.stderr  # no supernet to distil from
    s = json.loads((out / "search.json").read_text())
    assert s["search"]["strategy"] == "nsga2" and s["search"]["trials"] == 4
    front = s["search_history"]
    assert front and all(r["predicted_ms"] <= 1000 for r in front)
    assert s["architecture"] == max(front, key=lambda r: r["val_accuracy"])["architecture"]
    m = json.loads((out / "artifact" / "manifest.json").read_text())
    assert m["verification"]["passed"] is True and m["lineage"]["search"]["study"].startswith("nsga2-mobile-cnn-digits")
    assert (out / "study.db").is_file()


@pytest.mark.parametrize("args, code, fragments", [
    (("search", "-o", "{tmp}/r", "--latency-budget", "2parsecs"), 2, ("is not a duration",)),
    (("search", "-o", "{tmp}/r", "--dataset", "cifar"), 2, ("unknown dataset 'cifar'",)),
    (("search", "-o", "{tmp}/r", "--space", "tiny-transformer"), 2, ("takes token sequences", "--space mobile-cnn")),
    (("search", "-o", "{tmp}/r", "--space", "resnet"), 2, ("--space 'resnet'", "mobile-cnn, tiny-transformer")),
    (("pipeline", "-o", "{tmp}/r", "--dataset", "text-recall", "--space", "mobile-cnn"), 2, ("takes images",)),
    (("search", "-o", "{tmp}/r", "--dataset", "text-recall", "--resolution", "16"), 2, ("sequence length (24)",)),
    (("search", "-o", "{tmp}/r", "--resolution", "10"), 2, ("--resolution 10",)),
    (("latency-model", "build", "--samples", "3"), 2, ("--samples must be from 8",)),
    (("latency-model", "build", "--target", "rpi4"), 2, ("does not run natively", "qemu timings are never latency")),
    (("latency-model", "eval", "--device", "qemu"), 2, ("qemu timings are never latency",)),
    (("search", "-o", "{tmp}/r", "--threads", "1"), 1, ("no mobile-cnn latency model for target host", "autoglm latency-model build")),
    (("search", "-o", "{tmp}/r", "--multi-trial", "3", "--trials", "2"), 2, ("--multi-trial searches without a supernet",)),
    (("pipeline", "-o", "{tmp}/r", "--multi-trial", "3", "--trial-epochs", "0"), 2, ("--trial-epochs >= 1",)),
])
def test_bad_search_input_is_one_line(args, code, fragments, tmp_path):
    env = {"AUTOGLM_CACHE": str(tmp_path / "empty-cache")}
    proc = run_cli(*(a.format(tmp=tmp_path) for a in args), env=env)
    assert_user_error(proc, code, *fragments)
    assert not (tmp_path / "r").exists()
