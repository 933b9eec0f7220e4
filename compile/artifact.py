"""The artifact directory: written atomically, checked before anything in it is opened."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError, UsageError
from .fileio import write_atomic
from .frontend import sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
SOURCE_TFLITE = "source.tflite"  # a TFLite model's own file, shipped so any device's run can be checked

_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "arm"}


def elf_machine(path: str | Path) -> str:
    """Architecture of an ELF file (x86_64, aarch64, arm), read from its header."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        raise ArtifactError(f"{path} is not an ELF shared library")
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(code, f"elf-machine-{code:#x}")


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of `out_dir`, removed unless `publish` moved it into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / MANIFEST).exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"output path {out_dir} exists and is not an artifact; choose another -o or remove it")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {parent}: {exc.strerror}") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(tmp: Path, manifest: dict[str, Any]) -> None:
    """Checksum every file of the staged directory and write its manifest (a complete, loadable artifact)."""
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = {
        p.relative_to(tmp).as_posix(): sha256_file(p)
        for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    _write_json_atomic(tmp / MANIFEST, manifest)


def publish(tmp: Path, out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Checksum every file, write the manifest, and rename the staged directory into place."""
    write_manifest(tmp, manifest)
    os.chmod(tmp, 0o755)
    out_dir = Path(out_dir)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def read_manifest(artifact: str | Path) -> dict[str, Any]:
    """The manifest of an artifact directory, without checking files."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise UsageError(f"artifact {artifact} does not exist; build one with `autoglm compile MODEL -o {artifact}`")
    path = artifact / MANIFEST
    if not artifact.is_dir() or not path.exists():
        raise ArtifactError(f"{artifact} is not an artifact directory (no {MANIFEST}); build one with `autoglm compile`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupt ({exc}); rebuild the artifact with `autoglm compile`") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{artifact} has artifact format {version!r}; this toolkit reads format {FORMAT_VERSION}: rebuild it")
    return manifest


def check_artifact(artifact: str | Path, *, for_arch: str | None = None) -> dict[str, Any]:
    """Verify every checksum (and, if given, the architecture) before the library is opened."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    files = manifest.get("files") or {}
    if manifest.get("library") not in files:
        raise ArtifactError(f"{artifact}: the manifest lists no checksum for its library; rebuild the artifact")
    for rel, digest in files.items():
        path = artifact / rel
        if not path.is_file():
            raise ArtifactError(f"{artifact}: {rel} is missing; the artifact is incomplete, rebuild it")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{artifact}: {rel} does not match its checksum in the manifest (modified or corrupt); rebuild the artifact")
    if for_arch is not None:
        arch = manifest["target"]["arch"]
        if arch != for_arch:
            raise ArtifactError(
                f"{artifact} was built for {arch} (target {manifest['target']['name']}) and this machine is {for_arch}: "
                f"run it with `autoglm bench {artifact} --device qemu` or on a board"
            )
    return manifest
