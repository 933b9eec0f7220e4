"""Benchmark harness: the toolkit's runtimes against onnxruntime/LiteRT, interleaved, outputs checked.

    from toolkit.bench import BenchConfig, run_bench, to_document
    run = run_bench(BenchConfig(Path("build/mbv2-host"), baseline="auto", threads=[1, 2]))
    doc = to_document(run)            # schema autoglm-bench/1 (docs/bench-schema.md)

Modules: config (flags), harness (the run), native_backend / workers + worker / rpc (one per kind of
runtime), stats, document (JSON/CSV), table (terminal), plots + report (Markdown/HTML), db + history
(SQLite results and regressions), profile (per-kernel times), sources (which model the baseline runs).
"""

from .config import BenchConfig, DeviceSpec, parse_device, parse_percent, parse_threads
from .document import SCHEMA, to_csv, to_document
from .errors import BenchError, BenchUsageError
from .harness import BenchRun, run_bench

__all__ = ["SCHEMA", "BenchConfig", "BenchError", "BenchRun", "BenchUsageError", "DeviceSpec", "parse_device",
           "parse_percent", "parse_threads", "run_bench", "to_csv", "to_document"]
