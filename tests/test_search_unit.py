"""The mobile-cnn space, the datasets, the latency model's fit and store, the supernet's expected latency,
the skip-collapse guard and the budget fit: no compiles (test_search.py runs them end to end)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compile import UsageError
from toolkit.bench.paired import PairedTiming
from toolkit.datasets import Dataset, Split, load_dataset
from toolkit.search import latency, mobile_cnn as space, tiny_transformer as tt
from toolkit.search.search import SearchConfig, count_skips, fit_budget, run_search
from toolkit.search.supernet import ExpectedLatency, SuperNet


def test_architecture_json_builds_the_same_module_every_time(tmp_path):
    arch = space.sample(3)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch))
    again = space.load_architecture(path)
    assert again == arch and space.sample(3) == arch and space.sample(4) != arch
    a, b = space.MobileCNN(arch), space.MobileCNN(again)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    out = a.eval()(torch.randn(space.input_shape(arch)))
    assert out.shape == (1, arch["classes"])
    skips = sum(blk["op"] == "skip" for s in arch["stages"] for blk in s["blocks"])
    assert len(list(space.blocks(arch))) == len(space.STAGES) * space.MAX_DEPTH - skips


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a["stages"][0]["blocks"].__setitem__(0, {"op": "skip"}), "cannot be skipped"),
    (lambda a: a["stages"][1]["blocks"][0].__setitem__("kernel", 4), "stage 1 block 0 kernel is 4"),
    (lambda a: a["stages"][1]["blocks"][0].__setitem__("kernel", True), "kernel is True"),
    (lambda a: a["stages"][2].__setitem__("width", 40), "stage 2 width is 40"),
    (lambda a: a["stages"][0]["blocks"].pop(), "give 3"),
    (lambda a: a.__setitem__("resolution", 10), "resolution is 10"),
    (lambda a: a.__setitem__("extra", 1), "unknown architecture field 'extra'"),
    (lambda a: a.__setitem__("space", "mbconv-v1"), "expected 'mobile-cnn'"),
])
def test_bad_architecture_is_one_line(mutate, message):
    arch = json.loads(json.dumps(space.sample(0)))
    mutate(arch)
    with pytest.raises(space.ArchitectureError) as e:
        space.validate(arch)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_digits_hard_is_deterministic_and_splits_keep_variants_together():
    a, b = load_dataset("digits-hard"), load_dataset("digits-hard")
    assert a.sha256 == b.sha256 and a.shape == (1, 16, 16)
    assert np.array_equal(a.train.x, b.train.x)
    assert len(a.train.y) + len(a.val.y) + len(a.test.y) == 2 * 1797
    rows = {s: {x.tobytes() for x in getattr(a, s).x} for s in ("train", "val", "test")}
    assert not rows["train"] & rows["test"] and not rows["train"] & rows["val"]
    assert a.train.x.min() >= 0 and a.train.x.max() <= 1


def test_npz_dataset_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "d.npz"
    np.savez(good, x=rng.random((50, 8, 8), np.float32), y=rng.integers(0, 3, 50))
    ds = load_dataset(str(good))
    assert ds.shape == (1, 8, 8) and ds.classes <= 3 and len(ds.train.y) == 30
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((20, 8, 8), np.float32))
    for name, msg in ((str(bad), "must hold arrays 'x'"), (str(tmp_path / "none.npz"), "does not exist"), ("cifar", "unknown dataset")):
        with pytest.raises(UsageError, match=msg):
            load_dataset(name)


def _synthetic_model(seed: int = 0) -> tuple[latency.LatencyModel, np.ndarray]:
    """A model fitted on latencies made from known non-negative costs (exact data: the fit must recover them)."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.001, 0.05, len(space.FEATURES))
    archs = latency.fit_architectures(60)
    y = [float(latency.network_features(a)[0] @ true) for a in archs]
    return latency.fit(archs, y, target="t", key="k", threads=1, where="host"), true


def test_latency_fit_recovers_known_costs_and_predicts_held_out_networks():
    model, true = _synthetic_model()
    hold = latency.holdout_architectures(30, exclude=latency.fit_architectures(60))
    measured = [float(latency.network_features(a)[0] @ true) for a in hold]
    acc = latency.accuracy(model, hold, measured)
    assert acc["within_10pct"] == 1.0 and acc["mean_abs_pct_error"] < 1.0 and acc["spearman"] > 0.99
    with pytest.raises(latency.LatencyModelError, match="too few"):
        latency.fit(hold[:3], measured[:3], target="t", key="k", threads=1, where="host")


def test_expected_latency_is_exact_for_one_hot_choices():
    model, _ = _synthetic_model(1)
    for seed in range(4):
        arch = space.sample(seed, resolution=12)
        ops = torch.zeros(len(space.STAGES) * space.MAX_DEPTH, len(space.OPS))
        widths = []
        for s, stage in enumerate(arch["stages"]):
            for j, block in enumerate(stage["blocks"]):
                ops[s * space.MAX_DEPTH + j, space.op_index(block)] = 1
            w = torch.zeros(len(space.STAGES[s][0]))
            w[space.STAGES[s][0].index(stage["width"])] = 1
            widths.append(w)
        expected = float(ExpectedLatency(model, 12, 1, 10)(ops, widths))
        assert expected == pytest.approx(model.predict(arch), rel=1e-5)


def test_measurement_store_survives_a_torn_line(tmp_path):
    store = latency.MeasurementStore(tmp_path)
    a, b = latency.fit_architectures(2)
    store.add(a, PairedTiming([0.3, 0.1, 0.2], [0.5, 0.5, 0.5], 30))
    with open(store.path, "a") as f:
        f.write('"{""space"": ""mobile-cnn"", ""resol')   # a build killed mid-write
    store.add(b, PairedTiming([0.4], [0.5], 5))
    again = latency.MeasurementStore(tmp_path)
    assert again.get(a)["latency_ms"] == pytest.approx(0.1) and again.get(b)["latency_ms"] == pytest.approx(0.4)
    assert again.get(a)["p50_ms"] == pytest.approx(0.2) and again.get(a)["chunks"] == 3
    assert len(again.rows) == 2


def test_measurement_store_puts_every_row_on_the_reference_scale(tmp_path):
    """A row measured while the machine was slow (the reference slower than its best) is scaled back."""
    store = latency.MeasurementStore(tmp_path)
    a, b, c = latency.fit_architectures(3)
    store.add(a, PairedTiming([0.20, 0.22], [0.40, 0.41], 20))
    assert store.get(a)["latency_ms"] == pytest.approx(0.20)       # its own reference is the best so far
    store.add(b, PairedTiming([0.10, 0.12], [0.30, 0.31], 20))      # the machine got faster: a's row rescales
    assert store.get(a)["latency_ms"] == pytest.approx(0.20 * 0.30 / 0.40)
    assert store.get(b)["latency_ms"] == pytest.approx(0.10)
    again = latency.MeasurementStore(tmp_path)
    assert again.ref_best_ms == pytest.approx(0.30) and again.get(c) is None
    assert again.get(a)["latency_ms"] == pytest.approx(0.15)


def test_collapse_guard_caps_skip_ops():
    net = SuperNet(8, 1, 10)
    with torch.no_grad():
        net.op_logits[:, space.SKIP] = 5.0  # what a collapsed search ends with
    unguarded = net.derive(None)
    assert count_skips(unguarded) == len(space.STAGES) * (space.MAX_DEPTH - 1)
    assert count_skips(net.derive(2)) == 2


def test_search_with_a_heavy_latency_weight_keeps_skips_under_the_cap():
    model, _ = _synthetic_model(2)
    full = load_dataset("digits")
    data = Dataset("digits-subset", *(Split(s.x[:256], s.y[:256]) for s in (full.train, full.val, full.test)), 10)
    cfg = SearchConfig(epochs=2, warmup=0, latency_weight=200.0, lr_arch=0.2, max_skips=2, min_steps=0)
    res = run_search(data, 8, model, cfg, None)
    probs = res.supernet.probabilities()[0].detach()
    skippable = [k for k in range(len(probs)) if k % space.MAX_DEPTH]
    assert float(probs[skippable, space.SKIP].min()) > 2 / len(space.OPS)  # the penalty pushed towards skips...
    assert count_skips(res.supernet.derive(None)) > 2                         # ...to a collapse
    assert count_skips(res.arch) <= 2                                          # ...which the guard capped


def test_fit_budget_meets_the_predicted_budget():
    model, _ = _synthetic_model(3)
    net = SuperNet(16, 1, 10)
    big = space.validate({"space": space.SPACE_NAME, "resolution": 16, "in_channels": 1, "classes": 10,
                          "stages": [{"width": max(w), "blocks": [{"op": "mbconv", "kernel": 7, "expand": 6}] * 3}
                                     for w, _ in space.STAGES]})
    budget = 0.5 * model.predict(big)
    small, moves = fit_budget(big, net, model, budget, max_skips=3)
    assert model.predict(small) <= budget and moves and count_skips(small) <= 3
    # a net far under the budget grows into it (the search's argmax may land anywhere below it)
    tiny = space.validate({"space": space.SPACE_NAME, "resolution": 16, "in_channels": 1, "classes": 10,
                           "stages": [{"width": min(w), "blocks": [{"op": "mbconv", "kernel": 3, "expand": 1}] + [{"op": "skip"}] * 2}
                                      for w, _ in space.STAGES]})
    budget = (model.predict(tiny) + model.predict(big)) / 2
    grown, moves = fit_budget(tiny, net, model, budget, max_skips=3)
    assert 0.95 * budget <= model.predict(grown) <= budget and all(m.startswith("grow: ") for m in moves)
    kept, none = fit_budget(tiny, net, model, budget, max_skips=3, grow=False)
    assert kept == tiny and not none



def test_budget_check_grows_a_net_far_under_budget_and_never_keeps_one_over_it():
    """The re-measure loop after a search (toolkit.search.run.remeasure_to_budget), against a device that
    measures 15% under the model: the net is grown until it measures within 5% under the budget. A device whose
    measurements keep rising makes the last round overshoot: the net measured within budget is kept."""
    from toolkit.search.run import MAX_REMEASURE, remeasure_to_budget

    model, _ = _synthetic_model(3)
    net = SuperNet(16, 1, 10)
    tiny = space.validate({"space": space.SPACE_NAME, "resolution": 16, "in_channels": 1, "classes": 10,
                           "stages": [{"width": min(w), "blocks": [{"op": "mbconv", "kernel": 3, "expand": 1}] + [{"op": "skip"}] * 2}
                                      for w, _ in space.STAGES]})
    budget = 3 * model.predict(tiny)

    aims: list[float] = []

    def refit(a, b):
        aims.append(b)
        return fit_budget(a, net, model, b, max_skips=3)

    said: list[str] = []
    arch, rounds = remeasure_to_budget(tiny, lambda a: 0.85 * model.predict(a), model.predict, refit, budget,
                                       space.describe, said.append)
    assert len(rounds) >= 2 and rounds[0]["architecture"] == tiny and arch != tiny
    assert aims[0] == pytest.approx(budget * 0.975 / 0.85)  # the middle of [0.95, 1] x budget, on the device's scale
    assert 0.95 * budget <= rounds[-1]["measured_ms"] <= budget and rounds[-1]["architecture"] == arch
    assert any("under budget: grow: " in line for line in said)

    factors = iter([1.0, 1.2, 1.5, 2.0, 3.0])
    arch, rounds = remeasure_to_budget(tiny, lambda a: next(factors) * model.predict(a), model.predict, refit, budget,
                                       space.describe, said.append)
    assert len(rounds) == MAX_REMEASURE + 1 and rounds[MAX_REMEASURE - 1]["measured_ms"] > budget
    assert arch == tiny and rounds[-1]["kept"] and rounds[-1]["measured_ms"] <= budget
    # without a budget: measured once, kept as it is
    arch, rounds = remeasure_to_budget(tiny, model.predict, model.predict, refit, None, space.describe, said.append)
    assert arch == tiny and len(rounds) == 1

# ---- tiny-transformer: the same search machinery on the second space -------------------------------------

def _synthetic_transformer_model(seed: int = 0) -> latency.LatencyModel:
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.001, 0.05, len(tt.FEATURES))
    archs = latency.fit_architectures(40, "tiny-transformer")
    y = [float(latency.network_features(a)[0] @ true) for a in archs]
    return latency.fit(archs, y, target="t", key="k", threads=1, where="host")


def test_transformer_latency_model_and_expected_latency_are_exact_on_one_hot_choices():
    from toolkit.search.transformer_supernet import ExpectedLatency as TExpected

    model = _synthetic_transformer_model()
    assert model.space == "tiny-transformer" and len({a["seq_len"] for a in latency.fit_architectures(40, "tiny-transformer")}) > 1
    for seed in range(6):
        arch = tt.sample(seed, seq_len=24)
        ops_idx, widths_idx = tt.choices(arch)
        assert tt.from_choices({k: arch[k] for k in tt.META}, ops_idx, widths_idx) == arch
        ops = torch.nn.functional.one_hot(torch.tensor(ops_idx), len(tt.OPS)).float()
        widths = [torch.nn.functional.one_hot(torch.tensor(widths_idx[0]), len(tt.HIDDEN)).float()]
        expected = float(TExpected(model, 24, 32, 4)(ops, widths))
        assert expected == pytest.approx(model.predict(arch), rel=1e-5)


def test_transformer_supernet_path_computes_the_derived_network():
    """With one-hot weights, the supernet's masked path is the TinyTransformer of that architecture (weights sliced)."""
    from toolkit.search.transformer_supernet import SuperNet as TSuperNet

    torch.manual_seed(0)
    net = TSuperNet(24, 32, 4).eval()
    arch = tt.validate({"space": tt.SPACE_NAME, "seq_len": 24, "vocab": 32, "classes": 4, "hidden": 48,
                        "layers": [{"op": "layer", "heads": 2, "ffn": 128}, {"op": "skip"},
                                   {"op": "layer", "heads": 4, "ffn": 64}, {"op": "skip"}]})
    ops_idx, widths_idx = tt.choices(arch)
    with torch.no_grad():
        net.op_logits.fill_(0)
        net.op_logits[torch.arange(len(ops_idx)), torch.tensor(ops_idx)] = 5.0
        net.width_logits[0].fill_(0)
        net.width_logits[0][widths_idx[0]] = 5.0
    assert net.derive(None) == arch
    small = tt.TinyTransformer(arch).eval()
    h = arch["hidden"]
    with torch.no_grad():
        small.tok.weight.copy_(net.embed.weight[:, :h])
        small.pos.copy_(net.pos[..., :h])
        j = 0
        for k, op in enumerate(arch["layers"]):
            if op["op"] == "skip":
                continue
            s, d, a, f = net.slots[k], small.layers[j], op["heads"] * tt.HEAD_DIM, op["ffn"]
            for src, dst in ((s.ln1, d.ln1), (s.ln2, d.ln2)):
                dst.weight.copy_(src.weight[:h]); dst.bias.copy_(src.bias[:h])
            for src, dst in ((s.q, d.attn.q), (s.k, d.attn.k), (s.v, d.attn.v)):
                dst.weight.copy_(src.weight[:a, :h]); dst.bias.copy_(src.bias[:a])
            d.attn.out.weight.copy_(s.out.weight[:h, :a]); d.attn.out.bias.copy_(s.out.bias[:h])
            d.ff[0].weight.copy_(s.w1.weight[:f, :h]); d.ff[0].bias.copy_(s.w1.bias[:f])
            d.ff[2].weight.copy_(s.w2.weight[:h, :f]); d.ff[2].bias.copy_(s.w2.bias[:h])
            j += 1
        small.norm.weight.copy_(net.norm.weight[:h]); small.norm.bias.copy_(net.norm.bias[:h])
        small.classifier.weight.copy_(net.classifier.weight[:, :h]); small.classifier.bias.copy_(net.classifier.bias)
        ids = torch.randint(0, 32, (5, 24))
        torch.testing.assert_close(net(ids), small(ids), rtol=1e-4, atol=1e-4)


def test_transformer_search_and_budget_fit_on_text_recall():
    from toolkit.search.transformer_supernet import SuperNet as TSuperNet

    data = load_dataset("text-recall")
    small = Dataset(data.name, Split(data.train.x[:256], data.train.y[:256]), Split(data.val.x[:128], data.val.y[:128]),
                    data.test, data.classes, data.sha256)
    model = _synthetic_transformer_model()
    res = run_search(small, 24, model, SearchConfig(epochs=2, warmup=1, seed=0, min_steps=4), budget_ms=None)
    assert tt.validate(res.arch) == res.arch and res.arch["seq_len"] == 24 and len(res.history) == 2
    assert [h["steps"] for h in res.history] == [4, 4]  # 128 samples per half are 2 batches: cycled to 4 steps
    big = tt.baseline(24, 32, 4, 2)
    budget = 0.6 * model.predict(big)
    shrunk, moves = fit_budget(big, TSuperNet(24, 32, 4), model, budget, max_skips=3)
    assert model.predict(shrunk) <= budget and moves and count_skips(shrunk) <= 3


def test_stage_bars_count_the_counted_stages_and_keep_every_line():
    import io

    from rich.console import Console

    from toolkit.cli_search import StageBars

    bars = StageBars()
    out = io.StringIO()
    bars.console = Console(file=out, force_terminal=True, width=120, highlight=False)
    for line in ("latency model: none yet", "latency-model build: 1/8 r12 w8:k3e1: 0.1 ms", "latency-model build: 8/8 r16: 0.2 ms",
                 "search: epoch 2/10 (tau 3.1): supernet val accuracy 40%", "  import: 0.1 s", "random 1/3: train r12"):
        bars(line)
    tasks = {t.description: (t.completed, t.total) for t in bars.bars.tasks}
    bars.close()
    assert tasks == {"latency-model build": (8, 8), "search": (2, 10), "random": (1, 3)}
    text = out.getvalue()
    assert "latency model: none yet" in text and "  import: 0.1 s" in text


def test_supernet_fast_path_equals_the_masked_superkernel():
    """Weight steps and evaluation compute only the chosen op's channels and taps; the masked superkernel (which
    the architecture steps need for their gradient) must give the same network."""
    torch.manual_seed(0)
    net = SuperNet(12, 1, 10)
    x = torch.randn(16, 1, 12, 12)
    for seed in range(4):
        torch.manual_seed(seed)
        ops, widths = net.sample(1.0)
        assert ops.requires_grad
        masked = net(x, (ops, widths))
        fast = net(x, (ops.detach(), [w.detach() for w in widths]))
        torch.testing.assert_close(fast, masked.detach(), rtol=1e-5, atol=1e-5)


# ---- multi-trial (NSGA-II) search ------------------------------------------------------------------------

def _digits_subset(n: int = 256) -> Dataset:
    full = load_dataset("digits")
    return Dataset("digits-subset", *(Split(s.x[:n], s.y[:n]) for s in (full.train, full.val, full.test)), 10)


def test_multi_trial_objective_trains_only_what_fits_the_budget_and_the_skip_cap():
    import optuna

    from toolkit.search import multi_trial as mt
    from toolkit.search.train import TrainConfig

    model, _ = _synthetic_model(4)
    meta = {"resolution": 8, "in_channels": 1, "classes": 10}
    ctx = mt.ArchTrialContext(_digits_subset(), meta, "mobile-cnn", model, None, 3, TrainConfig(epochs=1), 1)
    sp = space
    # slot 0 of a stage may not be skipped: its choices have no `skip`
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    arch = mt.architecture(ctx, trial)
    assert "skip" not in trial.distributions["slot0"].choices and "skip" in trial.distributions["slot1"].choices
    assert sp.validate(arch) == arch and arch["resolution"] == 8
    pred = model.predict(arch)
    fits = mt.ArchTrialContext(**{**ctx.__dict__, "budget_ms": 2 * pred})
    acc, lat = mt.objective(fits, optuna.trial.FixedTrial(trial.params))
    assert 0 < acc <= 1 and lat == pytest.approx(pred)
    over = mt.ArchTrialContext(**{**ctx.__dict__, "budget_ms": 0.5 * pred})
    fixed = optuna.trial.FixedTrial(trial.params)
    assert mt.objective(over, fixed) == (0.0, pytest.approx(pred))
    assert fixed.user_attrs["constraints"][0] > 0 and "test_accuracy" not in fixed.user_attrs  # not trained


def test_multi_trial_search_returns_the_most_accurate_net_within_the_budget(tmp_path):
    from toolkit.search import multi_trial as mt
    from toolkit.search.train import TrainConfig

    model, _ = _synthetic_model(5)
    meta = {"resolution": 8, "in_channels": 1, "classes": 10}
    preds = sorted(model.predict(space.sample(s, resolution=8)) for s in range(40))
    budget = preds[28]  # ~70% of random nets fit
    ctx = mt.ArchTrialContext(_digits_subset(), meta, "mobile-cnn", model, budget, 3, TrainConfig(epochs=1), 6)
    lines: list[str] = []
    res = mt.run_multi_trial(ctx, "nsga2-test", None, tmp_path, 1, 0, lines.append)
    assert res.ran == 6 and res.trials == 6 and sum(ln.startswith("multi-trial: ") for ln in lines) == 7
    assert all(r["predicted_ms"] <= budget for r in res.feasible)
    assert res.arch == res.feasible[0]["architecture"]
    assert res.feasible[0]["val_accuracy"] == max(r["val_accuracy"] for r in res.feasible)
    front = res.front
    assert [r["predicted_ms"] for r in front] == sorted(r["predicted_ms"] for r in front)
    assert all(a["val_accuracy"] < b["val_accuracy"] for a, b in zip(front, front[1:]))
    assert not any(o["val_accuracy"] >= f["val_accuracy"] and o["predicted_ms"] < f["predicted_ms"]
                   for f in front for o in res.feasible)              # nothing beats a front member on both
    assert res.within(front[0]["predicted_ms"]) == front[0]["architecture"]
    # the study is in the run directory: a second run resumes it and trains nothing new
    again = mt.run_multi_trial(ctx, "nsga2-test", None, tmp_path, 1, 0, lines.append)
    assert again.ran == 0 and again.arch == res.arch and any("6 completed trials kept" in ln for ln in lines)
    with pytest.raises(UsageError, match="none of the 6 architectures"):
        mt.run_multi_trial(mt.ArchTrialContext(**{**ctx.__dict__, "budget_ms": 1e-9}), "nsga2-none", None, tmp_path, 1, 0,
                           lines.append)


def test_finalists_are_distinct_fitted_proposals_and_rank_best_first():
    from toolkit.search import finalists
    from toolkit.search.train import TrainConfig

    model, _ = _synthetic_model(5)
    torch.manual_seed(0)
    net = SuperNet(8, 1, 10)
    with torch.no_grad():
        net.op_logits.normal_(0, 1)
    derived = net.derive(3)
    budget = 1.2 * model.predict(derived)
    derived, _ = fit_budget(derived, net, model, budget, max_skips=3)
    props = finalists.propose(derived, net, model, budget, 3, 4, seed=0)
    assert [f.source for f in props[:3]] == [finalists.DERIVED, finalists.REFERENCE, finalists.REFERENCE_FITTED]
    assert props[0].architecture == derived and len(props) == 4 and props[3].source == finalists.SAMPLED
    scales = [space.baseline_for({"resolution": 8, "in_channels": 1, "classes": 10}, s) for s in (2, 1, 0)]
    assert props[1].architecture == next(a for a in scales if model.predict(a) <= budget)  # the largest within budget
    assert len({space.describe(f.architecture) for f in props}) == 4
    for f in props:
        assert space.validate(f.architecture) == f.architecture and count_skips(f.architecture) <= 3
        assert f.predicted_ms == pytest.approx(model.predict(f.architecture)) and f.predicted_ms <= budget
    assert props[2].predicted_ms >= 0.9 * budget  # the fitted reference recipe is grown into the budget
    # without a budget: fitted to the derivation's own predicted latency
    free = finalists.propose(derived, net, model, None, 3, 3, seed=0)
    assert free[0].architecture == derived and all(f.predicted_ms <= model.predict(derived) + 1e-9 for f in free)
    lines: list[str] = []
    ranked = finalists.rank(props[:3], _digits_subset(), TrainConfig(epochs=1, kd_alpha=0.5), lines.append)
    assert len(ranked) == 3 and all(f.val_accuracy is not None and f.epochs == 1 for f in ranked)
    keys = [(-f.val_accuracy, f.val_loss) for f in ranked]
    assert keys == sorted(keys) and [ln.split(" ")[1] for ln in lines] == ["1/3", "2/3", "3/3"]


def test_latency_features_count_channels_in_whole_vectors_of_the_target():
    import targets

    assert [latency.vector_lanes(targets.load_target(t)) for t in ("x86-64-avx512", "x86-64-avx2", "rpi4", "nvidia-h100")] \
        == [16, 8, 4, 1]
    block = {"cin": 24, "cout": 24, "stride": 1, "kernel": 5, "expand": 3, "size": 6}
    wide = {**block, "cin": 32, "cout": 32}
    # a 24-channel block costs as many 16-lane vectors as a 32-channel one (its expansion: 72 -> 80 channels)
    f16 = space.block_features(block, 16)
    assert f16["pw.mmac"] == pytest.approx(36 * (32 * 80 + 80 * 32) / 1e6) and f16["dw.mmac"] == pytest.approx(36 * 80 * 25 / 1e6)
    assert space.block_features(block, 8) == space.block_features(block)  # every width of the space is whole on AVX2
    assert space.block_features(wide, 16)["pw.mmac"] > space.block_features(block)["pw.mmac"]
    # a model fitted with the target's lanes predicts the data it was fitted on with the same features exactly
    rng = np.random.default_rng(7)
    true = rng.uniform(0.001, 0.05, len(space.FEATURES))
    archs = latency.fit_architectures(60)
    y = [float(latency.network_features(a, 16)[0] @ true) for a in archs]
    model = latency.fit(archs, y, 16, target="t", key="k", threads=1, where="host")
    assert model.lanes == 16 and model.to_json()["lanes"] == 16
    assert latency.accuracy(model, archs, y)["max_abs_pct_error"] < 1e-6
    assert latency.accuracy(latency.fit(archs, y, 1, target="t", key="k", threads=1, where="host"), archs, y)["max_abs_pct_error"] > 1


def test_fit_budget_trades_when_no_single_move_fits():
    """A net of the largest ops grows only by width, and a width step may overshoot what is left of the
    budget: the fit widens and pays for it with smaller ops instead of stopping short."""
    model, _ = _synthetic_model(3)
    net = SuperNet(16, 1, 10)
    start = space.validate({"space": space.SPACE_NAME, "resolution": 16, "in_channels": 1, "classes": 10,
                            "stages": [{"width": min(w), "blocks": [{"op": "mbconv", "kernel": 7, "expand": 6}] * 3}
                                       for w, _ in space.STAGES]})
    ops, widths = space.choices(start)
    meta = {"resolution": 16, "in_channels": 1, "classes": 10}
    wider = [space.from_choices(meta, ops, [w + (i == g) for i, w in enumerate(widths)]) for g in range(len(widths))]
    budget = min(model.predict(a) for a in wider) * 0.999  # every single growth move overshoots
    assert model.predict(start) < budget
    grown, moves = fit_budget(start, net, model, budget, max_skips=3)
    assert model.predict(start) < model.predict(grown) <= budget
    assert any(m.startswith("grow: ") and ", then " in m for m in moves), moves
    assert space.choices(grown)[1] != widths  # a stage got wider


def test_fit_budget_shrinks_a_net_just_over_budget_by_the_smallest_landing_move():
    """A net a little over its budget (the budget check's usual case) loses the one choice that lands it
    closest under the budget, not the largest saving (a stage's width), which the likelihood-per-ms rule
    of an untrained supernet would pick."""
    from toolkit.search.search import _moves

    model, _ = _synthetic_model(3)
    net = SuperNet(16, 1, 10)
    big = space.validate({"space": space.SPACE_NAME, "resolution": 16, "in_channels": 1, "classes": 10,
                          "stages": [{"width": max(w), "blocks": [{"op": "mbconv", "kernel": 7, "expand": 6}] * 3}
                                     for w, _ in space.STAGES]})
    below = [model.predict(c) for c, _, _ in _moves(big, net, 3) if model.predict(c) < model.predict(big)]
    budget = max(below) + 1e-9
    fitted, moves = fit_budget(big, net, model, budget, max_skips=3, grow=False)
    assert len(moves) == 1 and model.predict(fitted) == pytest.approx(max(below)), moves
    assert min(below) < 0.95 * max(below)  # a much larger saving was on offer
