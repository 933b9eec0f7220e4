"""A target's latency model for a search space, built from networks compiled and benchmarked on it.

Each measurement is a whole random network of the space exported, compiled for the target (the same
fusion and schedules a user's model gets) and timed on the device: in this process on this machine, or on
a board over RPC, never qemu (emulated aarch64 is a functional target). It is timed against a fixed
reference network of the space, the two alternating in ~2 ms chunks (`toolkit.bench.paired`): a network's
latency is its fastest chunk scaled by the reference's best over its fastest in the same run, the
latency of an uncontended device (on a shared VM single runs of one network vary up to 1.4x).

The model has two parts, both refit from the measurements whenever it is loaded (nothing is pickled):
1. a per-kernel table, fitted on the networks measured whole (so every cost is "in context": with the
   fusion, layouts and caches of a real network): for the kinds of kernel the compiler emits for the
   space (mobile-cnn: 1x1 convs, depthwise convs, the stem, the head; tiny-transformer: dense layers,
   attention, normalisation) a cost per multiply-accumulate, per element moved and per kernel (the space's
   `FEATURES`), fitted with non-negative least squares on relative error. A block's latency is the sum of
   its kernels' costs.
2. a correction for whole networks, measured ~ a * table sum + b * blocks + c (non-negative least
   squares, weighted the same way): what per-kernel costs miss about a network as a whole.
Both are linear in the blocks, so a supernet's expected latency over its choices is exact.

Measurements are cached per space, target, TVM version, schedule sources and thread count
(`~/.cache/autoglm/latency/<target>-<key>/measurements.csv`), so a second build measures nothing new.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from compile import AutoglmError, UsageError

from . import spaces

SPEC_VERSION = 2                           # 2: timed against the reference network (1: harness p50s)
FIT_SEEDS = range(0, 1_000_000)            # architectures a model is fitted on: latency_sample(seed) for these seeds
HOLDOUT_SEED0 = 1_000_000                  # held-out architectures: latency_sample(HOLDOUT_SEED0 + i), never fitted on
DEFAULT_SPACE = "mobile-cnn"
REFERENCE_SEED = 424242                    # the reference network: latency_sample(REFERENCE_SEED)
CSV_FIELDS = ("arch", "min_ms", "p50_ms", "ref_min_ms", "chunks", "iterations", "measured_utc")
Progress = Callable[[str], None]


class LatencyModelError(AutoglmError):
    """A latency model that cannot be built or loaded."""


# ---------------------------------------------------------------------------------------------- features

def vector(f: dict[str, float], names: tuple[str, ...]) -> np.ndarray:
    return np.array([f.get(name, 0.0) for name in names])


def network_features(arch: dict[str, Any], lanes: int = 1) -> tuple[np.ndarray, int]:
    """(the feature vector of the whole network under its space's FEATURES, its number of blocks); channels
    counted in whole vectors of `lanes` (see `vector_lanes`)."""
    space = spaces.of(arch)
    total = vector(space.fixed_features(arch), space.FEATURES)
    n = 0
    for b in space.blocks(arch):
        total += vector(space.block_features(b, lanes), space.FEATURES)
        n += 1
    return total, n


def vector_lanes(target: Any) -> int:
    """The fp32 vector width, in channels, that the target's kernels work in (its widest channel block:
    16 on AVX-512, 8 on AVX2, 4 on NEON); 1 where convs are not blocked (GPUs)."""
    from compile.layout import block_candidates

    blocks = block_candidates(target)
    return blocks[0] if blocks else 1


# ---------------------------------------------------------------------------------------------- the model

@dataclass
class LatencyModel:
    """Per-kernel costs (ms per MMAC and per kernel) and the whole-network correction, for one target."""

    target: str
    key: str                                   # the cache key: target, TVM, schedules, threads
    threads: int
    where: str                                 # host, rpc://...
    coef: np.ndarray                           # per FEATURES, >= 0
    correction: tuple[float, float, float]     # measured ~ a * table + b * blocks + c
    fit_count: int
    cpu: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    space: str = DEFAULT_SPACE
    lanes: int = 1                             # channels are counted in whole vectors of this many

    def table_ms(self, f: np.ndarray) -> float:
        return float(f @ self.coef)

    def block_ms(self, b: dict[str, Any]) -> float:
        """A block's latency contribution (table cost, corrected): what the supernet's expectation sums."""
        a, per_block, _ = self.correction
        sp = spaces.get(self.space)
        return a * self.table_ms(vector(sp.block_features(b, self.lanes), sp.FEATURES)) + per_block

    def fixed_ms(self, arch: dict[str, Any]) -> float:
        """The latency of what every network has (stem, head, the correction's constant)."""
        a, _, c = self.correction
        sp = spaces.get(self.space)
        return a * self.table_ms(vector(sp.fixed_features(arch), sp.FEATURES)) + c

    def predict(self, arch: dict[str, Any]) -> float:
        """Predicted latency of an architecture in milliseconds."""
        f, n = network_features(arch, self.lanes)
        a, b, c = self.correction
        return a * self.table_ms(f) + b * n + c

    def to_json(self) -> dict[str, Any]:
        return {"spec_version": SPEC_VERSION, "space": self.space, "target": self.target, "key": self.key,
                "threads": self.threads, "where": self.where, "cpu": self.cpu, "fit_count": self.fit_count, "lanes": self.lanes,
                "features": list(spaces.get(self.space).FEATURES), "coef": [float(x) for x in self.coef],
                "correction": list(self.correction), **self.info}


def fit(archs: list[dict[str, Any]], latencies_ms: list[float], lanes: int = 1, **meta: Any) -> LatencyModel:
    """Fit the table and the correction to measured networks (both non-negative least squares on relative error)."""
    if len(archs) < 8:
        raise LatencyModelError(f"{len(archs)} measured networks are too few to fit a latency model; measure at least 8 (--samples)")
    y = np.asarray(latencies_ms, float)
    feats = [network_features(a, lanes) for a in archs]
    x = np.stack([f for f, _ in feats])
    coef = _nnls_relative(x, y)
    blocks = np.array([n for _, n in feats], float)
    a, b, c = _nnls_relative(np.stack([x @ coef, blocks, np.ones_like(y)], 1), y)
    return LatencyModel(coef=coef, correction=(float(a), float(b), float(c)), fit_count=len(archs),
                        space=archs[0]["space"], lanes=lanes, **meta)


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ||(x c - y) / y|| over c >= 0 (columns scaled for conditioning)."""
    from scipy.optimize import nnls

    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    c, _ = nnls((x / scale) / y[:, None], np.ones_like(y))
    return c / scale


def accuracy(model: LatencyModel, archs: list[dict[str, Any]], measured_ms: list[float]) -> dict[str, Any]:
    """How well `model` predicts measured latencies: fraction within +-10%, mean abs % error, Spearman rho."""
    from scipy.stats import spearmanr

    pred = np.array([model.predict(a) for a in archs])
    y = np.asarray(measured_ms, float)
    rel = np.abs(pred - y) / y
    rho = float(spearmanr(pred, y).statistic) if len(y) > 2 else float("nan")
    return {"architectures": len(y), "within_10pct": float((rel <= 0.10).mean()), "within_5pct": float((rel <= 0.05).mean()),
            "mean_abs_pct_error": float(100 * rel.mean()), "max_abs_pct_error": float(100 * rel.max()),
            "spearman": rho, "measured_ms_range": [float(y.min()), float(y.max())]}


# ---------------------------------------------------------------------------------------------- measuring

def _schedule_sources_digest() -> str:
    import compile as compile_pkg

    root = Path(compile_pkg.__file__).parent
    h = hashlib.sha256()
    for p in sorted([*root.glob("schedules/*.py"), root / "layout.py", root / "relax_passes.py", root / "build.py"]):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def cache_key(target: Any, threads: int, where: str, space: str = DEFAULT_SPACE) -> tuple[str, dict[str, Any]]:
    """The key measurements are cached under, and what went into it."""
    import tvm

    parts = {"space": space, "spec": SPEC_VERSION, "target": target.name, "tvm_target": target.tvm,
             "tvm": tvm.__version__, "schedules": _schedule_sources_digest(), "threads": threads, "where": where}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16], parts


def cache_root() -> Path:
    return Path(os.environ.get("AUTOGLM_CACHE", Path.home() / ".cache" / "autoglm")) / "latency"


class MeasurementStore:
    """Append-only CSV of measured networks: one fsynced line per measurement, so an interrupted build keeps
    every finished measurement and a torn last line is ignored.

    A row keeps the network's fastest chunk and the reference's fastest chunk of the same run; `get` adds
    the latency, min_ms * ref_best / ref_min_ms, with ref_best the reference's best over every row (so all
    rows are on one scale, recomputed whenever the file is read)."""

    def __init__(self, directory: Path, space: str = DEFAULT_SPACE):
        self.dir = directory
        self.space = spaces.get(space)
        self.path = directory / "measurements.csv"
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        lines = self.path.read_text(errors="replace").splitlines()
        if not lines or lines[0].split(",") != list(CSV_FIELDS):
            raise LatencyModelError(f"{self.path} is not a measurements file of this toolkit (its header is not "
                                    f"{','.join(CSV_FIELDS)}); move it away to measure again")
        for line in lines[1:]:
            # line by line: an unterminated quote in a torn line must not swallow the lines after it
            try:
                row = dict(zip(CSV_FIELDS, next(csv.reader([line]), []), strict=True))
                arch = self.space.validate(json.loads(row["arch"]))
                rec = {"arch": arch, "min_ms": float(row["min_ms"]), "p50_ms": float(row["p50_ms"]),
                       "ref_min_ms": float(row["ref_min_ms"]), "chunks": int(row["chunks"]),
                       "iterations": int(row["iterations"]), "measured_utc": row["measured_utc"]}
            except (TypeError, ValueError, KeyError, csv.Error, AutoglmError):
                continue  # a line torn by a kill, or edited by hand: not a measurement
            if all(math.isfinite(rec[k]) and rec[k] > 0 for k in ("min_ms", "p50_ms", "ref_min_ms")):
                self.rows[arch_key(arch)] = rec

    @property
    def ref_best_ms(self) -> float | None:
        """The reference network's fastest chunk over every measurement (None before the first)."""
        return min((r["ref_min_ms"] for r in self.rows.values()), default=None)

    def get(self, arch: dict[str, Any]) -> dict[str, Any] | None:
        """The measurement of `arch` with its `latency_ms` on the store's scale, or None."""
        rec = self.rows.get(arch_key(arch))
        if rec is None:
            return None
        return {**rec, "latency_ms": rec["min_ms"] * self.ref_best_ms / rec["ref_min_ms"]}  # type: ignore[operator]

    def add(self, arch: dict[str, Any], timing: Any) -> dict[str, Any]:
        """Append one measurement (a toolkit.bench.paired.PairedTiming) and return it as `get` does."""
        rec = {"arch": arch, "min_ms": timing.min_ms, "p50_ms": timing.p50_ms, "ref_min_ms": timing.ref_min_ms,
               "chunks": len(timing.net_ms), "iterations": timing.iterations,
               "measured_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        self.dir.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        buf = io.StringIO()
        writer = csv.DictWriter(buf, CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({**rec, "arch": json.dumps(arch, sort_keys=True, separators=(",", ":"))})
        with open(self.path, "a", encoding="utf-8") as f:
            if not new and not _ends_with_newline(self.path):
                f.write("\n")  # a torn line from a killed build stays its own (ignored) line
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        self.rows[arch_key(arch)] = rec
        return self.get(arch)  # type: ignore[return-value]


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def arch_key(arch: dict[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


@dataclass
class Device:
    """Where latencies are measured: this machine or a board over RPC (qemu is refused)."""

    target: Any
    threads: int
    rpc: Any = None                           # a toolkit.bench.config.DeviceSpec of kind rpc, or None

    @property
    def where(self) -> str:
        return str(self.rpc) if self.rpc is not None else "host"


def check_device(target: Any, rpc: Any = None) -> None:
    """Emulated timings are not latency: a target this machine runs only under qemu needs a board."""
    if rpc is not None:
        return
    how = target.runnable_here()
    if how != "native":
        raise UsageError(f"target {target.name} does not run natively on this machine (here: {how}); its latency "
                         f"must be measured on the board: pass --device rpc://HOST:PORT (qemu timings are never latency data)")


def reference_architecture(space: str) -> dict[str, Any]:
    """The network every measurement of `space` is timed against."""
    return spaces.get(space).latency_sample(REFERENCE_SEED)


def compile_network(arch: dict[str, Any], target: Any, out: Path, seed: int = 0) -> Path:
    """Export `arch` with seeded weights and compile it for `target` into `out` (random weights: what is
    measured is the time; search and pipeline verify what they ship)."""
    import torch

    from compile import compile_model
    from toolkit import models
    from toolkit.export import export_onnx

    space = spaces.of(arch)
    with torch.no_grad():
        module = models.with_weights(lambda: space.build_module(arch), seed)
        example = space.example_input(arch, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(module, example, out.parent / f"{out.name}.onnx")
    if out.exists():
        shutil.rmtree(out)
    compile_model(onnx_path, target, out, verify=False, time_kernels=False)
    return out


class Timer:
    """The device side of measuring: the reference network compiled (once per cache directory), loaded on
    the device (this process, or one RPC session) and calibrated; `time(artifact)` times a network against it."""

    def __init__(self, device: Device, store: MeasurementStore, workdir: Path):
        from compile import AutoglmError as _Err
        from toolkit.bench import paired

        self.device, self.store, self.workdir = device, store, workdir
        self.session = None
        if device.rpc is not None:
            from toolkit.bench.rpc import connect

            (self.session,) = connect(device.rpc, timeout=120.0, fleet=False)
        ref_art = store.dir / "reference"
        try:
            self.ref = self._load(ref_art)
        except (_Err, OSError):  # absent, or not a whole artifact (a build killed while compiling it)
            staged = compile_network(reference_architecture(store.space.SPACE_NAME), device.target, workdir / "reference")
            store.dir.mkdir(parents=True, exist_ok=True)
            if ref_art.exists():
                shutil.rmtree(ref_art)
            shutil.move(str(staged), str(ref_art))
            self.ref = self._load(ref_art)
        best = store.ref_best_ms
        self.best_ms = min(best, paired.calibrate(self.ref)) if best is not None else paired.calibrate(self.ref)

    def _load(self, artifact: Path):
        from toolkit.bench import paired

        if self.session is not None:
            return paired.load_remote(self.session, artifact, self.device.threads)
        return paired.load_local(artifact, self.device.threads)

    def time(self, artifact: Path):
        """A toolkit.bench.paired.PairedTiming of `artifact` against the reference."""
        from toolkit.bench import paired

        timing = paired.time_against(self._load(artifact), self.ref, self.best_ms)
        self.best_ms = min(self.best_ms, timing.ref_min_ms)
        return timing


def measure_all(archs: Iterable[dict[str, Any]], device: Device, store: MeasurementStore,
                progress: Progress | None = None, label: str = "measuring") -> list[dict[str, Any]]:
    """The measurement of every architecture, measuring only those the store does not have."""
    say = progress or (lambda _m: None)
    archs = list(archs)
    todo = [a for a in archs if store.get(a) is None]
    if len(todo) < len(archs):
        say(f"{label}: {len(archs) - len(todo)} of {len(archs)} networks already measured (cache {store.dir})")
    if todo:
        from toolkit.bench import paired

        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="autoglm-latency-") as tmp:
            timer = Timer(device, store, Path(tmp))
            compiled = {}  # kept for the second timing below (about 1 MB each, in the temporary directory)
            for i, arch in enumerate(todo, 1):
                art = compiled[arch_key(arch)] = compile_network(arch, device.target, Path(tmp) / f"net{i}")
                rec = store.add(arch, timer.time(art))
                eta = (time.monotonic() - t0) / i * (len(todo) - i)
                say(f"{label}: {i}/{len(todo)} {spaces.of(arch).describe(arch)}: {rec['latency_ms']:.3f} ms, ~{eta:.0f} s left")
            # a network timed before the reference's best was known stopped at a looser bar: time it again
            # (the later row replaces the earlier one when its reference chunk came closer to the best). One that
            # ran to MAX_PAIRS never stopped early: timing it again would only repeat that (at 2 threads on a
            # shared VM most do: the stop needs both cores quiet at once).
            stale = [a for a in todo if store.rows[arch_key(a)]["ref_min_ms"] > (1 + paired.STOP_TOLERANCE) * timer.best_ms
                     and store.rows[arch_key(a)]["chunks"] < paired.MAX_PAIRS]
            for i, arch in enumerate(stale, 1):
                old = store.rows[arch_key(arch)]
                timing = timer.time(compiled[arch_key(arch)])
                if timing.ref_min_ms < old["ref_min_ms"]:
                    store.add(arch, timing)
                say(f"{label}: timed again {i}/{len(stale)} (measured before the reference's best was known): "
                    f"{store.get(arch)['latency_ms']:.3f} ms")  # type: ignore[index]
    return [store.get(a) for a in archs]  # type: ignore[misc]


def fit_architectures(samples: int, space: str = DEFAULT_SPACE) -> list[dict[str, Any]]:
    """The architectures a model is fitted on: the first `samples` distinct random members of the space."""
    sp = spaces.get(space)
    return _distinct((sp.latency_sample(s) for s in FIT_SEEDS), samples)


def holdout_architectures(count: int, space: str = DEFAULT_SPACE, exclude: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Held-out random architectures (other seeds, and none that the model was fitted on)."""
    sp = spaces.get(space)
    skip = {arch_key(a) for a in exclude}
    gen = (sp.latency_sample(HOLDOUT_SEED0 + s) for s in range(10 ** 6))
    return _distinct((a for a in gen if arch_key(a) not in skip), count)


def _distinct(gen: Iterable[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    seen, out = set(), []
    for a in gen:
        k = arch_key(a)
        if k not in seen:
            seen.add(k)
            out.append(a)
            if len(out) == count:
                break
    return out


def model_dir(device: Device, space: str = DEFAULT_SPACE) -> tuple[Path, str, dict[str, Any]]:
    key, parts = cache_key(device.target, device.threads, device.where, space)
    return cache_root() / f"{device.target.name}-{key}", key, parts


def build(device: Device, samples: int, progress: Progress | None = None, space: str = DEFAULT_SPACE) -> tuple[LatencyModel, Path]:
    """Measure (what the cache lacks) `samples` random networks on the device, fit, and write model.json."""
    from toolkit.bench.sysinfo import cpu_model

    directory, key, parts = model_dir(device, space)
    store = MeasurementStore(directory, space)
    archs = fit_architectures(samples, space)
    recs = measure_all(archs, device, store, progress, "latency-model build")
    model = fit(archs, [r["latency_ms"] for r in recs], vector_lanes(device.target), target=device.target.name, key=key,
                threads=device.threads, where=device.where, cpu=cpu_model() if device.rpc is None else "", info={"cache_key_parts": parts})
    model.info["fit_accuracy"] = accuracy(model, archs, [r["latency_ms"] for r in recs])
    _write_json(directory / "model.json", model.to_json())
    return model, directory


def load(device: Device, space: str = DEFAULT_SPACE) -> LatencyModel:
    """The cached model of a device, refit from its measurements (the JSON says how many were used)."""
    directory, key, parts = model_dir(device, space)
    path = directory / "model.json"
    if not path.is_file():
        raise LatencyModelError(f"no {space} latency model for target {device.target.name} ({device.threads} threads, {device.where}) "
                                f"with this TVM and these schedules; run `autoglm latency-model build --space {space} "
                                f"--target {device.target.name}` first")
    try:
        doc = json.loads(path.read_text())
        count = int(doc["fit_count"])
        if doc.get("spec_version") != SPEC_VERSION or doc.get("key") != key:
            raise ValueError("spec or key differs")
    except (ValueError, KeyError, TypeError) as e:
        raise LatencyModelError(f"{path} is not a latency model of this version ({e}); rebuild it with `autoglm latency-model build`") from None
    store = MeasurementStore(directory, space)
    archs = fit_architectures(count, space)
    recs = [store.get(a) for a in archs]
    if any(r is None for r in recs):
        raise LatencyModelError(f"{directory / 'measurements.csv'} lacks measurements the model was fitted on; rebuild it with "
                                f"`autoglm latency-model build --space {space} --target {device.target.name}`")
    model = fit(archs, [r["latency_ms"] for r in recs], vector_lanes(device.target), target=device.target.name,  # type: ignore[index]
                key=key, threads=device.threads, where=device.where, cpu=doc.get("cpu", ""), info={"cache_key_parts": parts})
    model.info["fit_accuracy"] = accuracy(model, archs, [r["latency_ms"] for r in recs])  # type: ignore[index]
    return model


def evaluate(device: Device, holdout: int, progress: Progress | None = None,
             space: str = DEFAULT_SPACE) -> tuple[dict[str, Any], LatencyModel, list]:
    """Measure `holdout` held-out random networks (cached) and compare them with the model's predictions."""
    model = load(device, space)
    directory, _, _ = model_dir(device, space)
    store = MeasurementStore(directory, space)
    archs = holdout_architectures(holdout, space, exclude=fit_architectures(model.fit_count, space))
    recs = measure_all(archs, device, store, progress, "latency-model eval")
    measured = [r["latency_ms"] for r in recs]
    report = accuracy(model, archs, measured)
    report["fit_count"] = model.fit_count
    doc = {**json.loads((directory / "model.json").read_text()), **model.to_json(), "holdout_accuracy": report}
    _write_json(directory / "model.json", doc)
    rows = [(a, m, model.predict(a)) for a, m in zip(archs, measured)]
    return report, model, rows


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    from compile.fileio import write_atomic

    write_atomic(path, json.dumps(doc, indent=2) + "\n")
