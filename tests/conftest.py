"""Shared fixtures: models exported once per session, and a runner for the real `autoglm` command."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
AUTOGLM = Path(sys.executable).parent / "autoglm"


CORPUS_SIZE = 16     # generated graphs on the host per run (half NHWC TFLite, half NCHW ONNX)
CORPUS_SEED = 0


def pytest_addoption(parser):
    group = parser.getgroup("autoglm")
    group.addoption("--corpus-size", type=int, default=CORPUS_SIZE,
                    help=f"graphs in the generated differential corpus (default {CORPUS_SIZE}; a quarter also run "
                         f"for aarch64 under qemu)")
    group.addoption("--corpus-seed", type=int, default=CORPUS_SEED, help="seed of the generated corpus")


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


# ---- loopback TVM RPC: a tracker and servers started by a test, all bound to 127.0.0.1 ----------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GroupProcess:
    """A subprocess in its own process group (an RPC server forks one child per session)."""

    def __init__(self, *args: str):
        self.log = open(os.devnull, "w")
        self.popen = subprocess.Popen([sys.executable, "-m", *args], stdout=self.log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
        self.log.close()


def wait_for_rpc_servers(port: int, key: str, count: int, timeout: float = 60) -> None:
    """Wait until `count` RPC servers under `key` are registered with the tracker on `port`."""
    from tvm import rpc

    deadline = time.monotonic() + timeout
    _wait_for_tracker(port, timeout)  # connect_tracker retries a refused connection only every 5 s
    while time.monotonic() < deadline:
        try:
            info = rpc.connect_tracker("127.0.0.1", port).summary()
            if sum(1 for s in info["server_info"] if s["key"] == f"server:{key}") >= count:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{count} RPC server(s) under {key} did not register with the tracker on port {port}")


def _wait_for_tracker(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the RPC tracker did not listen on 127.0.0.1:{port}")


@pytest.fixture
def rpc_tracker():
    """A tracker on 127.0.0.1 and a factory for servers registered with it; all killed at the end.

    The tracker and the servers start at the same time (each takes seconds to import TVM); `wait_for_rpc_servers`
    waits for both. A server imports TVM twice (itself, then its serving worker) before it reports to the tracker,
    which by then listens; were it not, the server would retry 5 s later."""
    procs: list[GroupProcess] = []
    port = free_port()
    procs.append(GroupProcess("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)))

    def add_server(key: str) -> GroupProcess:
        sport = free_port()
        while sport == port:  # the tracker may not have bound its port yet
            sport = free_port()
        proc = GroupProcess("tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(sport), "--port-end", str(sport + 1),
                            "--tracker", f"127.0.0.1:{port}", "--key", key)
        procs.append(proc)
        return proc

    yield port, add_server
    for p in reversed(procs):
        p.kill()
