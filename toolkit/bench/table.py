"""The run as a terminal table (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .document import ratio_summary
from .result import BASELINE_ROLES


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def runtime_label(r: dict[str, Any]) -> str:
    """A result row's runtime as the table and the reports show it (baselines marked)."""
    return r["runtime"] + (" (baseline)" if r["role"] in BASELINE_ROLES else "")


def has_fp32_ratio(doc: dict[str, Any]) -> bool:
    """Whether the run timed the float model too (int8 artifacts with --model-file): one more ratio column."""
    return any(r.get("ratio_vs_fp32_baseline") for r in doc["results"])


def print_run(console: Console, doc: dict[str, Any]) -> None:
    a, c = doc["artifact"], doc["correctness"]
    emulated = doc["device"]["emulated"]
    title = (f"{a['model']['name']} ({a['model']['format']}) for {a['target']['name']} ({a['target']['arch']}) "
             f"on {doc['device']['spec']}{' [EMULATED timings]' if emulated else ''}")
    table = Table(title=title)
    fp32 = has_fp32_ratio(doc)
    for col in ("runtime", "threads", "where", "load ms", "first ms", "p50 ms", "mean ± std ms", "p90 ms", "p99 ms",
                "min ms", "max ms", "inf/s", "peak RSS", "ratio p50", *(["vs fp32 p50"] if fp32 else [])):
        table.add_column(col, justify="left" if col in ("runtime", "where") else "right")
    for r in doc["results"]:
        s = r["latency_ms"] or {}
        ratio = r["ratio_vs_baseline"]
        ratio_s = f"{ratio['p50']:.2f}x" if ratio else ("n/a (emulated)" if r["emulated"] and r["role"] == "toolkit" else "-")
        ratio32 = r.get("ratio_vs_fp32_baseline")
        table.add_row(runtime_label(r), str(r["threads"]),
                      r["where"] + (" (emulated)" if r["emulated"] else ""), _ms(r["load_ms"]),
                      _ms(r["first_inference_ms"]), _ms(s.get("p50")),
                      f"{_ms(s.get('mean'))} ± {_ms(s.get('std'))}" if s else "-", _ms(s.get("p90")), _ms(s.get("p99")),
                      _ms(s.get("min")), _ms(s.get("max")),
                      f"{r['throughput_per_s']:.1f}" if r["throughput_per_s"] else "-", fmt_bytes(r["peak_rss_bytes"]),
                      ratio_s, *([f"{ratio32['p50']:.2f}x" if ratio32 else "-"] if fp32 else []))
    console.print(table)
    console.print(f"artifact: library {fmt_bytes(a['library_bytes'])}, total {fmt_bytes(a['artifact_bytes'])}; planned "
                  f"activations {fmt_bytes(a['planned_activation_bytes'])}, weights {fmt_bytes(a['weight_bytes'])}; "
                  f"{a['kernels']} kernels")
    if doc["baseline"]:
        console.print(f"baseline: {doc['baseline']['runtime']} on {doc['baseline']['description']}")
        if doc["baseline"].get("fp32"):
            console.print(f"baseline: {doc['baseline']['fp32']['runtime']} on {doc['baseline']['fp32']['description']}")
    if c["outputs_match"] is None:
        console.print("outputs: [yellow]not checked[/yellow]")
    else:
        worst = max(c["comparisons"], key=lambda x: x["max_abs_error"])
        console.print(f"outputs: {'[green]match[/green]' if c['outputs_match'] else '[red]DIFFER[/red]'} "
                      f"({c['reference'] or 'between runtimes'}; max abs error {c['max_abs_error']:.3g}, "
                      f"worst {worst['runtime']} at {worst['threads']} threads; atol {worst['atol']:g}, rtol {worst['rtol']:g})")
    for line in ratio_summary(doc):
        console.print(line)
    for r in doc["results"]:
        if r["ratio_note"] and not r["ratio_vs_baseline"]:
            console.print(f"note: {r['runtime']} ({r['threads']} threads): {r['ratio_note']}")
        for n in r["notes"]:
            console.print(f"note: {r['runtime']} ({r['threads']} threads): {n}")
    for n in doc["notes"]:
        console.print(f"note: {n}")
    if doc["profile"]:
        p = doc["profile"]
        pt = Table(title=f"per-kernel profile ({p['method']}, {p['threads']} threads, {p['iterations']} runs)")
        for col in ("kernel", "calls/run", "ms/run", "share"):
            pt.add_column(col, justify="left" if col == "kernel" else "right")
        for k in p["kernels"]:
            pt.add_row(k["name"], str(k["calls_per_run"]), f"{k['ms_per_run']:.4f}", f"{100 * k['share']:.1f}%")
        pt.add_row("(vm builtins: allocation, checks)", "", f"{p['vm_builtin_ms_per_run']:.4f}", "")
        console.print(pt)
