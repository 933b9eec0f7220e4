"""The generated differential corpus: seeded random small graphs (NHWC TFLite and NCHW ONNX, odd channel
counts, every padding mode, fused epilogues, pooling, resize, concat, residual adds; see
tests/corpus/generated.py), each compiled with the default schedules and checked against the reference
runtime: on the host, and for aarch64 under qemu with the C++ runner (compile's own verification).

`--corpus-size N` (default in conftest.py) and `--corpus-seed S` make longer or different runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import targets
from compile import VerificationError, compile_model
from compile.schedules import cpu_config, rules

from corpus.generated import corpus, int8_corpus
from corpus.kernels import scheduled_kernels_mismatch

ARM_TOOLS = (("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"), ("qemu-aarch64-static", "qemu-user-static"),
             ("cmake", "cmake"))


def pytest_generate_tests(metafunc):
    size = metafunc.config.getoption("--corpus-size")
    if "host_index" in metafunc.fixturenames:
        metafunc.parametrize("host_index", range(size))
    if "arm_index" in metafunc.fixturenames:
        metafunc.parametrize("arm_index", range(0, size, 4))
    if "int8_index" in metafunc.fixturenames:
        metafunc.parametrize("int8_index", range(size // 2))
    if "int8_arm_index" in metafunc.fixturenames:
        metafunc.parametrize("int8_arm_index", range(0, size // 2, 4))


@pytest.fixture(scope="module")
def graphs(request, tmp_path_factory):
    cfg = request.config
    return corpus(cfg.getoption("--corpus-size"), cfg.getoption("--corpus-seed"), tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def int8_graphs(request, tmp_path_factory):
    """Generated graphs quantized to full integer by LiteRT's own quantizer (half the corpus size)."""
    cfg = request.config
    return int8_corpus(cfg.getoption("--corpus-size") // 2, cfg.getoption("--corpus-seed"),
                       tmp_path_factory.mktemp("int8-corpus"))


def _check(graph, target, out: Path) -> dict:
    try:
        manifest = compile_model(graph.path, target, out).manifest
    except VerificationError as exc:
        pytest.fail(f"{graph.describe()}: {exc}")
    return manifest["verification"]


def test_corpus_covers_both_layouts_and_the_risky_ops(graphs):
    """The corpus really holds what it is for (so a generator change cannot quietly hollow it out)."""
    text = " ".join(" ".join(g.ops) for g in graphs)
    assert {g.fmt for g in graphs} == {"tflite", "onnx"}
    for op in ("conv", "depthwise", "prelu", "pad", "residual-add"):
        assert op in text, (op, [g.describe() for g in graphs])


def test_generated_graph_on_host(graphs, host_index, tmp_path):
    verification = _check(graphs[host_index], targets.load_target("host"), tmp_path / "art")
    assert verification["passed"] is True, verification


def _check_int8(graph, target, out: Path) -> dict:
    verification = _check(graph, target, out)
    ops = verification["litert_operators"]
    # the artifact equals its QDQ graph within the 2 output steps QDQ models get; every operator of that
    # graph equals LiteRT's integer kernel within 1 step, given LiteRT's own inputs
    assert verification["passed"] is True and ops["passed"] is True and ops["max_steps"] <= 1, (graph.describe(), verification)
    assert verification["litert_end_to_end"]["runtime"] == "litert", verification
    return verification


def test_generated_int8_tflite_on_host(int8_graphs, int8_index, tmp_path):
    verification = _check_int8(int8_graphs[int8_index], targets.load_target("host"), tmp_path / "art")
    assert verification["how"] == "verified on this machine", verification


def test_generated_int8_tflite_on_aarch64_under_qemu(int8_graphs, int8_arm_index, tmp_path):
    for tool, package in ARM_TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: apt-get install {package}")
    # rpi5 has the sdot dot product (int8 activations tensorized), rpi4 plain NEON widening multiplies
    target = "rpi5" if int8_arm_index % 8 == 0 else "rpi4"
    verification = _check_int8(int8_graphs[int8_arm_index], targets.load_target(target), tmp_path / "art")
    assert "qemu-aarch64" in verification["how"], verification


def test_int8_corpus_holds_the_ops_it_is_for(int8_graphs):
    import tflite

    from compile.tflite_int8 import is_quantized_tflite

    text = " ".join(" ".join(g.ops) for g in int8_graphs)
    for op in ("conv", "depthwise", "residual-add"):
        assert op in text, (op, [g.describe() for g in int8_graphs])
    for g in int8_graphs:
        assert is_quantized_tflite(tflite.Model.GetRootAsModel(g.path.read_bytes(), 0)), g.describe()


def test_per_operator_check_catches_a_conversion_error(int8_graphs, tmp_path, monkeypatch):
    """A converter that gets a convolution's padding wrong: the artifact still equals its (wrong) QDQ graph,
    but the per-operator check against LiteRT's kernels fails the compile and nothing is written."""
    from compile.tflite_int8 import _Converter

    graph = next(g for g in int8_graphs if "/SAME/" in " ".join(g.ops) and "conv" in " ".join(g.ops))
    real = _Converter.same_pads

    def shifted(self, *args):   # one more row of padding on top, one fewer at the bottom: same shapes, wrong rows
        top, left, bottom, right = real(self, *args)
        return [top + 1, left, bottom - 1, right] if bottom > 0 else [top, left, bottom, right]

    monkeypatch.setattr(_Converter, "same_pads", shifted)
    with pytest.raises(VerificationError, match="differs from LiteRT's integer kernels at .* conversion error"):
        compile_model(graph.path, targets.load_target("host"), tmp_path / "art")
    assert not (tmp_path / "art").exists()


# Every CPU ISA the schedules size for, by the target that selects it.
ISA_TARGETS = {"x86-avx2": "x86-64-avx2", "x86-avx512": "x86-64-avx512", "aarch64-neon": "rpi4", "armv7-neon": "armv7"}


@pytest.mark.parametrize("isa", list(ISA_TARGETS))
def test_generated_kernels_scheduled_for_each_isa_match_unscheduled(graphs, isa):
    """The schedules built for each ISA (AVX-512 on an AVX2 host, and the reverse) compute what the
    unscheduled kernels compute: kernel by kernel, run on this CPU (see tests/corpus/kernels.py)."""
    cfg = cpu_config(targets.load_target(ISA_TARGETS[isa]))
    assert cfg.isa == isa
    checked = 0
    for graph in graphs[:8]:
        n, bad = scheduled_kernels_mismatch(graph.path, cfg)
        assert not bad, (graph.describe(), bad)
        checked += n
    assert checked >= 8, checked


def test_generated_graph_on_aarch64_under_qemu(graphs, arm_index, tmp_path):
    for tool, package in ARM_TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: apt-get install {package}")
    verification = _check(graphs[arm_index], targets.load_target("rpi4"), tmp_path / "art")
    assert verification["passed"] is True and "qemu-aarch64" in verification["how"], verification


def _first_failure(graphs, target, tmp_path):
    """The first graph (with padding: the only ones the broken rule can hit) whose compile fails verification."""
    for graph in graphs:
        if not any(op.startswith("pad") for op in graph.ops):
            continue
        try:
            compile_model(graph.path, target, tmp_path / graph.name)
        except VerificationError as exc:
            return graph, exc
    return None


def test_corpus_catches_a_broken_schedule_rule(tmp_path, monkeypatch):
    """Re-introduce the bug MediaPipe models hit (epilogues fused per tile even when they pad the channel axis):
    the corpus must fail. Seed 0's first 24 graphs hold such a kernel; with the real rule they verify."""
    host = targets.load_target("host")
    monkeypatch.setattr(rules, "_pointwise_over", lambda sch, epilogue, out_buf: True)
    caught = _first_failure(corpus(24, 0, tmp_path / "graphs"), host, tmp_path)
    assert caught is not None, "no generated graph exposed the broken rule"
    graph = caught[0]
    # The kernel-level check catches it too, with the schedules sized for every other ISA.
    for isa, target_name in ISA_TARGETS.items():
        _, bad = scheduled_kernels_mismatch(graph.path, cpu_config(targets.load_target(target_name)))
        assert bad, f"the kernel check missed the broken rule for {isa} on {graph.describe()}"
    monkeypatch.undo()
    assert compile_model(graph.path, host, tmp_path / f"{graph.name}-fixed").manifest["verification"]["passed"] is True


def test_broken_schedule_refused_under_qemu_for_aarch64(tmp_path, monkeypatch):
    """`compile --target rpi4` of a model the (broken) schedules get wrong fails under qemu and writes nothing."""
    for tool, package in ARM_TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: apt-get install {package}")
    monkeypatch.setattr(rules, "_pointwise_over", lambda sch, epilogue, out_buf: True)
    caught = _first_failure(corpus(24, 0, tmp_path / "graphs"), targets.load_target("rpi4"), tmp_path)
    assert caught is not None, "no generated graph exposed the broken rule under qemu"
    graph, exc = caught
    message = str(exc)
    assert "qemu-aarch64" in message and "max abs error" in message and "max relative error" in message, message
    assert not (tmp_path / graph.name).exists()
