"""INT8 calibration of a float ONNX model with onnxruntime's quantization tools, and what a QDQ model says.

`quantize_model` writes a QDQ model (`quantize_static`: per-channel symmetric int8 weights, 8-bit
activations) from calibration samples, chosen for the target the artifact is built for:

- activations uint8 on x86 (the u8 x s8 dot products `vpmaddubsw` / `vpdpbusd`), int8 on ARM
  (`sdot`, and s8 x s8 widening multiplies elsewhere);
- `reduce_range` (7-bit weights) on x86 without VNNI: `vpmaddubsw` adds pairs of u8 x s8 products
  into int16 and saturates with full-range weights; with 7-bit weights a pair always fits.

Calibration data is a directory of `.npy` / `.npz` files (one sample or a batch per file; `.npz`
keys name the model's inputs, a `.npy` file feeds a single-input model) or seeded random inputs.
The compile pipeline (`compile/int8.py`) turns the QDQ graph into integer kernels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import UsageError
from .frontend import TensorSpec

__all__ = ["CALIBRATION_METHODS", "CalibrationData", "Int8Options", "load_samples", "output_steps", "quantize_model",
           "quantize_tflite", "quantize_tflite_model"]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_MIN_AGREEMENT = 0.98


@dataclass
class Int8Options:
    """How `compile --int8` quantizes: where the calibration data comes from, and the accuracy gate."""

    calibration: Path | None = None      # a directory of .npy/.npz samples
    random_samples: int | None = None    # or this many seeded random inputs (accuracy unknown)
    method: str = "minmax"
    validation: Path | None = None       # data for the accuracy report (default: the calibration data)
    labels: Path | None = None           # labels.npy for the task metric (top-1)
    min_agreement: float = DEFAULT_MIN_AGREEMENT

    def check(self) -> None:
        if (self.calibration is None) == (self.random_samples is None):
            raise UsageError("--int8 needs calibration data: --calibration DIR (.npy/.npz samples) or "
                             "--calibration-random N for a quick look with random inputs")
        if self.random_samples is not None and not 1 <= self.random_samples <= 10000:
            raise UsageError("--calibration-random takes a number of samples from 1 to 10000")
        if self.method not in CALIBRATION_METHODS:
            raise UsageError(f"--calibration-method {self.method!r} is not one of: {', '.join(CALIBRATION_METHODS)}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise UsageError("--min-agreement is a fraction between 0 and 1, e.g. 0.98")
        for flag, path in (("--calibration", self.calibration), ("--validation", self.validation)):
            if path is not None and not Path(path).is_dir():
                raise UsageError(f"{flag} {path} is not a directory: give a folder of .npy/.npz samples")
        if self.labels is not None and not Path(self.labels).is_file():
            raise UsageError(f"--labels {self.labels} is not a file: give a .npy array with one label per sample")


@dataclass
class CalibrationData:
    """Samples (dicts input name -> one-sample array) and where they came from."""

    samples: list[dict[str, np.ndarray]]
    source: str
    files: int = 0
    notes: list[str] = field(default_factory=list)


def _split(arr: np.ndarray, spec: TensorSpec, where: str) -> list[np.ndarray]:
    shape = tuple(spec.shape)
    if arr.shape == shape:
        return [arr]
    if len(shape) >= 1 and shape[0] == 1 and arr.ndim == len(shape) and arr.shape[1:] == shape[1:]:
        return [arr[i:i + 1] for i in range(arr.shape[0])]  # a batch of samples
    raise UsageError(f"{where}: {spec.name} has shape {list(arr.shape)}; the model takes {list(shape)} "
                     f"(or a batch [N, {', '.join(map(str, shape[1:]))}] when its batch is 1)")


def load_samples(directory: Path, specs: list[TensorSpec], flag: str = "--calibration") -> CalibrationData:
    """Every sample in `directory` (`.npy` for a single-input model, `.npz` keyed by input name)."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.suffix in (".npy", ".npz") and p.name != "labels.npy")
    if not files:
        raise UsageError(f"{flag} {directory} holds no .npy/.npz samples")
    names = [s.name for s in specs]
    samples: list[dict[str, np.ndarray]] = []
    for path in files:
        where = f"{flag} {path}"
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UsageError(f"{where} is not a readable numpy file ({type(exc).__name__}); "
                             f"save samples with numpy.save / numpy.savez") from None
        if isinstance(loaded, np.ndarray):
            if len(specs) != 1:
                raise UsageError(f"{where}: the model has {len(specs)} inputs ({', '.join(names)}); "
                                 f"give .npz files keyed by input name")
            arrays = {names[0]: loaded}
        else:
            with loaded:
                missing = [n for n in names if n not in loaded.files]
                if missing:
                    raise UsageError(f"{where} lacks the input(s) {', '.join(missing)} (it has {', '.join(loaded.files)})")
                arrays = {n: loaded[n] for n in names}
        parts = {}
        for spec in specs:
            arr = arrays[spec.name]
            if np.dtype(arr.dtype) != np.dtype(spec.dtype):
                if np.dtype(spec.dtype).kind == "f" and arr.dtype.kind in "fiu":
                    arr = arr.astype(spec.dtype)
                else:
                    raise UsageError(f"{where}: {spec.name} is {arr.dtype}; the model takes {spec.dtype}")
            if np.dtype(spec.dtype).kind == "f" and not np.all(np.isfinite(arr)):
                raise UsageError(f"{where}: {spec.name} holds NaN or infinite values")
            parts[spec.name] = _split(arr, spec, where)
        counts = {len(v) for v in parts.values()}
        if len(counts) != 1:
            raise UsageError(f"{where}: its inputs hold different numbers of samples")
        for i in range(counts.pop()):
            samples.append({n: np.ascontiguousarray(parts[n][i]) for n in names})
    return CalibrationData(samples, str(directory), len(files))


def random_samples(specs: list[TensorSpec], count: int) -> CalibrationData:
    from .reference import random_inputs

    return CalibrationData([random_inputs(specs, seed=1000 + i) for i in range(count)], "random", 0,
                           ["calibrated on random inputs: accuracy on real data is unknown"])


def quantization_choices(target) -> dict[str, Any]:
    """Activation type and reduce_range for `target` (see the module doc)."""
    from .schedules import cpu_config

    cfg = cpu_config(target)
    x86 = target.arch == "x86_64"
    return {"activation_dtype": "uint8" if x86 else "int8", "weight_dtype": "int8", "per_channel": True,
            "reduce_range": bool(x86 and cfg.int8_dot != "vnni"), "int8_dot": cfg.int8_dot or None}


def quantize_model(source: Path, out_path: Path, target, data: CalibrationData, method: str) -> dict[str, Any]:
    """Write the QDQ model of `source` calibrated on `data` to `out_path`; returns the manifest record."""
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )

    choices = quantization_choices(target)
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(data.samples)

        def get_next(self):
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(data.samples)

    act = QuantType.QUInt8 if choices["activation_dtype"] == "uint8" else QuantType.QInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "Please consider to run pre-processing before quantization": ours to decide
    try:
        quantize_static(str(source), str(out_path), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8, reduce_range=choices["reduce_range"],
                        calibrate_method=calibrate, extra_options={"WeightSymmetric": True})
    finally:
        root.setLevel(level)
    return {"method": method, "samples": len(data.samples), "source": data.source, **choices,
            "tensor_ranges": activation_ranges(out_path)}


def quantize_tflite(model: bytes, samples: list[list[np.ndarray]], io_dtype: str = "float32") -> bytes:
    """A full-integer TFLite model made from the float TFLite `model` by LiteRT's own post-training quantizer
    (the calibrator TFLite's converter uses: min/max ranges per tensor, per-channel symmetric int8 weights,
    int8 activations, int32 biases), calibrated on `samples` (per sample, one array per model input in the
    model's input order). `io_dtype` "float32" keeps float inputs and outputs (QUANTIZE / DEQUANTIZE at the
    edges), "int8" makes them int8 as a microcontroller build would."""
    from ai_edge_litert import _pywrap_tensorflow_lite_calibration_wrapper as calibration

    from .native_stderr import quiet_native_stderr

    if not samples:
        raise UsageError("quantizing a TFLite model needs at least one calibration sample")
    io = np.dtype(io_dtype).num
    with quiet_native_stderr():
        wrapper = calibration.CalibrationWrapper(model, [], [])
        wrapper.Prepare([list(a.shape) for a in samples[0]])
        for sample in samples:
            wrapper.FeedTensor([np.ascontiguousarray(a) for a in sample])
        # (input type, output type, allow float ops, activation type, bias type, no per-channel, no per-channel dense)
        return bytes(wrapper.QuantizeModel(io, io, False, np.dtype(np.int8).num, np.dtype(np.int32).num, False, False))


def quantize_tflite_model(source: Path, out_path: Path, target, data: CalibrationData) -> dict[str, Any]:
    """Write the full-integer TFLite model of the float TFLite `source` calibrated on `data` (LiteRT's own
    quantizer, float inputs and outputs kept) to `out_path`; returns the manifest record."""
    import tflite

    from .frontend import read_tflite
    from .tflite_int8 import activation_ranges

    _, _, declared, _ = read_tflite(source)
    names = [name for name, _, _ in declared]
    quantized = quantize_tflite(source.read_bytes(), [[s[n] for n in names] for s in data.samples], "float32")
    out_path.write_bytes(quantized)
    from importlib.metadata import version

    choices = quantization_choices(target)
    return {"method": "minmax", "samples": len(data.samples), "source": data.source,
            "quantizer": f"LiteRT post-training quantizer (ai-edge-litert {version('ai-edge-litert')})",
            **choices, "activation_dtype": "int8", "reduce_range": False,
            "tensor_ranges": activation_ranges(tflite.Model.GetRootAsModel(quantized, 0))}


def _initializers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def activation_ranges(qdq_path: Path) -> dict[str, list[float]]:
    """Per quantized activation, the float range its scale and zero point cover."""
    import onnx

    model = onnx.load(str(qdq_path), load_external_data=False)
    init = _initializers(model)
    out: dict[str, list[float]] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        s, z = init.get(node.input[1]), init.get(node.input[2])
        if s is None or z is None or s.size != 1 or node.input[0] in init:
            continue
        info = np.iinfo(z.dtype)
        sv, zv = float(s.reshape(())), int(z.reshape(()))
        out[node.input[0]] = [round((info.min - zv) * sv, 6), round((info.max - zv) * sv, 6)]
    return out


def output_steps(model_path: Path) -> dict[str, float]:
    """Per graph output produced by a DequantizeLinear, its quantization step (the scale)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    init = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    steps: dict[str, float] = {}
    for out in model.graph.output:
        node = producer.get(out.name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in init:
            scale = init[node.input[1]]
            if scale.size == 1:
                steps[out.name] = float(scale.reshape(()))
    return steps


def is_qdq_onnx(model_path: Path) -> bool:
    """Whether an ONNX file holds QuantizeLinear/DequantizeLinear nodes (a QDQ model)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return any(n.op_type in ("DequantizeLinear", "QuantizeLinear") for n in model.graph.node)
