"""The tiny-transformer space and the text-recall task: architectures, the torch network, the bundled text data and
`.npz` text, and one small net exported, compiled for the host and verified against onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import compile
import targets
from compile import UsageError
from toolkit import models
from toolkit.datasets import Dataset, Split, load_dataset, resize
from toolkit.export import export_onnx
from toolkit.search import tiny_transformer as space
from toolkit.search.train import TrainConfig, train


def _params(arch) -> int:
    return sum(p.numel() for p in space.TinyTransformer(arch).parameters())


def test_ops_are_the_layer_grid_then_skip():
    assert len(space.OPS) == 10 and space.SKIP == 9 and space.OPS[space.SKIP] == {"op": "skip"}
    assert space.OPS[0] == {"op": "layer", "heads": 1, "ffn": 64} and space.OPS[8] == {"op": "layer", "heads": 4, "ffn": 256}
    assert [space.op_index(op) for op in space.OPS] == list(range(10))


def test_sampled_architectures_round_trip_and_build(tmp_path):
    seen = set()
    for seed in range(8):
        arch = space.sample(seed, seq_len=12, vocab=20, classes=3)
        path = tmp_path / f"arch{seed}.json"
        path.write_text(json.dumps(arch))
        assert space.load_architecture(path) == arch == space.validate(json.loads(json.dumps(arch)))
        assert space.sample(seed, seq_len=12, vocab=20, classes=3) == arch
        assert arch["layers"][0]["op"] == "layer" and arch["hidden"] in space.HIDDEN
        seen.add(space.describe(arch))
        n_layers = sum(op["op"] == "layer" for op in arch["layers"])
        shapes = list(space.layers(arch))
        assert len(shapes) == n_layers and all(s["seq"] == 12 and s["hidden"] == arch["hidden"] for s in shapes)
        net = space.TinyTransformer(arch).eval()
        assert len(net.layers) == n_layers
        ids = space.example_input(arch, seed)
        assert ids.dtype == torch.int64 and tuple(ids.shape) == space.input_shape(arch) == (1, 12)
        assert 0 <= int(ids.min()) and int(ids.max()) < 20
        assert net(ids).shape == (1, 3)
        assert net(torch.randint(0, 20, (5, 12))).shape == (5, 3)
    assert len(seen) == 8  # different seeds, different nets
    assert space.sample(0)["seq_len"] == 32 and space.sample(0)["vocab"] == 32 and space.sample(0)["classes"] == 4


def test_same_architecture_and_seed_build_identical_weights():
    arch = space.sample(5)
    a, b = (models.with_weights(lambda: space.TinyTransformer(arch), 7).state_dict() for _ in range(2))
    c = models.with_weights(lambda: space.TinyTransformer(arch), 8).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert torch.equal(space.example_input(arch, 3), space.example_input(arch, 3))


def test_describe():
    arch = space.validate({"space": "tiny-transformer", "seq_len": 24, "vocab": 32, "classes": 4, "hidden": 48,
                           "layers": [{"op": "layer", "heads": 2, "ffn": 128}, {"op": "layer", "heads": 1, "ffn": 64},
                                      {"op": "skip"}, {"op": "skip"}]})
    assert space.describe(arch) == "h48 L24: a2f128 a1f64 - -"


def _set_layer(i, value):
    return lambda a: a["layers"].__setitem__(i, value)


@pytest.mark.parametrize("mutate, message", [
    (_set_layer(0, {"op": "skip"}), "layer 0 is 'skip'; the first layer cannot be skipped"),
    (lambda a: a["layers"][1].update(op="layer", heads=3, ffn=64), "layer 1 heads is 3"),
    (lambda a: a["layers"][1].update(op="layer", heads=True, ffn=64), "heads is True"),
    (lambda a: a["layers"][0].__setitem__("ffn", 512), "layer 0 ffn is 512"),
    (_set_layer(2, {"op": "attention"}), "layer 2 must be"),
    (_set_layer(3, {"op": "skip", "heads": 2}), "a skip layer has no other fields"),
    (lambda a: a["layers"][0].pop("ffn"), "exactly 'op', 'heads' and 'ffn'"),
    (lambda a: a["layers"].pop(), "'layers' is 3 entries; give a list of 4"),
    (lambda a: a.__setitem__("layers", {}), "give a list of 4"),
    (lambda a: a.__setitem__("hidden", 40), "hidden is 40"),
    (lambda a: a.__setitem__("hidden", 64.0), "hidden is 64.0"),
    (lambda a: a.__setitem__("seq_len", 0), "seq_len is 0; give an integer from 1 to 512"),
    (lambda a: a.__setitem__("seq_len", 513), "seq_len is 513"),
    (lambda a: a.__setitem__("seq_len", True), "seq_len is True"),
    (lambda a: a.__setitem__("vocab", 1), "vocab is 1; give an integer from 2 to 100000"),
    (lambda a: a.__setitem__("vocab", 100001), "vocab is 100001"),
    (lambda a: a.__setitem__("classes", 0), "classes is 0; give an integer from 1 to 10000"),
    (lambda a: a.__setitem__("classes", "4"), "classes is '4'"),
    (lambda a: a.pop("vocab"), "'vocab' is missing"),
    (lambda a: a.__setitem__("stages", []), "unknown architecture field 'stages'"),
    (lambda a: a.__setitem__("space", "mobile-cnn"), "expected 'tiny-transformer'"),
])
def test_bad_architecture_is_one_line(mutate, message):
    arch = json.loads(json.dumps(space.baseline(24, 32, 4, 1)))
    mutate(arch)
    with pytest.raises(space.ArchitectureError) as e:
        space.validate(arch)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, UsageError)


def test_bad_architecture_files(tmp_path):
    with pytest.raises(space.ArchitectureError, match="does not exist"):
        space.load_architecture(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json\n")
    with pytest.raises(space.ArchitectureError, match="is not valid JSON") as e:
        space.load_architecture(bad)
    assert "\n" not in str(e.value)
    bad.write_text("[]")
    with pytest.raises(space.ArchitectureError, match="an architecture is a JSON object"):
        space.load_architecture(bad)


def test_baselines_are_valid_and_grow_with_scale():
    archs = [space.baseline(24, 32, 4, s) for s in range(3)]
    assert [space.describe(a) for a in archs] == ["h32 L24: a2f128 a2f128 - -", "h48 L24: a2f128 a2f128 a2f128 a2f128",
                                                  "h64 L24: a4f256 a4f256 a4f256 a4f256"]
    assert all(space.validate(a) == a for a in archs)
    sizes = [_params(a) for a in archs]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert space.baseline(24, 32, 4, 9) == archs[2] and space.baseline(24, 32, 4, -1) == archs[0]


def _all(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([ds.train.x, ds.val.x, ds.test.x]), np.concatenate([ds.train.y, ds.val.y, ds.test.y])


def test_text_recall_follows_its_recipe():
    a, b = load_dataset("text-recall"), load_dataset("text-recall")
    assert a.sha256 == b.sha256 and np.array_equal(a.train.x, b.train.x) and np.array_equal(a.test.y, b.test.y)
    assert load_dataset("text-recall", seed=1).sha256 == a.sha256  # the data are fixed; only the split moves
    assert a.kind == "text" and a.vocab == 32 and a.classes == 4 and a.shape == (24,)
    assert a.train.x.dtype == np.int64 and a.train.y.dtype == np.int64
    assert (len(a.train.y), len(a.val.y), len(a.test.y)) == (2400, 800, 800)
    x, y = _all(a)
    assert x.shape == (4000, 24) and x.min() >= 1 and x.max() == 31
    assert np.bincount(y).tolist() == [1000] * 4
    assert np.bincount(a.train.y).min() > 0.2 * len(a.train.y)
    assert ((x == 1).sum(1) == 1).all()                           # the marker exactly once...
    p = (x == 1).argmax(1)
    assert p.max() <= 22 and p.min() == 0
    assert np.array_equal(x[np.arange(len(x)), p + 1], 2 + y)      # ...and the label's value token right after it
    values = ((x >= 2) & (x <= 5)).sum(1)
    assert values.min() == 3 and values.max() == 5                 # the answer and 2-4 distractors
    # a bag of tokens is not enough: the most frequent value token is often not the label
    counts = np.stack([(x == 2 + c).sum(1) for c in range(4)], 1)
    assert 0.3 < float((counts.argmax(1) == y).mean()) < 0.7
    images = load_dataset("digits")
    assert images.kind == "image" and images.vocab is None


def test_text_trains_through_resize_only_at_its_length():
    full = load_dataset("text-recall")
    assert resize(full.train.x, 24) is full.train.x
    with pytest.raises(UsageError, match="text sequences have length 24 and are not resized"):
        resize(full.train.x, 16)
    assert resize(np.zeros((2, 1, 8, 8), np.float32), 12).shape == (2, 1, 12, 12)
    data = Dataset("text-subset", *(Split(s.x[:128], s.y[:128]) for s in (full.train, full.val, full.test)), 4)
    arch = space.baseline(24, 32, 4, 0)
    res = train(models.with_weights(lambda: space.TinyTransformer(arch), 0), data, 24, TrainConfig(epochs=1))
    assert res.epochs == 1 and 0 <= res.test_accuracy <= 1


def test_npz_text_dataset_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "t.npz"
    np.savez(good, x=rng.integers(0, 20, (50, 10)).astype(np.int32), y=rng.integers(0, 3, 50))
    ds = load_dataset(str(good))
    assert ds.kind == "text" and ds.shape == (10,) and ds.train.x.dtype == np.int64 and len(ds.train.y) == 30
    assert ds.vocab == int(np.load(good)["x"].max()) + 1 and ds.classes <= 3 and ds.name == "t.npz"
    y = rng.integers(0, 3, 50)
    cases = [
        (rng.random((50, 10)), "must hold integer token ids (it is float64)"),
        (np.ones((50, 10), bool), "must hold integer token ids (it is bool)"),
        (np.full((50, 10), -1), "token ids must be from 0 to"),
        (np.full((50, 10), 2**40), "token ids must be from 0 to"),
        (np.zeros((50, 0), np.int64), "at least one token"),
        (np.zeros(50, np.int64), "or [N, L] integer token ids for text"),
    ]
    for i, (x, message) in enumerate(cases):
        bad = tmp_path / f"bad{i}.npz"
        np.savez(bad, x=x, y=y)
        with pytest.raises(UsageError) as e:
            load_dataset(str(bad))
        assert message in str(e.value) and "\n" not in str(e.value), (message, str(e.value))
    bad = tmp_path / "labels.npz"
    np.savez(bad, x=np.zeros((50, 10), np.int64), y=y[:40])
    with pytest.raises(UsageError, match="'y' must be 50 non-negative integer labels"):
        load_dataset(str(bad))


def test_small_net_exports_compiles_for_host_and_verifies(tmp_path):
    arch = space.validate({"space": "tiny-transformer", "seq_len": 24, "vocab": 32, "classes": 4, "hidden": 32,
                           "layers": [{"op": "layer", "heads": 2, "ffn": 64}, {"op": "skip"},
                                      {"op": "layer", "heads": 1, "ffn": 128}, {"op": "skip"}]})
    net = models.with_weights(lambda: space.TinyTransformer(arch), 0)
    onnx = export_onnx(net, space.example_input(arch), tmp_path / "tt.onnx")
    res = compile.compile_model(onnx, targets.load_target("host"), tmp_path / "art")
    ver = res.manifest["verification"]
    assert ver["passed"] and ver["reference"] == "onnxruntime"
    assert res.manifest["inputs"] == [{"name": "x", "shape": [1, 24], "dtype": "int64"}]
    assert res.manifest["outputs"][0]["shape"] == [1, 4]
    # the compiler verified token ids 0..3; run the whole vocabulary too, against torch
    from toolkit import runtime

    model = runtime.load(res.artifact)
    for seed in range(3):
        ids = space.example_input(arch, seed)
        got = model.run({"x": ids.numpy()})["y"]
        with torch.no_grad():
            np.testing.assert_allclose(got, net(ids).numpy(), rtol=1e-4, atol=1e-4)
