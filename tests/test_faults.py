"""The fault corpus: kill -9, SIGTERM and SIGINT at several points of compile, tune and bench, and concurrent
publishers and readers of one artifact. After each: a complete artifact or nothing at the output, no
`.NAME.*` leftovers beside it (a kill -9's are removed by the next compile), no temporary folders left in
TMPDIR, and for SIGINT/SIGTERM one `error:` line and exit 128 + the signal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

import targets
from conftest import AUTOGLM, have, run_cli

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


class Cli:
    """`autoglm` in the background; stderr lines collected; `wait_for(text)` blocks until a line holds it."""

    def __init__(self, *args, env: dict | None = None):
        self.proc = subprocess.Popen([str(AUTOGLM), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()

    def wait_for(self, text: str, timeout: float = 240) -> None:
        with self._cv:
            ok = self._cv.wait_for(lambda: any(text in ln for ln in self.lines) or self.proc.poll() is not None, timeout)
        assert ok and any(text in ln for ln in self.lines), f"never saw {text!r}:\n" + "\n".join(self.lines)

    def finish(self, timeout: float = 120) -> int:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(10)
        return self.proc.returncode


def assert_interrupt_reported(cli: Cli, sig: str) -> str:
    """Exit 128 + signal, one error line naming the interrupt, no traceback."""
    code = cli.proc.returncode
    text = "\n".join(cli.lines)
    assert "Traceback" not in text, text
    errors = [ln for ln in cli.lines if ln.startswith("error:")]
    assert code == 128 + SIGNALS[sig] and len(errors) == 1 and "interrupted" in errors[0], (code, text)
    return errors[0]


def temp_leftovers(scratch: Path) -> list[str]:
    """What a run left in its TMPDIR, except `.ses` (a session-id file some dependency keeps there on every run)."""
    return sorted(p.name for p in scratch.iterdir() if p.name != ".ses")


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def complete_or_nothing(out: Path) -> bool:
    """True when `out` holds a complete, valid artifact; False when nothing is there (anything else fails)."""
    from compile import check_artifact

    if not os.path.lexists(out):
        return False
    check_artifact(out)
    return True


# ---- compile -------------------------------------------------------------------------------------------

# Each point is "the signal arrives just after this stage line": in fuse+schedule, in LLVM codegen, at link.
POINTS = {"during build": "  import:", "during codegen": "  fuse + schedule:", "during link or verify": "  LLVM codegen:"}


@pytest.mark.parametrize("sig, point", [("SIGINT", "during build"), ("SIGINT", "during link or verify"),
                                        ("SIGTERM", "during codegen"), ("SIGTERM", "during link or verify"),
                                        ("SIGKILL", "during build"), ("SIGKILL", "during codegen")])
def test_compile_interrupted(convnet_onnx, tmp_path, sig, point):
    scratch = tmp_path / "tmpdir"  # TVM's and the compilers' temporary files would land here
    scratch.mkdir()
    out = tmp_path / "build" / "m"
    cli = Cli("compile", convnet_onnx, "-o", out, env={"TMPDIR": str(scratch)})
    cli.wait_for(POINTS[point])
    cli.proc.send_signal(SIGNALS[sig])
    cli.finish()
    if sig == "SIGKILL":
        from compile.artifact import clean_stale

        complete_or_nothing(out)  # whatever stage it died in: never half an artifact
        if point == "during build":  # the next compile of the same output removes what the killed one left
            run_cli("compile", convnet_onnx, "-o", out, "--no-verify", check=True, env={"TMPDIR": str(scratch)})
            assert complete_or_nothing(out)
        else:  # in codegen the staging folder exists, and is what the next compile removes first
            assert leftovers(out), "a kill -9 cannot clean up: its staging folder is expected beside the output"
            assert clean_stale(out) and not leftovers(out)
    else:
        line = assert_interrupt_reported(cli, sig)
        if complete_or_nothing(out):  # the signal came after the artifact was published
            assert "was written; that artifact is complete" in line
        else:
            assert "nothing was written" in line
            assert not (tmp_path / "build").exists(), "the parent directory created for -o was left behind"
    if out.parent.exists():
        assert not leftovers(out)
    assert not temp_leftovers(scratch)


def _stage_copy(stage: Path, src: Path) -> dict:
    """Put `src`'s files in a staging directory; its manifest (for publish to rewrite)."""
    for f in src.iterdir():
        if f.name not in ("manifest.json", "manifest.json.sha256"):
            shutil.copy(f, stage / f.name)
    return json.loads((src / "manifest.json").read_text())


def test_interrupt_swallowed_by_a_library_still_stops_the_publish(host_artifact, tmp_path):
    """The interrupt is remembered, so a KeyboardInterrupt some library code caught cannot let a compile publish."""
    from compile import artifact

    out = tmp_path / "m"
    with artifact.staging_dir(out) as stage:
        manifest = _stage_copy(stage, host_artifact)
        artifact._interrupts.append(signal.SIGINT)  # what the CLI's handler records before raising
        try:
            with pytest.raises(KeyboardInterrupt):
                artifact.publish(stage, out, manifest)
        finally:
            artifact._interrupts.clear()
    assert not out.exists() and not leftovers(out)




def test_interrupt_while_the_staging_folder_is_set_up_leaves_nothing(tmp_path, monkeypatch):
    """A SIGINT that lands after `-o`'s parents are made but before the build starts (CI hit this window once,
    via test_compile_interrupted) removes the parents and the staging folder again."""
    from compile import artifact

    out = tmp_path / "new" / "deeper" / "m"
    real_clean_stale = artifact.clean_stale

    def clean_stale_then_signal(path):  # runs inside the setup, after the parents were created
        os.kill(os.getpid(), signal.SIGINT)
        return real_clean_stale(path)

    monkeypatch.setattr(artifact, "clean_stale", clean_stale_then_signal)
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    artifact.install_interrupt_handlers()
    body_ran = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with artifact.staging_dir(out):
                body_ran = True
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        artifact._interrupts.clear()
    assert not body_ran, "the build must not start after an interrupt"
    assert not (tmp_path / "new").exists(), "the parent directories created for -o were left behind"
# ---- concurrent publishers and readers ----------------------------------------------------------------

def test_concurrent_cli_publishers_and_a_reader(convnet_onnx, tmp_path):
    from compile import check_artifact
    from compile.errors import AutoglmError

    out = tmp_path / "m"
    run_cli("compile", convnet_onnx, "-o", out, "--no-verify", check=True)
    errors: list[str] = []
    stop = threading.Event()
    reads = 0

    def reader():
        nonlocal reads
        while not stop.is_set():
            try:
                check_artifact(out)
                reads += 1
            except AutoglmError as exc:
                errors.append(str(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        procs = [subprocess.Popen([str(AUTOGLM), "compile", str(convnet_onnx), "-o", str(out), "--no-verify", "--seed",
                                   str(i)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    finally:
        stop.set()
        t.join()
    assert all(rc == 0 for rc, _ in results), results
    assert not errors and reads > 0, errors[:3]
    assert complete_or_nothing(out) and not leftovers(out)


def test_readers_always_see_a_whole_artifact_while_it_is_replaced(host_artifact, tmp_path):
    """120 publishes alternating two versions; readers (checksums and all) only ever see one of the two."""
    from compile import artifact, open_artifact
    from compile.errors import AutoglmError

    a = host_artifact
    b = tmp_path / "b"
    shutil.copytree(a, b)
    m = json.loads((b / "manifest.json").read_text())
    m["notes"] = ["version b"]
    data = (json.dumps(m, indent=2) + "\n").encode()
    (b / "manifest.json").write_bytes(data)
    import hashlib

    (b / "manifest.json.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  manifest.json\n")
    versions = {json.loads((v / "manifest.json").read_text())["notes"].__repr__() for v in (a, b)}
    out = tmp_path / "live"
    shutil.copytree(a, out)
    seen: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                with open_artifact(out) as v:
                    seen.append(repr(v.manifest["notes"]))
            except AutoglmError as exc:
                errors.append(str(exc))

    def publisher(n: int):
        for i in range(n):
            src = a if i % 2 else b
            with artifact.staging_dir(out) as stage:
                artifact.publish(stage, out, _stage_copy(stage, src))

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    pubs = [threading.Thread(target=publisher, args=(60,)) for _ in range(2)]  # two publishers, serialised by the lock
    for t in pubs:
        t.start()
    for t in pubs:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[:3]
    assert len(seen) > 50 and set(seen) <= versions
    assert complete_or_nothing(out) and not leftovers(out)


@pytest.mark.skipif(targets.host_arch() != "x86_64" or not have("cmake"), reason="the C++ runner is built for x86_64 here")
def test_cpp_runner_reads_while_the_artifact_is_replaced(host_artifact, tmp_path):
    from compile import artifact
    from toolkit import native

    runtime = native.build_runtime("x86_64")
    out = tmp_path / "live"
    shutil.copytree(host_artifact, out)
    stop = threading.Event()

    def publisher():
        while not stop.is_set():
            with artifact.staging_dir(out) as stage:
                artifact.publish(stage, out, _stage_copy(stage, host_artifact))

    t = threading.Thread(target=publisher)
    t.start()
    try:
        for _ in range(25):
            proc = subprocess.run([str(native.runner_path(runtime)), str(out), "--repeat", "0"], capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
    finally:
        stop.set()
        t.join()
    assert not leftovers(out)


# ---- tune ----------------------------------------------------------------------------------------------

def _mlp(path: Path) -> Path:
    from test_tune import make_mlp

    return make_mlp(path, (32, 96, 24), seed=3)


@pytest.mark.parametrize("sig, when", [("SIGINT", "while importing"), ("SIGTERM", "after the first records")])
def test_tune_interrupted(tmp_path, sig, when):
    model = _mlp(tmp_path / "mlp.onnx")
    db = tmp_path / "db"
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    cli = Cli("tune", model, "--trials", "16", "--batch", "2", "--db", db, env={"TMPDIR": str(scratch)})
    if when == "while importing":
        cli.wait_for("...")  # the first phase line
    else:
        deadline = time.monotonic() + 240
        while not ((db / "database_tuning_record.json").exists()
                   and (db / "database_tuning_record.json").read_text().strip()):
            assert cli.proc.poll() is None and time.monotonic() < deadline, "\n".join(cli.lines)
            time.sleep(0.2)
    cli.proc.send_signal(SIGNALS[sig])
    cli.finish(timeout=180)
    line = assert_interrupt_reported(cli, sig)
    assert "records measured so far are kept" in line
    if (db / "database_tuning_record.json").exists():
        for ln in (db / "database_tuning_record.json").read_text().splitlines()[:-1]:
            json.loads(ln)  # every complete line is a record; a half last line is repaired by the next run


# ---- bench ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(targets.host_arch() != "x86_64" or not have("cmake"), reason="bench runs the x86_64 C++ runner")
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_bench_interrupted(host_artifact, tmp_path, sig):
    db = tmp_path / "r.sqlite"
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    out = tmp_path / "b.json"
    cli = Cli("bench", host_artifact, "--threads", "1", "--repeat", "2000000", "--block", "1000000", "--warmup", "0",
              "--db", db, "--json", out, "--csv", tmp_path / "b.csv", env={"TMPDIR": str(scratch)})
    cli.wait_for("starting autoglm-cpp")
    time.sleep(0.5)
    cli.proc.send_signal(SIGNALS[sig])
    cli.finish()
    if sig != "SIGKILL":
        assert_interrupt_reported(cli, sig)
    assert not out.exists() and not (tmp_path / "b.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".b.json", ".b.csv"))]
    if db.exists():  # no run, or a run recorded whole; never half of one
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            for (status, run_id) in conn.execute("SELECT status, run_id FROM runs"):
                assert status == "failed"
                assert conn.execute("SELECT COUNT(*) FROM measurements WHERE run_id = ?", (run_id,)).fetchone()[0] == 0
        finally:
            conn.close()
    if sig != "SIGKILL":  # a kill -9 cannot clean up; the runner's own temporary folder goes with SIGINT/SIGTERM
        deadline = time.monotonic() + 10
        while temp_leftovers(scratch) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not temp_leftovers(scratch)
