"""The results database (SQLite): one row per run, one per runtime and thread count measured.

A run is written in one transaction, after it finished: a run that failed or was interrupted is
either absent or present with status `failed` and no measurements, never half-written.
Default path: $AUTOGLM_RESULTS_DB, else <cache>/results.sqlite (cache: $AUTOGLM_CACHE_DIR or
~/.cache/autoglm).
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import BenchUsageError

ENV_VAR = "AUTOGLM_RESULTS_DB"
DB_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('completed', 'failed')),
    started_utc TEXT NOT NULL,
    finished_utc TEXT,
    model_name TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    target TEXT NOT NULL,
    arch TEXT NOT NULL,
    device TEXT NOT NULL,
    artifact_path TEXT,
    library_sha256 TEXT,
    hostname TEXT,
    cpu TEXT,
    outputs_match INTEGER,
    max_abs_error REAL,
    error TEXT,
    command TEXT,
    document TEXT
);
CREATE TABLE IF NOT EXISTS measurements (
    run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    runtime TEXT NOT NULL,
    role TEXT NOT NULL,
    threads INTEGER NOT NULL,
    location TEXT NOT NULL,
    emulated INTEGER NOT NULL,
    count INTEGER,
    load_ms REAL, first_inference_ms REAL,
    mean_ms REAL, std_ms REAL, min_ms REAL, max_ms REAL,
    p50_ms REAL, p90_ms REAL, p95_ms REAL, p99_ms REAL,
    throughput_per_s REAL, peak_rss_bytes INTEGER, ratio_p50 REAL
);
CREATE INDEX IF NOT EXISTS measurements_run ON measurements(run_id);
"""


def default_path() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    from toolkit.native import cache_root

    return cache_root() / "results.sqlite"


_TABLES = {"runs", "measurements"}


def _kind(conn: sqlite3.Connection) -> str:
    """'ours' (a results database of this version), 'empty' (no tables yet) or why it is neither."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} - {"sqlite_sequence"}
    if version == DB_VERSION and _TABLES <= tables:
        return "ours"
    if version == 0 and not tables:
        return "empty"
    if version not in (0, DB_VERSION):
        return f"a results database of version {version}; this toolkit reads version {DB_VERSION}"
    return f"an SQLite database with other tables ({', '.join(sorted(tables)[:5])}), not a results database"


def _open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection: opening never creates, converts or writes the file."""
    from urllib.parse import quote

    return sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=30, isolation_level=None)


def check_usable(path: Path | None) -> Path:
    """Fail now, in one line and without writing anything, if `bench` could not record its run at `path`."""
    from compile.artifact import check_output_file

    path = Path(path) if path else default_path()
    if not path.exists():
        check_output_file(path, "--db")
        return path
    if not path.is_file():
        raise BenchUsageError(f"--db {path} is not a file; give the results database file")
    if path.stat().st_size == 0:
        return path  # an empty file becomes a results database
    try:
        conn = _open_readonly(path)
        try:
            kind = _kind(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BenchUsageError(f"{path} is not a usable results database ({exc}); nothing was changed: pass another --db") from None
    if kind not in ("ours", "empty"):
        raise BenchUsageError(f"{path} is {kind}; nothing was changed: pass another --db")
    return path


@contextmanager
def connect(path: Path | None) -> Iterator[sqlite3.Connection]:
    """A read-write connection, creating the database (or its tables in an empty one) when needed."""
    path = Path(path) if path else default_path()
    check_usable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise BenchUsageError(f"cannot open the results database {path}: {exc}") from None
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        kind = _kind(conn)
        if kind == "empty":
            conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nPRAGMA user_version = {DB_VERSION};\nCOMMIT;")
        elif kind != "ours":
            raise BenchUsageError(f"{path} is {kind}; nothing was changed: pass another --db")
        conn.row_factory = sqlite3.Row
        yield conn
    except sqlite3.DatabaseError as exc:
        raise BenchUsageError(f"{path} is not a usable results database ({exc}); pass another --db") from None
    finally:
        conn.close()


@contextmanager
def connect_readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an existing results database; anything else is refused and left untouched."""
    try:
        if path.is_dir():
            raise BenchUsageError(f"{path} is a directory, not a results database; pass the database file")
        if path.stat().st_size == 0:
            raise BenchUsageError(f"{path} is an empty file, not a results database; nothing was changed")
        conn = _open_readonly(path)
    except OSError as exc:
        raise BenchUsageError(f"cannot read the results database {path}: {exc.strerror}") from None
    except sqlite3.Error as exc:
        raise BenchUsageError(f"cannot open the results database {path}: {exc}") from None
    try:
        kind = _kind(conn)
        if kind != "ours":
            what = "an empty SQLite database, not a results database" if kind == "empty" else kind
            raise BenchUsageError(f"{path} is {what}; nothing was changed")
        conn.row_factory = sqlite3.Row
        yield conn
    except sqlite3.DatabaseError as exc:
        raise BenchUsageError(f"{path} is not a usable results database ({exc}); nothing was changed") from None
    finally:
        conn.close()


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def record_run(path: Path | None, doc: dict[str, Any]) -> None:
    """Write a finished run (status from the document) and all its measurements, atomically."""
    a = doc["artifact"]
    with connect(path) as conn, _transaction(conn):
        conn.execute(
            "INSERT INTO runs (run_id, status, started_utc, finished_utc, model_name, model_sha256, target, arch, device,"
            " artifact_path, library_sha256, hostname, cpu, outputs_match, max_abs_error, error, command, document)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (doc["run_id"], doc["status"], doc["started_utc"], doc["finished_utc"], a["model"]["name"],
             a["model"]["sha256"], a["target"]["name"], a["target"]["arch"], doc["device"]["spec"], a["path"],
             a["library_sha256"], doc["host"]["hostname"], doc["host"]["cpu"],
             None if doc["correctness"]["outputs_match"] is None else int(doc["correctness"]["outputs_match"]),
             doc["correctness"]["max_abs_error"], None if doc["status"] == "completed" else "outputs differ",
             doc["command"], json.dumps(doc)))
        for r in doc["results"]:
            s = r["latency_ms"] or {}
            conn.execute(
                "INSERT INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (doc["run_id"], r["runtime"], r["role"], r["threads"], r["where"], int(r["emulated"]), s.get("count"),
                 r["load_ms"], r["first_inference_ms"], s.get("mean"), s.get("std"), s.get("min"), s.get("max"),
                 s.get("p50"), s.get("p90"), s.get("p95"), s.get("p99"), r["throughput_per_s"], r["peak_rss_bytes"],
                 (r["ratio_vs_baseline"] or {}).get("p50")))


def record_failure(path: Path | None, *, run_id: str, started_utc: str, finished_utc: str, manifest: dict[str, Any],
                   artifact: Path, device: str, error: str, command: str, host: dict[str, Any]) -> None:
    """A run that did not finish: status `failed`, the error, no measurements."""
    with connect(path) as conn, _transaction(conn):
        conn.execute(
            "INSERT INTO runs (run_id, status, started_utc, finished_utc, model_name, model_sha256, target, arch, device,"
            " artifact_path, library_sha256, hostname, cpu, error, command) VALUES (?, 'failed', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, started_utc, finished_utc, manifest["model"]["name"], manifest["model"]["sha256"],
             manifest["target"]["name"], manifest["target"]["arch"], device, str(artifact),
             manifest.get("files", {}).get(manifest.get("library", ""), None), host["hostname"], host["cpu"], error, command))


def insert_measurement_run(path: Path | None, *, run_id: str, started_utc: str, model_name: str, model_sha256: str,
                           target: str, device: str, runtime: str, threads: int, p50_ms: float,
                           status: str = "completed", arch: str = "x86_64") -> None:
    """A minimal run with one measurement (for tests of the history logic and for importing old results)."""
    with connect(path) as conn, _transaction(conn):
        conn.execute("INSERT INTO runs (run_id, status, started_utc, finished_utc, model_name, model_sha256, target, arch, device)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (run_id, status, started_utc, started_utc, model_name, model_sha256, target, arch, device))
        conn.execute("INSERT INTO measurements (run_id, runtime, role, threads, location, emulated, count, mean_ms, p50_ms)"
                     " VALUES (?, ?, 'toolkit', ?, ?, 0, 1, ?, ?)", (run_id, runtime, threads, device, p50_ms, p50_ms))


def fetch(path: Path | None, *, model: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
    """Every run (oldest first) with its measurements, optionally filtered by model name and target name."""
    where, args = [], []
    if model:
        where.append("model_name = ?")
        args.append(model)
    if target:
        where.append("target = ?")
        args.append(target)
    sql = ("SELECT id, run_id, status, started_utc, model_name, model_sha256, target, arch, device, outputs_match,"
           " max_abs_error, error FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id")
    path = Path(path) if path else default_path()
    if not path.exists():
        return []  # nothing recorded yet; a read never creates the database
    with connect_readonly(path) as conn:
        runs = [dict(r) for r in conn.execute(sql, args)]
        for run in runs:
            run["measurements"] = [dict(m) for m in conn.execute(
                "SELECT * FROM measurements WHERE run_id = ? ORDER BY rowid", (run["run_id"],))]
    return runs
