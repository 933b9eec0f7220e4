"""`autoglm runtime ...`: build the C++ runtime (runner, example app, embeddable library)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

import targets as targets_mod

runtime_app = typer.Typer(
    help="The C++ runtime: autoglm-runner, the classify example and libautoglm_runtime, for the host, aarch64 or armv7.",
    no_args_is_help=True,
)

_ARCHES = ("x86_64", "aarch64", "arm")


def resolve_arch(target: str, targets_dir: Path | None = None) -> str:
    """The architecture meant by `target`: "host", an architecture name, or a target name such as rpi4."""
    if target == "host":
        return targets_mod.host_arch()
    if target in _ARCHES:
        return target
    return targets_mod.load_target(target, targets_dir).arch


@runtime_app.command("build")
def build_cmd(
    target: Annotated[str, typer.Option("--target", "-t", help="host, x86_64, aarch64, arm, or a target name (rpi4, armv7, ...).")] = "host",
    build_dir: Annotated[Optional[Path], typer.Option("--build-dir", help="Build here instead of the cache (~/.cache/autoglm/runtime).")] = None,
    targets_dir: Annotated[Optional[Path], typer.Option("--targets-dir", help="Extra directory of target TOML files.")] = None,
) -> None:
    """Build (or reuse) the C++ runtime for a target's architecture and print where it is."""
    from toolkit import native

    arch = resolve_arch(target, targets_dir)
    path = native.build_runtime(arch, build_dir)
    runner = native.runner_path(path)
    print(f"runtime for {arch}: {path}")
    print(f"  runner:  {runner}")
    print(f"  example: {path / 'bin' / 'classify'}")
    print(f"  library: {path / 'lib' / 'libautoglm_runtime.a'} (header {path / 'include' / 'autoglm' / 'runtime.h'})")
    print(f"  copy {path / 'bin'} to the device as it is: the TVM libraries sit beside the runner")
    if arch != targets_mod.host_arch():
        print(f"  run it here: {native.emulator_hint(arch)} {runner} ARTIFACT_DIR --json")
    else:
        print(f"  run it: {runner} ARTIFACT_DIR --json")
