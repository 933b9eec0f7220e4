"""The TVM pipeline: import, fuse/schedule, build, package and verify. Public API below.

`compile` never imports `toolkit`; `toolkit` uses what this module exports.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from targets import Target, host_arch

from .artifact import (
    LIBRARY, MANIFEST, SOURCE_TFLITE, check_artifact, check_output_dir, elf_machine, open_artifact, publish,
    read_manifest, staging_dir, write_manifest,
)
from .errors import (
    ArtifactError, AutoglmError, CompileFailure, ModelFormatError, ToolchainError, UnsupportedOperatorError,
    UsageError, VerificationError,
)
from .executor import VMExecutor
from .frontend import ImportedModel, TensorSpec, load_model, parse_shape_overrides
from .progress import Reporter, Stages
from .quantize import Int8Options
from .reference import ReferenceRuntime, compare, random_inputs

__all__ = [
    "ArtifactError", "AutoglmError", "CompileFailure", "CompileResult", "ModelFormatError", "TensorSpec",
    "Int8Options", "ToolchainError", "UnsupportedOperatorError", "UsageError", "VMExecutor", "VerificationError",
    "check_artifact", "check_output_dir", "compile_model", "elf_machine", "load_model", "open_artifact",
    "parse_shape_overrides", "random_inputs", "read_manifest", "LIBRARY", "MANIFEST",
]

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


@dataclass
class CompileResult:
    artifact: Path
    manifest: dict[str, Any]


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def verification_mode(target: Target) -> tuple[str | None, str]:
    """Where an artifact for `target` can be checked here: ("host", ...), ("qemu", ...) or (None, why not)."""
    from .native import emulation_unavailable, emulator_name

    if target.device != "cpu":
        return None, f"target {target.name} ({target.arch}/{target.device}) does not run on this machine"
    if target.arch == host_arch():
        missing = target.missing_cpu_features()
        if missing:
            return None, f"this CPU lacks {', '.join(missing)}, which target {target.name} uses"
        return "host", "on this machine"
    why = emulation_unavailable(target.arch)
    if why is not None:
        return None, f"target {target.name} ({target.arch}) cannot run here: {why}"
    return "qemu", f"under {emulator_name(target.arch)}"


def _reference_run(model: ImportedModel, seed: int) -> tuple[ReferenceRuntime, dict[str, Any], list]:
    """The seeded random inputs and the reference runtime's outputs on them.

    A QDQ model's reference is onnxruntime's literal execution of its graph (no QDQ fusion into
    onnxruntime's own integer kernels, whose requantization differs): the quantized semantics."""
    inputs = random_inputs(model.inputs, seed)
    try:
        if model.tflite_qdq is not None:
            # a full-integer TFLite model: its QDQ graph as written is what the artifact computes (LiteRT's own
            # kernels are checked against that graph operator by operator: _litert_checks)
            ref = ReferenceRuntime.open(model.tflite_qdq.model.SerializeToString(), "onnx", literal=True)
        else:
            ref = ReferenceRuntime.open(model.path, model.format, literal=model.quantized)
        expected = ref.run(inputs)
    except AutoglmError:
        raise
    except Exception as exc:  # onnxruntime / LiteRT refusing the model: theirs to say, ours to make one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CompileFailure(f"the reference runtime could not run {model.path.name} ({first}), so the artifact cannot "
                             f"be verified; compile with --no-verify to skip the check") from None
    return ref, inputs, expected


# A QDQ graph's float ops (softmax, GELU, the requantization multiply) round slightly differently here
# and in onnxruntime; where such a difference crosses a rounding tie of an intermediate quantize, the
# tensor moves by one step and the output by a step or two (BERT-mini: 2 output steps; the CNNs: 0-1).
# A miscompile is off by many steps.
INT8_VERIFY_STEPS = 2


def _quantized_atol(model: ImportedModel, atol: float) -> float:
    """A QDQ model's outputs may be a step or two apart (see INT8_VERIFY_STEPS)."""
    if not model.quantized:
        return atol
    return max([atol] + [INT8_VERIFY_STEPS * 1.001 * s for s in quantized_output_steps(model.path, model.format)])


def quantized_output_steps(path: Path, fmt: str) -> list[float]:
    """The quantization step of each output of a quantized model that has one (in the output's units)."""
    if fmt == "tflite":
        import tflite

        from .tflite_int8 import output_steps as tflite_steps

        return tflite_steps(tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0))
    from .quantize import output_steps

    return list(output_steps(Path(path)).values())


def verify_library(lib_path: Path, model: ImportedModel, device: str, *, seed: int, atol: float, rtol: float) -> dict[str, Any]:
    """Run the compiled library and the reference runtime on the same random inputs and compare."""
    atol = _quantized_atol(model, atol)
    ref, inputs, expected = _reference_run(model, seed)
    actual = VMExecutor(lib_path, device).run([inputs[s.name] for s in model.inputs])
    result = compare(actual, expected, atol, rtol)
    return _litert_checks(model, inputs, actual, {
        "reference": ref.name, "reference_version": ref.version, "seed": seed, "how": "verified on this machine",
        **result.to_json()})


def _litert_checks(model: ImportedModel, inputs: dict[str, Any], actual: list, verification: dict[str, Any]) -> dict[str, Any]:
    """A full-integer TFLite model: its QDQ graph's operators against LiteRT's integer kernels (a conversion
    error fails the verification), and the artifact's outputs against LiteRT's end to end (recorded: roundings
    of a step at one operator travel through the next ones, see compile/tflite_int8.py)."""
    if model.tflite_qdq is None:
        return verification
    from .tflite_int8 import check_operators_against_litert

    ops = check_operators_against_litert(model.path, model.tflite_qdq, inputs)
    ref = ReferenceRuntime.open(model.path, "tflite")
    litert = ref.run(inputs)
    steps = quantized_output_steps(model.path, "tflite")
    diffs = [np.abs(a.astype(np.float64) - e.astype(np.float64)) / (s or 1.0) for a, e, s in zip(actual, litert, steps)]
    end = {"runtime": ref.name, "version": ref.version,
           "max_steps": round(max(float(d.max(initial=0.0)) for d in diffs), 3),
           "equal_fraction": round(sum(int((d < 1e-6).sum()) for d in diffs) / max(1, sum(d.size for d in diffs)), 4)}
    verification = {**verification, "reference": f"{verification['reference']} (the QDQ graph of the TFLite model)",
                    "litert_operators": ops, "litert_end_to_end": end}
    if not ops["passed"]:
        verification["passed"] = False
        verification["failure"] = (f"the QDQ graph differs from LiteRT's integer kernels at {ops['worst_operator']} by "
                                   f"{ops['max_steps']:g} steps (given LiteRT's own inputs; tolerance "
                                   f"{ops['tolerance_steps']} step): a conversion error, please report it")
    return verification


def verify_emulated(staged: Path, model: ImportedModel, target: Target, *, seed: int, atol: float, rtol: float) -> dict[str, Any]:
    """Run a staged (complete) artifact under qemu with the C++ runner; compare with the reference run on the host."""
    from .native import emulator_name, run_artifact

    atol = _quantized_atol(model, atol)
    ref, inputs, expected = _reference_run(model, seed)
    # the run's files go into the staging folder (beside the staged artifact), never into /tmp
    run = run_artifact(staged, {s.name: inputs[s.name] for s in model.inputs}, emulate=True, warmup=0, repeat=0,
                       threads=min(2, target.threads), scratch_dir=staged.parent)
    actual = [run.outputs[name] for name in run.outputs]
    result = compare(actual, expected, atol, rtol)
    return _litert_checks(model, inputs, actual, {
        "reference": ref.name, "reference_version": ref.version, "seed": seed,
        "how": f"verified under {emulator_name(target.arch)} with the C++ runner, reference on the host", **result.to_json()})


def compile_model(
    model_path: str | Path,
    target: Target,
    out_dir: str | Path,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    verify: bool | None = None,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    tuning_db: str | Path | None = None,
    progress: Reporter | None = None,
    int8: Int8Options | None = None,
    lineage: dict[str, Any] | None = None,
    time_kernels: bool = True,
) -> CompileResult:
    """Import, build and package a model for `target` into the artifact directory `out_dir`.

    `progress` receives one line as each stage ends (import, relax passes + schedules, LLVM codegen,
    link, verify, kernel timing) and a heartbeat while a stage runs long; the stage times go into the
    manifest (`compile_seconds`).

    `verify=None` verifies wherever the artifact can run here: natively for this machine's architecture
    (when the CPU has the target's features), under qemu with the C++ runner for aarch64 and armv7. Nothing is
    left at `out_dir` unless every step, verification included, succeeded.

    `int8`: calibrate the float ONNX model with onnxruntime (`compile/quantize.py`), build the QDQ
    model's integer kernels, and gate on the accuracy against the float model (see `Int8Options`).
    A QDQ model given as it is builds the same way, verified against its literal execution.

    `lineage`: where the model came from (an architecture search: its run, dataset, hyperparameters,
    accuracy, latencies), recorded in the manifest as given (a JSON object). `time_kernels=False` skips
    timing each kernel for the fusion report (builds that are timed whole right after, by the latency model).
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)  # a bad -o fails before the import, not after the build
    if int8 is not None:
        int8.check()
    from .target_check import check_llvm_cpus

    check_llvm_cpus(target)
    if tuning_db is not None:
        from .tuning_db import check_database

        tuning_db = Path(tuning_db).resolve()
        check_database(tuning_db, target)
    mode, where = verification_mode(target)
    if verify is None:
        verify = mode is not None
    elif verify and mode is None:
        raise UsageError(f"--verify cannot run here ({where}); drop --verify and use `autoglm bench` on a board")
    stages = Stages(progress)
    source = None
    if int8 is not None:
        source, calib, validation = _int8_source(Path(model_path), input_shapes, int8)
    else:
        with stages.stage("import"):
            model = load_model(model_path, input_shapes)
    with staging_dir(out_dir) as tmp:
        precision: dict[str, Any] = {"mode": "fp32"}
        if int8 is not None:
            from .quantize import quantize_model, quantize_tflite_model

            # a float TFLite model is quantized by LiteRT's own quantizer into the full-integer model the
            # artifact then computes (shipped as source.tflite: what LiteRT runs in `bench`)
            quantized = SOURCE_TFLITE if source["format"] == "tflite" else QUANTIZED_ONNX
            with stages.stage(f"calibrate ({int8.method}, {len(calib.samples)} samples)"):
                if quantized == SOURCE_TFLITE:
                    record = quantize_tflite_model(Path(model_path), tmp / quantized, target, calib)
                else:
                    record = quantize_model(Path(model_path), tmp / quantized, target, calib, int8.method)
            with stages.stage("import"):
                model = load_model(tmp / quantized, input_shapes)
            precision = {"mode": "int8", "calibration": record, "quantized_model": quantized}
        elif model.quantized:
            precision = {"mode": "int8", "calibration": None, "quantized_model": None,
                         "notes": ["a full-integer TFLite model: quantized before it came here, imported as a QDQ "
                                   "graph" if model.format == "tflite" else "a QDQ model: quantized before it came here"]}
        lib = tmp / LIBRARY
        stats, compiler_line = build_library_for(model, target, lib, tuning_db, stages)
        if precision["mode"] == "int8":
            precision.update(stats.int8 or {})
        built_arch = elf_machine(lib)
        if built_arch != target.arch:
            raise CompileFailure(f"the linker produced a {built_arch} library for target {target.name} ({target.arch})")
        if model.prepared_onnx is not None:
            (tmp / "prepared.onnx").write_bytes(model.prepared_onnx)
        if model.format == "tflite" and model.path != tmp / SOURCE_TFLITE:
            shutil.copyfile(model.path, tmp / SOURCE_TFLITE)  # so `bench` can check outputs on any device
        verification: dict[str, Any]
        if verify and mode == "qemu":
            # The runner loads only complete artifacts: stage one, manifest and checksums included.
            write_manifest(tmp, _manifest(model, target, stats, compiler_line, {"passed": None, "skipped": "pending"},
                                          precision, source))
            with stages.stage("verify under qemu"):
                verification = verify_emulated(tmp, model, target, seed=seed, atol=atol, rtol=rtol)
        elif verify:
            with stages.stage("verify"):
                verification = verify_library(lib, model, target.device, seed=seed, atol=atol, rtol=rtol)
        else:
            verification = {"passed": None, "skipped": "disabled with --no-verify" if mode is not None else where}
        if verify and not verification["passed"] and "failure" in verification:
            raise VerificationError(f"{verification['failure']}; nothing was written")
        if verify and not verification["passed"]:
            raise VerificationError(
                f"the compiled model disagrees with {verification['reference']} ({verification['how']}): max abs error "
                f"{verification['max_abs_error']:.3g}, max relative error {verification['max_rel_error']:.3g} "
                f"(tolerance atol={atol:g}, rtol={rtol:g}); nothing was written"
            )
        if mode == "host" and time_kernels:
            from .explain import measure_kernel_times

            inputs = random_inputs(model.inputs, seed)
            with stages.stage("time kernels"):
                measure_kernel_times(VMExecutor(lib, target.device), [inputs[s.name] for s in model.inputs],
                                     stats.kernel_rows)
        if int8 is not None and mode == "host":
            with stages.stage("accuracy vs fp32"):
                precision["accuracy"] = _int8_accuracy(lib, target, Path(model_path), model, validation, int8)
        elif int8 is not None:
            precision["accuracy"] = {"skipped": f"the artifact cannot run here ({where}): use `autoglm accuracy` on the device"}
        manifest = _manifest(model, target, stats, compiler_line, verification, precision, source)
        manifest["compile_seconds"] = stages.to_json()
        if lineage is not None:
            manifest["lineage"] = json.loads(json.dumps(lineage))  # plain JSON, or a TypeError here, not a bad manifest
        publish(tmp, out_dir, manifest)
    return CompileResult(out_dir, read_manifest(out_dir))


def build_library_for(model: ImportedModel, target: Target, lib: Path, tuning_db: Path | None = None,
                      stages: Stages | None = None):
    from .build import build_library

    return build_library(model.mod, target, lib, model.output_names, tuning_db, stages)


QUANTIZED_ONNX = "quantized.onnx"  # the QDQ model `compile --int8` made (onnxruntime runs it in `bench`)


def _int8_source(path: Path, input_shapes, options: Int8Options):
    """The float model's own entry for the manifest, the calibration samples, the accuracy report's samples
    and labels: all read and checked before anything is built."""
    from .accuracy import load_labels
    from .frontend import ONNX, TFLITE, detect_format, onnx_input_specs, fix_shapes, read_tflite, sha256_file, _read_onnx
    from .quantize import is_qdq_onnx, load_samples, random_samples
    from .tflite_int8 import is_quantized_tflite

    fmt = detect_format(path)
    if fmt == TFLITE:
        _, tfl, declared, _ = read_tflite(path)
        if is_quantized_tflite(tfl):
            raise UsageError(f"{path.name} is already a quantized (full-integer) TFLite model: compile it without --int8")
        if options.method != "minmax":
            raise UsageError(f"--calibration-method {options.method}: LiteRT's quantizer calibrates TFLite models with "
                             f"min/max ranges only; drop the flag, or quantize the model's ONNX export")
        specs = fix_shapes(declared, input_shapes or {})
    else:
        if is_qdq_onnx(path):
            raise UsageError(f"{path.name} is already quantized (QDQ): compile it without --int8")
        specs = fix_shapes(onnx_input_specs(_read_onnx(path)), input_shapes or {})
    if options.calibration is not None:
        calib = load_samples(Path(options.calibration), specs)
    else:
        calib = random_samples(specs, int(options.random_samples))
    data = load_samples(Path(options.validation), specs, "--validation") if options.validation else calib
    labels = load_labels(options.labels, len(data.samples)) if options.labels else None
    source = {"name": path.stem, "format": fmt, "source_file": path.name, "sha256": sha256_file(path)}
    return source, calib, (data, labels)


def _int8_accuracy(lib: Path, target: Target, float_path: Path, model: ImportedModel, validation,
                   options: Int8Options) -> dict:
    """The accuracy report against the float model; raises when the agreement is below the gate."""
    from .accuracy import accuracy_report

    data, labels = validation
    executor = VMExecutor(lib, target.device)
    names = [s.name for s in model.inputs]
    from .frontend import detect_format

    ref = ReferenceRuntime.open(float_path, detect_format(float_path))
    report = accuracy_report(lambda x: executor.run([x[n] for n in names]), ref.run, data.samples, labels)
    report["data"] = "validation" if options.validation else ("calibration" if options.calibration else "random")
    report["min_agreement"] = options.min_agreement
    if report["data"] == "random":
        report["note"] = "random inputs: accuracy on real data is unknown (give --calibration or --validation data)"
    agreement = report["argmax_agreement"]
    if report["data"] != "random" and agreement is not None and agreement < options.min_agreement:
        raise VerificationError(
            f"the int8 model agrees with the fp32 model on {agreement:.1%} of {report['samples']} samples, below "
            f"--min-agreement {options.min_agreement:g} (cosine similarity {report['cosine_similarity']:.4f}); "
            f"nothing was written: calibrate on more representative data, try --calibration-method percentile, "
            f"or lower --min-agreement")
    return report


def _manifest(model: ImportedModel, target: Target, stats, compiler_line: str, verification: dict[str, Any],
              precision: dict[str, Any] | None = None, source: dict[str, Any] | None = None) -> dict[str, Any]:
    import tvm

    return {
        "library": LIBRARY,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": source or {"name": model.name, "format": model.format, "source_file": model.path.name,
                            "sha256": model.sha256},
        "target": {
            "name": target.name, "description": target.description, "arch": target.arch, "device": target.device,
            "tvm_target": json.loads(str(tvm.target.Target(target.tvm))), "threads": target.threads, "rpc_key": target.rpc_key,
        },
        "toolchain": {"compiler": target.cross_compiler or "g++", "version": compiler_line},
        "tvm_version": _tvm_version(),
        "inputs": [s.to_json() for s in model.inputs],
        "outputs": [s.to_json() for s in stats.outputs],
        "precision": precision or {"mode": "fp32"},
        "tuning": stats.tuning or {"database": None, "records_applied": 0},
        "fusion": stats.to_json(),
        "memory": {"planned_activation_bytes": stats.planned_activation_bytes, "weight_bytes": stats.weight_bytes},
        "verification": verification,
        "notes": model.notes,
        "index_bounds": _index_bounds(model),
    }


def _index_bounds(model: ImportedModel) -> dict[str, list[int]]:
    """Per integer input that indexes a table (an embedding), the range its values must stay in (checked at run time)."""
    from .index_bounds import input_index_bounds

    return input_index_bounds(model.mod, [s.name for s in model.inputs])
