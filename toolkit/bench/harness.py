"""One benchmark run: every runtime at every thread count, interleaved block by block, outputs checked.

For each thread count the toolkit's runtime and the baseline each get their own process (so that
peak memory and thread pools are their own), load, run once on the same inputs (first inference,
the outputs that are compared), warm up, and then take turns: one block of timed iterations each,
alternating which goes first, until `repeat` iterations each are done. An int8 artifact benched with
the float model it was quantized from (--model-file) adds a third runtime to the turns: the reference
runtime on that float model, whose outputs are recorded as int8-vs-fp32 deviation, not checked.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compile import check_artifact, random_inputs, read_manifest
from compile.frontend import TensorSpec
from compile.reference import compare
from targets import host_arch

from .config import LOCAL, QEMU, RPC, BenchConfig
from .errors import BenchError, BenchUsageError
from .result import BASELINE, BASELINE_FP32, TOOLKIT, RuntimeResult
from .sources import (RUNTIME_FOR_FORMAT, ModelSource, fp32_hint, fp32_runtime, missing_source_message,
                      quantized_from_float, resolve_sources)
from .sysinfo import host_info

Progress = Callable[[str], None]


@dataclass
class BenchRun:
    config: BenchConfig
    manifest: dict[str, Any]
    run_id: str
    started_utc: str
    host: dict[str, Any]
    source: ModelSource | None
    baseline: str | None                      # the timed baseline runtime, if any
    reference: str | None                     # the runtime the outputs were checked against
    fp32_source: ModelSource | None = None    # int8 artifacts: the float model, timed as a second baseline
    results: list[RuntimeResult] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    fp32_deviation: list[dict[str, Any]] = field(default_factory=list)  # int8 outputs vs the fp32 model's
    profile: dict[str, Any] | None = None
    finished_utc: str | None = None
    duration_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def outputs_match(self) -> bool | None:
        return all(c["passed"] for c in self.comparisons) if self.comparisons else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_device(cfg: BenchConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    arch, here = manifest["target"]["arch"], host_arch()
    kind = cfg.device.kind
    if kind == LOCAL:
        return check_artifact(cfg.artifact, for_arch=here)
    manifest = check_artifact(cfg.artifact)
    if kind == QEMU and arch == here:
        raise BenchUsageError(f"{cfg.artifact} is built for {arch}, this machine's own architecture: bench it with "
                              f"--device local (qemu emulates other architectures)")
    if kind == QEMU and manifest["target"]["device"] != "cpu":
        raise BenchUsageError(f"{cfg.artifact} is a {manifest['target']['device']} artifact; qemu emulates CPUs only")
    return manifest


def _choose_baseline(cfg: BenchConfig, fmt: str) -> str | None:
    if cfg.baseline in (None, "none"):
        return None
    natural = RUNTIME_FOR_FORMAT[fmt]
    if cfg.baseline == "auto":
        return natural
    if cfg.baseline != natural:
        raise BenchUsageError(f"--baseline {cfg.baseline} cannot run this artifact's {fmt} model; use --baseline {natural}")
    return natural


def _toolkit_backend(cfg, run: BenchRun, threads, inputs, workdir, runtime_dir):
    if cfg.device.kind == RPC:
        from .rpc import RpcBackend

        r = RuntimeResult("autoglm-rpc", TOOLKIT, threads, str(cfg.device))
        return RpcBackend(cfg.device, cfg.artifact, run.manifest, r, inputs, warmup=cfg.warmup, timeout=cfg.timeout)
    if cfg.python_runtime:
        from .workers import WorkerBackend

        r = RuntimeResult("autoglm-python", TOOLKIT, threads, "host")
        return WorkerBackend("python", cfg.artifact, r, cfg.warmup, cfg.timeout, workdir)
    from .native_backend import NativeBackend

    emulate = cfg.device.kind == QEMU
    where = f"qemu-{run.manifest['target']['arch']}" if emulate else "host"
    r = RuntimeResult("autoglm-cpp", TOOLKIT, threads, where, emulated=emulate)
    return NativeBackend(cfg.artifact, r, inputs, warmup=cfg.warmup, timeout=cfg.timeout, runtime_dir=runtime_dir,
                         emulate=emulate)


def _reference_backend(run: BenchRun, threads: int, warmup: int, timeout: float, workdir: Path, role: str,
                       literal: bool = False):
    from .workers import WorkerBackend

    if role == BASELINE_FP32:  # the float model an int8 artifact was quantized from
        fmt = run.fp32_source.format
        r = RuntimeResult(fp32_runtime(fmt), role, threads, "host")
        return WorkerBackend(RUNTIME_FOR_FORMAT[fmt], run.fp32_source.path, r, warmup, timeout, workdir)
    if literal:
        r = RuntimeResult("onnxruntime (QDQ graph as written)", role, threads, "host")
        return WorkerBackend("onnxruntime-literal", _qdq_graph(run), r, warmup, timeout, workdir)
    name = RUNTIME_FOR_FORMAT[run.source.format]
    r = RuntimeResult(name, role, threads, "host")
    return WorkerBackend(name, run.source.path, r, warmup, timeout, workdir)


def _qdq_graph(run: BenchRun) -> Path | None:
    """The QDQ graph an int8 artifact computes, which its outputs are checked against (executed as written), or
    None for other artifacts: an ONNX model's own QDQ file; for a full-integer TFLite model, the QDQ graph its
    import made (prepared.onnx in the artifact).

    The runtimes' own integer kernels (what the baseline times) requantize differently from the QDQ graph's
    float semantics, which the artifact follows: onnxruntime measured 1 output step apart on MobileNetV2 and 3
    on BERT-mini (its attention runs in integers there); LiteRT's steps travel through the next operators (4
    steps at the output of a generated graph). More than a correct int8 artifact may differ from its graph."""
    if run.manifest.get("precision", {}).get("mode") != "int8" or run.source is None:
        return None
    if run.source.format == "onnx":
        return run.source.path
    if "prepared.onnx" in run.manifest.get("files", {}):
        return run.config.artifact / "prepared.onnx"
    return None


def _runtime_dir(cfg: BenchConfig, arch: str) -> Path | None:
    if cfg.device.kind == RPC or cfg.python_runtime:
        return None
    from toolkit import native

    try:
        return native.build_runtime(arch)
    except native.NativeRuntimeError as exc:
        raise BenchError(f"cannot build the C++ runner for {arch}: {exc}") from None


def _atol_for(run: BenchRun, cfg: BenchConfig) -> float:
    """int8 artifacts: the tolerance `compile` verified them with (compile.INT8_VERIFY_STEPS output steps)."""
    if _qdq_graph(run) is None:
        return cfg.atol
    from compile import INT8_VERIFY_STEPS, quantized_output_steps

    steps = quantized_output_steps(run.source.path, run.source.format)
    return max([cfg.atol] + [INT8_VERIFY_STEPS * 1.001 * s for s in steps])


def _compare(run: BenchRun, actual: RuntimeResult, expected: RuntimeResult, cfg: BenchConfig) -> None:
    sets = [actual.outputs, *actual.extra_outputs]
    worst = None
    atol = _atol_for(run, cfg)
    for outs in sets:
        c = compare(outs, expected.outputs, atol, cfg.rtol)
        if worst is None or (not c.passed and worst.passed) or c.max_abs_error > worst.max_abs_error:
            worst = c
    run.comparisons.append({
        "runtime": actual.runtime, "threads": actual.threads, "where": actual.where,
        "against": expected.runtime, "against_threads": expected.threads, "output_sets": len(sets), **worst.to_json(),
    })


def _deviation_from_fp32(actual: RuntimeResult, fp32: RuntimeResult) -> dict[str, Any]:
    """How far an int8 runtime's outputs are from the fp32 model's on the same inputs (recorded, not checked).

    Argmax agreement is over the rows of every 2-D output with more than one column (logits); None without one."""
    worst, agree, rows = 0.0, 0, 0
    for a, e in zip(actual.outputs, fp32.outputs):
        a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
        if a.shape != e.shape:  # a float model with other output shapes: nothing comparable to say
            return {"runtime": actual.runtime, "threads": actual.threads, "against": fp32.runtime,
                    "max_abs_error": None, "argmax_agreement": None, "argmax_rows": 0}
        if a.size:
            worst = max(worst, float(np.abs(a - e).max()))
        if a.ndim == 2 and a.shape[1] > 1:
            agree += int((a.argmax(1) == e.argmax(1)).sum())
            rows += a.shape[0]
    return {"runtime": actual.runtime, "threads": actual.threads, "against": fp32.runtime, "max_abs_error": worst,
            "argmax_agreement": agree / rows if rows else None, "argmax_rows": rows}


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> BenchRun:
    """Run the benchmark `cfg` describes. Raises BenchError (nothing partial is returned) on any failure."""
    say = progress or (lambda _msg: None)
    cfg.validate()
    manifest = _check_device(cfg, read_manifest(cfg.artifact))
    fmt = manifest["model"]["format"]
    baseline = _choose_baseline(cfg, fmt)
    sources = resolve_sources(cfg.artifact, manifest, cfg.model_file)
    source = sources.reference
    if baseline and source is None:
        raise BenchUsageError(missing_source_message(cfg.artifact, manifest, baseline))
    if cfg.profile and cfg.device.kind != LOCAL:
        raise BenchUsageError("--profile runs the artifact in-process on this machine (--device local); per-kernel "
                              "profiles under qemu or over RPC are not supported")
    threads_list = cfg.threads or [int(manifest["target"].get("threads") or 1)]
    run = BenchRun(cfg, manifest, uuid.uuid4().hex, _now(), host_info(), source, baseline,
                   RUNTIME_FOR_FORMAT[fmt] if source else None, fp32_source=sources.fp32 if baseline else None)
    if baseline and quantized_from_float(manifest) and sources.fp32 is None:
        run.notes.append(fp32_hint(manifest))
    elif sources.fp32 is not None and not baseline:
        run.notes.append(f"--model-file {sources.fp32.path} (the float model) is timed only with --baseline "
                         f"{RUNTIME_FOR_FORMAT[fmt]} or auto; the outputs were checked against the artifact's "
                         f"quantized model")
    if source is None:
        run.notes.append(f"outputs not checked against a reference runtime: {manifest['model']['source_file']} does "
                         f"not ship in the artifact (pass --model-file)")
    specs = [TensorSpec.from_json(s) for s in manifest["inputs"]]
    inputs = random_inputs(specs, cfg.seed)
    runtime_dir = _runtime_dir(cfg, manifest["target"]["arch"])
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="autoglm-bench-"))
    active: list = []
    try:
        input_files = {}
        for i, (name, arr) in enumerate(inputs.items()):
            p = workdir / f"input{i}.npy"
            np.save(p, arr, allow_pickle=False)
            input_files[name] = str(p)
        reference_result: RuntimeResult | None = None
        literal = _qdq_graph(run) is not None
        if literal:
            run.reference = "onnxruntime"
        if source is not None and (baseline is None or literal) and cfg.check_outputs:
            origin = f"{_qdq_graph(run).name}, the QDQ graph as written" if literal else source.origin
            say(f"reference outputs from {run.reference} ({origin})")
            ref = _reference_backend(run, threads_list[0], 0, cfg.timeout, workdir, "reference", literal)
            active.append(ref)
            ref.start(input_files)
            ref.finish()
            active.remove(ref)
            reference_result = ref.result
        for threads in threads_list:
            backends = [_toolkit_backend(cfg, run, threads, inputs, workdir, runtime_dir)]
            if baseline:
                backends.append(_reference_backend(run, threads, cfg.warmup, cfg.timeout, workdir, BASELINE))
            if run.fp32_source is not None:  # the third runtime of the turns: the float model
                backends.append(_reference_backend(run, threads, cfg.warmup, cfg.timeout, workdir, BASELINE_FP32))
            for b in backends:
                active.append(b)
                say(f"threads={threads}: starting {b.result.runtime} on {b.result.where}")
                b.start(input_files)
            done, rnd = 0, 0
            while done < cfg.repeat:
                n = min(cfg.block_size, cfg.repeat - done)
                for b in (backends if rnd % 2 == 0 else backends[::-1]):
                    b.block(n)
                before, done, rnd = done, done + n, rnd + 1
                if done == cfg.repeat or 4 * done // cfg.repeat > 4 * before // cfg.repeat:
                    say(f"threads={threads}: timed {done}/{cfg.repeat} iterations per runtime")
            for b in backends:
                b.finish()
                active.remove(b)
                run.results.append(b.result)
            expected = backends[1].result if baseline and not literal else reference_result
            if expected is None and threads != threads_list[0]:
                expected = next(r for r in run.results if r.role == TOOLKIT and r.threads == threads_list[0])
            if expected is not None:
                _compare(run, backends[0].result, expected, cfg)
            if run.fp32_source is not None:
                run.fp32_deviation += [_deviation_from_fp32(b.result, backends[2].result) for b in backends[:2]]
        if cfg.profile:
            run.profile = _profile(cfg, run, threads_list[0], workdir, input_files, say)
    except BaseException:
        for b in active:
            b.abort()
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run.finished_utc = _now()
    run.duration_s = time.monotonic() - t0
    return run


def _profile(cfg: BenchConfig, run: BenchRun, threads: int, workdir: Path, input_files, say) -> dict[str, Any]:
    from .workers import WorkerBackend

    say(f"profiling kernels with vm.set_instrument ({threads} threads)")
    r = RuntimeResult("autoglm-python", "profile", threads, "host")
    b = WorkerBackend("python", cfg.artifact, r, 0, cfg.timeout, workdir)
    try:
        b.start(input_files)
        iterations = max(1, min(cfg.repeat, 20))
        prof = b.profile(iterations)
        b.finish()
    except BaseException:
        b.abort()
        raise
    return {"method": "vm.set_instrument (in-process Python runtime; shares are of instrumented kernel time)",
            "threads": threads, **prof}
