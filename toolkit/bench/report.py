"""Markdown or HTML report of a run, with its plots (HTML: embedded base64; Markdown: side files)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from compile.fileio import write_atomic

from . import plots
from .document import ratio_summary
from .table import fmt_bytes, has_fp32_ratio, runtime_label


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def _rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    fp32 = has_fp32_ratio(doc)
    head = ["runtime", "threads", "where", "load ms", "first ms", "p50 ms", "mean ms", "std ms", "p90 ms", "p95 ms",
            "p99 ms", "min ms", "max ms", "inf/s", "peak RSS", "ratio p50", *(["vs fp32 p50"] if fp32 else [])]
    rows = []
    for r in doc["results"]:
        s = r["latency_ms"] or {}
        ratio, ratio32 = r["ratio_vs_baseline"], r.get("ratio_vs_fp32_baseline")
        rows.append([runtime_label(r), str(r["threads"]),
                     r["where"] + (" (emulated)" if r["emulated"] else ""), _ms(r["load_ms"]),
                     _ms(r["first_inference_ms"]), *[_ms(s.get(k)) for k in ("p50", "mean", "std", "p90", "p95", "p99", "min", "max")],
                     f"{r['throughput_per_s']:.1f}" if r["throughput_per_s"] else "-", fmt_bytes(r["peak_rss_bytes"]),
                     f"{ratio['p50']:.2f}x" if ratio else "-",
                     *([f"{ratio32['p50']:.2f}x" if ratio32 else "-"] if fp32 else [])])
    return head, rows


def _facts(doc: dict[str, Any]) -> list[str]:
    a, c, h = doc["artifact"], doc["correctness"], doc["host"]
    facts = [
        f"Run {doc['run_id']} ({doc['status']}), {doc['started_utc']}, {doc['duration_s']:.1f} s: `{doc['command']}`",
        f"Host: {h['cpu']}, {h['cores']} cores, {h['os']}; TVM {h['tvm_version']}, onnxruntime {h['onnxruntime_version']}",
        f"Artifact: {a['path']}: {a['model']['name']} ({a['model']['format']}, sha256 {a['model']['sha256'][:12]}) for "
        f"{a['target']['name']} ({a['target']['arch']}/{a['target']['device']}); library {fmt_bytes(a['library_bytes'])}, "
        f"artifact {fmt_bytes(a['artifact_bytes'])}; planned activations {fmt_bytes(a['planned_activation_bytes'])}, "
        f"weights {fmt_bytes(a['weight_bytes'])}; {a['kernels']} kernels, {a['launches']} launches",
        f"Device: {doc['device']['spec']}" + (" — EMULATED timings: they measure qemu, not a board, and are never "
                                             "compared with native ones" if doc["device"]["emulated"] else ""),
        f"Settings: threads {doc['settings']['threads']}, warm-up {doc['settings']['warmup']}, "
        f"{doc['settings']['repeat']} timed runs in blocks of {doc['settings']['block']}, seed {doc['settings']['seed']}; "
        f"{doc['settings']['interleaving']}",
    ]
    if doc["baseline"]:
        facts.append(f"Baseline: {doc['baseline']['runtime']} on {doc['baseline']['description']}")
        if doc["baseline"].get("fp32"):
            facts.append(f"Baseline: {doc['baseline']['fp32']['runtime']} on {doc['baseline']['fp32']['description']}")
    if c["outputs_match"] is None:
        facts.append("Outputs: not checked")
    else:
        facts.append(f"Outputs: {'match' if c['outputs_match'] else 'DIFFER'} ({c['reference'] or 'between runtimes'}, "
                     f"max abs error {c['max_abs_error']:.3g})")
    facts += [line[0].upper() + line[1:] for line in ratio_summary(doc)]
    for r in doc["results"]:
        for n in ([r["ratio_note"]] if r["ratio_note"] and not r["ratio_vs_baseline"] else []) + r["notes"]:
            facts.append(f"Note ({r['runtime']}, {r['threads']} threads): {n}")
    facts += [f"Note: {n}" for n in doc["notes"]]
    return facts


def _profile_rows(doc):
    p = doc["profile"]
    return [[k["name"], str(k["calls_per_run"]), f"{k['ms_per_run']:.4f}", f"{100 * k['share']:.1f}%"] for k in p["kernels"]]


def _images(doc) -> list[tuple[str, str, bytes]]:
    out = [("latency_cdf.png", "Latency CDF per runtime", plots.latency_cdf(doc))]
    prof = plots.kernel_profile(doc)
    if prof is not None:
        out.append(("kernel_profile.png", "Per-kernel time share", prof))
    return out


def write_report(doc: dict[str, Any], path: Path) -> list[Path]:
    """Write the report; returns every file written (the report first)."""
    path = Path(path)
    images = _images(doc)
    head, rows = _rows(doc)
    title = f"autoglm bench: {doc['artifact']['model']['name']} on {doc['device']['spec']}"
    if path.suffix.lower() == ".md":
        side = path.parent / f"{path.stem}_files"
        written = []
        for name, _alt, data in images:
            write_atomic(side / name, data)
            written.append(side / name)
        md = [f"# {title}", "", *[f"- {f}" for f in _facts(doc)], "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *["| " + " | ".join(r) + " |" for r in rows], ""]
        if doc["profile"]:
            md += ["## Per-kernel profile", "", f"{doc['profile']['method']}", "", "| kernel | calls/run | ms/run | share |",
                   "|---|---|---|---|", *["| " + " | ".join(r) + " |" for r in _profile_rows(doc)], ""]
        for name, alt, _data in images:
            md += [f"![{alt}]({side.name}/{name})", ""]
        write_atomic(path, "\n".join(md).encode())
        return [path, *written]
    esc = html.escape
    table = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}"
             "</style></head><body>", f"<h1>{esc(title)}</h1>", "<ul>",
             *[f"<li>{esc(f)}</li>" for f in _facts(doc)], "</ul>", table]
    if doc["profile"]:
        parts += ["<h2>Per-kernel profile</h2>", f"<p>{esc(doc['profile']['method'])}</p>",
                  "<table><tr><th>kernel</th><th>calls/run</th><th>ms/run</th><th>share</th></tr>"
                  + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in _profile_rows(doc))
                  + "</table>"]
    for _name, alt, data in images:
        parts.append(f"<h2>{esc(alt)}</h2><img alt='{esc(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    parts.append("</body></html>")
    write_atomic(path, "\n".join(parts).encode())
    return [path]
