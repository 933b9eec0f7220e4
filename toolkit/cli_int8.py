"""`autoglm accuracy` and the INT8 lines of `autoglm compile`'s summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from compile import UsageError


def print_int8_summary(console, precision: dict[str, Any]) -> None:
    """The calibration, the integer/float split and the accuracy report, one line each."""
    cal = precision.get("calibration")
    if cal:
        console.print(f"  int8:    calibrated with {cal['method']} on {cal['samples']} samples ({cal['source']}); "
                      f"{cal['activation_dtype']} activations, per-channel int8 weights"
                      f"{', reduce_range' if cal.get('reduce_range') else ''}")
    else:
        notes = precision.get("notes") or ["a QDQ model: quantized before it came here"]
        console.print(f"  int8:    {notes[0]}")
    ints = precision.get("integer_ops") or {}
    floats = precision.get("float_ops") or {}
    console.print(f"  kernels: {sum(ints.values())} integer ({', '.join(f'{k} x{n}' for k, n in ints.items()) or '-'}), "
                  f"{len(floats)} left in float")
    acc = precision.get("accuracy")
    if acc and "skipped" not in acc:
        console.print("  " + accuracy_line(acc))
        if acc.get("note"):
            console.print(f"  note:    {acc['note']}")
    elif acc:
        console.print(f"  accuracy: skipped ({acc['skipped']})")


def accuracy_line(acc: dict[str, Any]) -> str:
    parts = [f"accuracy vs fp32 on {acc['samples']} {acc.get('data', '')} samples:".replace("  ", " ")]
    if acc.get("argmax_agreement") is not None:
        parts.append(f"argmax agreement {acc['argmax_agreement']:.1%},")
    parts.append(f"cosine {acc['cosine_similarity']:.5f}, max abs error {acc['max_abs_error']:.3g}, "
                 f"mean abs error {acc['mean_abs_error']:.3g}")
    if acc.get("top1") is not None:
        parts.append(f"; top-1 {acc['top1']:.1%} (fp32 {acc['reference_top1']:.1%})")
    return " ".join(parts)


def accuracy_cmd(
    artifact: Annotated[Path, typer.Argument(help="Artifact directory from `autoglm compile` (runs on this machine).")],
    reference: Annotated[Path, typer.Option("--reference", help="The float model to compare with (.onnx or .tflite).")],
    data: Annotated[Path, typer.Option("--data", help="A directory of .npy/.npz samples.")],
    labels: Annotated[Optional[Path], typer.Option("--labels", help="labels.npy, one class per sample, for top-1.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare an artifact's outputs with a float reference model on real data: agreement, errors, top-1."""
    import json

    from compile.accuracy import accuracy_report, load_labels
    from compile.frontend import detect_format
    from compile.quantize import load_samples
    from compile.reference import ReferenceRuntime
    from toolkit.runtime import load

    if not Path(data).is_dir():
        raise UsageError(f"--data {data} is not a directory: give a folder of .npy/.npz samples")
    if not Path(reference).is_file():
        raise UsageError(f"--reference {reference} is not a file: give the float .onnx or .tflite model")
    model = load(artifact)
    specs = list(model.inputs)
    samples = load_samples(Path(data), specs, "--data").samples
    lab = load_labels(labels, len(samples)) if labels is not None else None
    ref = ReferenceRuntime.open(Path(reference), detect_format(Path(reference)))
    names = [s.name for s in specs]
    report = accuracy_report(lambda x: list(model.run({n: x[n] for n in names}).values()), ref.run, samples, lab)
    report["data"] = str(data)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    from toolkit.cli import console

    console.print(f"[bold]{artifact}[/bold] vs {reference.name}: " + accuracy_line(report).split(":", 1)[1].strip())


def register(app: typer.Typer) -> None:
    app.command("accuracy")(accuracy_cmd)
