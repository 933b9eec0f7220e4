"""The pipeline's report: report.md and pareto.png (accuracy vs measured latency of every compiled net)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compile.fileio import write_atomic

from . import spaces


def pareto_png(summary: dict[str, Any]) -> bytes:
    from toolkit.bench.plots import _png, _pyplot

    space = spaces.of(summary["searched"]["architecture"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for kind, style in (("random", dict(c="0.55", marker="o", label="random architectures")),
                        ("baseline", dict(c="tab:blue", marker="s", s=60, label=space.BASELINE_NAME))):
        pts = [c for c in summary["candidates"] if c["kind"] == kind]
        ax.scatter([c["measured_ms"] for c in pts], [100 * c["test_accuracy"] for c in pts], **style)
    s = summary["searched"]
    ax.scatter([s["measured_ms"]], [100 * s["test_accuracy"]], c="tab:red", marker="*", s=180, label="searched", zorder=3)
    if s.get("latency_budget_ms"):
        ax.axvline(s["latency_budget_ms"], color="tab:red", ls="--", lw=1, label="latency budget")
    ax.set_xlabel(f"measured latency on {summary['target']} (ms, uncontended, {summary['threads']} thread(s))")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{space.SPACE_NAME} on {summary['dataset']['name']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def dominated_by_searched(summary: dict[str, Any]) -> tuple[int, int]:
    """(how many nets at or under the searched net's measured latency it beats in accuracy, how many there are)."""
    s = summary["searched"]
    peers = [c for c in summary["candidates"] if c["measured_ms"] <= s["measured_ms"]]
    return sum(s["test_accuracy"] > c["test_accuracy"] for c in peers), len(peers)


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    write_atomic(out / "pareto.png", pareto_png(summary))
    s, b = summary["searched"], summary["bench"]
    space = spaces.of(s["architecture"])
    budget = s.get("latency_budget_ms")
    lines = [f"# Search report: {space.SPACE_NAME} on {summary['dataset']['name']}, target {summary['target']}", "",
             f"Dataset sha256 `{summary['dataset']['sha256'][:16]}…`; {summary['threads']} thread(s); the whole run took "
             f"{summary['seconds']:.0f} s.", "",
             "## The searched network", "",
             f"- architecture: `{space.describe(s['architecture'])}` (skips: {s['skips']})",
             f"- test accuracy {100 * s['test_accuracy']:.1f}% (validation {100 * s['validation_accuracy']:.1f}%)",
             f"- latency: predicted {s['predicted_ms']:.3f} ms, measured {s['measured_ms']:.3f} ms (compiled by this toolkit; "
             f"uncontended: its fastest ~2 ms chunk timed against the latency model's reference network)"]
    if budget:
        over = 100 * (s["measured_ms"] / budget - 1)
        lines.append(f"- budget check: {budget:g} ms budget, measured {s['measured_ms']:.3f} ms: "
                     + (f"within budget ({-over:.1f}% under)" if over <= 0 else f"**over budget by {over:.1f}%**"))
    dist = (s.get("training") or {}).get("distillation") or {}
    if "plain_val_accuracy" in dist:
        lines.append(f"- retraining: distilled from the supernet {100 * dist['distilled_val_accuracy']:.1f}% validation accuracy, "
                     f"without distillation {100 * dist['plain_val_accuracy']:.1f}%: kept the "
                     f"{'distilled' if dist['used'] else 'plain'} one")
    lines += [f"- against onnxruntime on the same ONNX file, same run, interleaved: {b['toolkit_p50_ms']:.3f} ms vs "
              f"{b['onnxruntime_p50_ms']:.3f} ms (ratio {b['ratio']:.2f}x), outputs match: {b['outputs_match']}",
              f"- artifact: `{s['artifact']}`", "",
              "## Accuracy vs measured latency", "", "![pareto](pareto.png)", "",
              "| network | architecture | test accuracy | measured ms | predicted ms |", "|---|---|---:|---:|---:|",
              f"| **searched** | `{space.describe(s['architecture'])}` | {100 * s['test_accuracy']:.1f}% | {s['measured_ms']:.3f} | {s['predicted_ms']:.3f} |"]
    for c in summary["candidates"]:
        lines.append(f"| {c['kind']} | `{space.describe(c['architecture'])}` | {100 * c['test_accuracy']:.1f}% | "
                     f"{c['measured_ms']:.3f} | {c['predicted_ms']:.3f} |")
    wins, peers = dominated_by_searched(summary)
    accs = [c["test_accuracy"] for c in summary["candidates"] if c["kind"] == "random"]
    lines += ["", f"The searched net is more accurate than {wins} of the {peers} compared nets at or under its measured latency."
              + (f" Random architectures span {100 * (max(accs) - min(accs)):.1f} points of accuracy." if accs else ""), ""]
    finals = (summary.get("search") or {}).get("finalists") or []
    if finals:
        lines += ["## Finalists", "",
                  f"The supernet's proposals, each fitted to the budget on the latency model and trained up to "
                  f"{summary['search']['finalist_epochs']} epochs from scratch; the most accurate on the validation split was retrained as the searched net:", "",
                  "| rank | source | architecture | val accuracy | predicted ms |", "|---:|---|---|---:|---:|"]
        lines += [f"| {i} | {f['source']} | `{space.describe(f['architecture'])}` | {100 * f['val_accuracy']:.1f}% | "
                  f"{f['predicted_ms']:.3f} |" for i, f in enumerate(finals, 1)]
        lines.append("")
    front = summary.get("pareto_front")
    if front:
        lines += ["## Multi-trial Pareto front (NSGA-II)", "",
                  f"{summary['search']['trials']} architectures tried (study `{summary['search']['study']}`), each trained "
                  f"{summary['search']['trial_epochs']} epochs; the feasible ones no other beats on both validation accuracy "
                  f"and predicted latency:", "",
                  "| trial | architecture | val accuracy | predicted ms |", "|---:|---|---:|---:|"]
        lines += [f"| {r['trial']} | `{space.describe(r['architecture'])}` | {100 * r['val_accuracy']:.1f}% | {r['predicted_ms']:.3f} |"
                  for r in front]
        lines.append("")
    lm = summary["latency_model"]
    lines += ["## The latency model", "", f"Fitted on {lm['fit_count']} networks measured on the target."]
    for name in ("fit", "holdout"):
        a = lm.get(name)
        if a:
            lines.append(f"- {name} ({a['architectures']} networks): {100 * a['within_10pct']:.0f}% within ±10%, mean abs error "
                         f"{a['mean_abs_pct_error']:.1f}%, Spearman {a['spearman']:.3f}")
    if not lm.get("holdout"):
        lines.append("- held-out accuracy: not evaluated yet (`autoglm latency-model eval`)")
    path = out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
