"""Shared fixtures: models exported once per session, and a runner for the real `autoglm` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
AUTOGLM = Path(sys.executable).parent / "autoglm"


def run_cli(*args: str | os.PathLike, check: bool = False, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed `autoglm` console script as a user would."""
    cmd = [str(AUTOGLM) if AUTOGLM.exists() else sys.executable, *([] if AUTOGLM.exists() else ["-m", "toolkit.cli"])]
    proc = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"autoglm {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_user_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """One line on stderr starting with 'error:', containing each fragment, the exit code, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was written"
    if out.parent.exists():
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not leftovers, leftovers


def tampered_copy(artifact: Path, dest: Path) -> Path:
    """A copy of `artifact` whose library has one byte flipped (its manifest left as it was)."""
    shutil.copytree(artifact, dest)
    lib = dest / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    return dest


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def convnet_onnx(model_dir) -> Path:
    from toolkit.export import export_zoo_model

    return export_zoo_model("convnet", model_dir / "convnet.onnx")


@pytest.fixture(scope="session")
def transformer_onnx(model_dir) -> Path:
    from toolkit.export import export_zoo_model

    return export_zoo_model("transformer", model_dir / "transformer.onnx")


@pytest.fixture(scope="session")
def small_tflite() -> Path:
    return FIXTURES / "small_cnn.tflite"


@pytest.fixture(scope="session")
def host_artifact(convnet_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "convnet-host"
    run_cli("compile", convnet_onnx, "--target", "host", "-o", out, check=True)
    return out
