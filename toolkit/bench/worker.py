"""A runtime in a process of its own, so that its peak resident memory (VmHWM) is its own.

    python -m toolkit.bench.worker KIND MODEL_PATH THREADS

KIND is `onnxruntime`, `litert` (MODEL_PATH: the model file) or `python` (MODEL_PATH: an artifact
directory, run with toolkit.runtime). Requests and replies are JSON lines on stdin / on the file
descriptor the protocol took over from stdout (libraries that print go to stderr instead):

    {"op": "load"}                                    -> {"load_ms", "rss_before_load_bytes"}
    {"op": "first", "inputs": {name: npy}, "out_dir"} -> {"ms", "outputs": [{"name", "path"}]}
    {"op": "time", "n": N}                            -> {"latencies_ms": [...]}  (on the "first" inputs)
    {"op": "profile", "iterations": N}                -> per-kernel profile (python only)
    {"op": "status"}                                  -> {"peak_rss_bytes"}
Every reply has "ok"; a failure is {"ok": false, "error": "one line"}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _open_runtime(kind: str, path: str, threads: int):
    """A callable feeds -> list of (name, array), and a list of output names."""
    if kind == "python":
        from toolkit import runtime

        model = runtime.load(path)
        return (lambda feeds: list(model.run(feeds).items())), model
    from compile.reference import ReferenceRuntime

    # "onnxruntime-literal": graph optimizations off, a QDQ model executed as written (int8 artifacts' reference)
    onnx = kind in ("onnxruntime", "onnxruntime-literal")
    ref = ReferenceRuntime.open(Path(path), "onnx" if onnx else "tflite", threads, literal=kind == "onnxruntime-literal")
    if onnx:
        names = [o.name for o in ref.session.get_outputs()]
    else:
        names = [d["name"] for d in ref.session.get_output_details()]
    return (lambda feeds: list(zip(names, ref.run(feeds)))), ref


def serve(kind: str, path: str, threads: int, proto_out) -> None:
    import numpy as np

    from .memory import peak_rss_bytes, proc_status_bytes

    run = None
    feeds: dict = {}

    def reply(obj) -> None:
        proto_out.write(json.dumps({"ok": True, **obj}) + "\n")
        proto_out.flush()

    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        try:
            if op == "load":
                before = proc_status_bytes("VmRSS")
                start = time.perf_counter()
                run, _ = _open_runtime(kind, path, threads)
                reply({"load_ms": (time.perf_counter() - start) * 1e3, "rss_before_load_bytes": before})
            elif op == "first":
                feeds = {name: np.load(p, allow_pickle=False) for name, p in req["inputs"].items()}
                start = time.perf_counter()
                outs = run(feeds)
                ms = (time.perf_counter() - start) * 1e3
                out_dir = Path(req["out_dir"])
                written = []
                for i, (name, arr) in enumerate(outs):
                    p = out_dir / f"out{i}.npy"
                    np.save(p, np.asarray(arr), allow_pickle=False)
                    written.append({"name": name, "path": str(p)})
                reply({"ms": ms, "outputs": written})
            elif op == "time":
                lat = []
                for _ in range(int(req["n"])):
                    start = time.perf_counter()
                    run(feeds)
                    lat.append((time.perf_counter() - start) * 1e3)
                reply({"latencies_ms": lat})
            elif op == "profile":
                from compile import read_manifest

                from .profile import profile_library

                m = read_manifest(path)
                order = [s["name"] for s in m["inputs"]]
                reply({"profile": profile_library(str(Path(path) / m["library"]), [feeds[n] for n in order],
                                                  int(req.get("iterations", 10)), m["target"]["device"])})
            elif op == "status":
                reply({"peak_rss_bytes": peak_rss_bytes(), "pid": os.getpid()})
            elif op == "exit":
                reply({})
                return
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # reported to the harness, which turns it into one line
            msg = " ".join(str(exc).split()) or type(exc).__name__
            proto_out.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {msg[:800]}"}) + "\n")
            proto_out.flush()


def main() -> None:
    kind, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    proto_fd = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    with os.fdopen(proto_fd, "w") as proto_out:
        serve(kind, path, threads, proto_out)


if __name__ == "__main__":
    main()
