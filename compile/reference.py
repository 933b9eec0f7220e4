"""Reference runtimes a compiled model is checked against: onnxruntime for ONNX, LiteRT for TFLite."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ToolchainError
from .frontend import ONNX, TensorSpec
from .native_stderr import quiet_native_stderr

# Integer inputs are usually indices (token ids, positions): keep them small so they are in range.
_INDEX_HIGH = 4


def random_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs matching the specs."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out[s.name] = rng.standard_normal(s.shape).astype(dt)
        elif dt == np.bool_:
            out[s.name] = rng.integers(0, 2, s.shape).astype(dt)
        elif dt.itemsize == 1:
            info = np.iinfo(dt)
            out[s.name] = rng.integers(info.min, info.max, s.shape, endpoint=True).astype(dt)
        else:
            out[s.name] = rng.integers(0, _INDEX_HIGH, s.shape).astype(dt)
    return out


def tflite_interpreter_class():
    """LiteRT's Interpreter, or tflite_runtime's where that is what is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ToolchainError("TFLite models need a TFLite interpreter: pip install ai-edge-litert") from None
    return Interpreter


@dataclass
class ReferenceRuntime:
    """A peer runtime session on one model file, fed and read by tensor name."""

    name: str
    version: str
    session: Any
    kind: str

    @classmethod
    def open(cls, model_path: Path | bytes, fmt: str, threads: int = 1, literal: bool = False) -> "ReferenceRuntime":
        """`literal`: onnxruntime with graph optimizations off (a QDQ graph executed as written). An ONNX
        model may be given as its serialized bytes."""
        with quiet_native_stderr():  # LiteRT announces its XNNPACK delegate on every interpreter
            return cls._open(model_path, fmt, threads, literal)

    @classmethod
    def _open(cls, model_path: Path | bytes, fmt: str, threads: int, literal: bool = False) -> "ReferenceRuntime":
        if fmt == ONNX:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            if literal:
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            source = model_path if isinstance(model_path, bytes) else str(model_path)
            sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
            return cls("onnxruntime", ort.__version__, sess, ONNX)
        Interpreter = tflite_interpreter_class()
        interp = Interpreter(model_path=str(model_path), num_threads=threads)
        interp.allocate_tensors()
        module = Interpreter.__module__.split(".")[0]
        try:
            from importlib.metadata import version

            ver = version("ai-edge-litert" if module == "ai_edge_litert" else "tflite-runtime")
        except Exception:
            ver = "unknown"
        return cls("litert" if module == "ai_edge_litert" else "tflite-runtime", ver, interp, "tflite")

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in the model's declared order."""
        if self.kind == ONNX:
            return list(self.session.run(None, inputs))
        interp = self.session
        details = interp.get_input_details()
        resized = False
        for d in details:
            arr = inputs[d["name"]]
            if tuple(d["shape"]) != arr.shape:
                interp.resize_tensor_input(d["index"], arr.shape)
                resized = True
        if resized:
            with quiet_native_stderr():
                interp.allocate_tensors()
        for d in interp.get_input_details():
            interp.set_tensor(d["index"], inputs[d["name"]])
        interp.invoke()
        return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


@dataclass
class Comparison:
    max_abs_error: float
    max_rel_error: float
    passed: bool
    atol: float
    rtol: float

    def to_json(self) -> dict[str, Any]:
        return {"max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "atol": self.atol, "rtol": self.rtol, "peak_rtol": PEAK_RTOL, "passed": self.passed}


# Float32 rounding grows with the magnitude of the sums behind an output, not with each element: a
# detector's box regressors peak at ~1500 and carry 2e-3 of pure reordering error on their near-zero
# elements (MediaPipe palm detection, unscheduled TVM vs LiteRT). So every element may also be off by
# this fraction of its output's peak |value| (1e-5 of 1500 = 0.015, still 1000x below a real miscompile).
PEAK_RTOL = 1e-5


def compare(actual: list[np.ndarray], expected: list[np.ndarray], atol: float, rtol: float) -> Comparison:
    """Elementwise |a - e| <= atol + rtol * |e| + PEAK_RTOL * peak|e| over all outputs (peak per output);
    the relative error reported is against each output's peak."""
    if len(actual) != len(expected):
        return Comparison(float("inf"), float("inf"), False, atol, rtol)
    max_abs = max_rel = 0.0
    ok = True
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            return Comparison(float("inf"), float("inf"), False, atol, rtol)
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        diff = np.abs(a64 - e64)
        if diff.size:
            peak = float(np.abs(e64[np.isfinite(e64)]).max(initial=0.0))
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float(diff.max() / max(peak, 1e-12)))
            ok = ok and bool(np.all(diff <= atol + rtol * np.abs(e64) + PEAK_RTOL * peak))
        ok = ok and not bool(np.isnan(a64).any() != np.isnan(e64).any())
    return Comparison(max_abs, max_rel, ok, atol, rtol)
