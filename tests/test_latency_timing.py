"""How the latency model's networks are timed: against the space's reference network, chunk by chunk
(toolkit.bench.paired), in this process or over TVM RPC, with the compiled reference cached per cache directory."""

from __future__ import annotations

import pytest

import targets
from compile import AutoglmError, check_artifact
from conftest import wait_for_rpc_servers
from toolkit.bench import paired
from toolkit.bench.config import parse_device
from toolkit.search import latency


@pytest.fixture(scope="module")
def host():
    return targets.load_target("host", None)


@pytest.fixture(scope="module")
def tiny_and_reference(host, tmp_path_factory):
    """A small network of the space (0.021 ms here, 1 thread) and the reference network (0.33 ms), compiled here."""
    d = tmp_path_factory.mktemp("nets")
    tiny = latency.holdout_architectures(15)[14]
    return (latency.compile_network(tiny, host, d / "tiny"),
            latency.compile_network(latency.reference_architecture("mobile-cnn"), host, d / "reference"))


def test_paired_timing_runs_min_pairs_then_until_the_reference_is_at_its_best(tiny_and_reference):
    tiny, ref = (paired.load_local(a, 1) for a in tiny_and_reference)
    # every chunk is within tolerance of a best this slow: stops at min_pairs
    t = paired.time_against(tiny, ref, 1e9, min_pairs=5, max_pairs=50)
    assert len(t.net_ms) == len(t.ref_ms) == 5 and t.iterations == 5 * tiny.number and tiny.number >= 1
    # a best no chunk reaches: runs to max_pairs
    t = paired.time_against(tiny, ref, 1e-9, min_pairs=5, max_pairs=12)
    assert len(t.net_ms) == len(t.ref_ms) == 12
    assert 0 < t.min_ms <= t.p50_ms and t.ref_min_ms > 0
    # the reference (15x its latency when measured here) times slower than the small network
    assert t.ref_min_ms > 2 * t.min_ms
    with pytest.raises(ValueError):
        paired.time_against(tiny, ref, None, min_pairs=3, max_pairs=2)


def test_a_damaged_cached_reference_is_compiled_again(host, tmp_path):
    store = latency.MeasurementStore(tmp_path / "cache")
    a, b = latency.fit_architectures(2)
    device = latency.Device(host, 1)
    (first,) = latency.measure_all([a], device, store)
    ref = tmp_path / "cache" / "reference"
    manifest = check_artifact(ref)
    assert first["latency_ms"] > 0 and first["chunks"] >= paired.MIN_PAIRS
    lib = ref / manifest["library"]
    lib.write_bytes(lib.read_bytes()[:100])              # a reference torn by a kill, or tampered with
    (second,) = latency.measure_all([b], device, store)
    assert second["latency_ms"] > 0
    check_artifact(ref)                                  # compiled again, whole
    assert latency.MeasurementStore(tmp_path / "cache").get(a) is not None


def test_latency_is_measured_on_the_rpc_server(host, rpc_tracker, tmp_path):
    port, add_server = rpc_tracker
    server = add_server("latency-test")
    wait_for_rpc_servers(port, "latency-test", 1)
    device = latency.Device(host, 1, parse_device(f"rpc://127.0.0.1:{port}/latency-test"))
    store = latency.MeasurementStore(tmp_path / "cache")
    a, b = latency.fit_architectures(2)
    (rec,) = latency.measure_all([a], device, store)
    assert rec["latency_ms"] > 0 and rec["chunks"] >= paired.MIN_PAIRS
    server.kill()                                         # with no server under the key, nothing is timed here instead
    with pytest.raises(AutoglmError, match="latency-test"):
        latency.measure_all([b], device, store)
    assert store.get(b) is None
