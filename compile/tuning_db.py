"""Per-target tuning databases: where they live, how they survive a killed run, how compile applies them.

A database is a directory holding MetaSchedule's JSONDatabase files (`database_workload.json`,
`database_tuning_record.json`, one JSON document per line, appended as measurements arrive) plus
two files of this toolkit:

- `autoglm-db.json`: the target the records were measured for (name and full TVM target). A
  database made for one target is refused for another, so records never leak across devices.
- `autoglm-tasks.jsonl`: one line per event of a tuned task (`start`, `done`), with the workload's
  structural hash, the measured latency of the default (rule-based) schedule and the best tuned
  latency. A task that has a `start` but no `done` was interrupted and is resumed by the next run;
  compile uses the default latency to apply a tuned record only where it beats the default.

A run that is killed can leave a half-written last line in any of these files. `repair()` drops it
(and records whose workload line was lost) before the database is opened, so the records measured
before the kill stay usable. Only one `autoglm tune` at a time may write a database (a lock file).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from targets import Target

from .errors import AutoglmError, UsageError
from .fileio import write_atomic
from .schedules import ATTR as SCHEDULE_ATTR  # set by compile.schedules on kernels a default rule scheduled

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
META = "autoglm-db.json"
TASKS = "autoglm-tasks.jsonl"
LOCK = ".lock"
FORMAT = 1
TUNED_ATTR = "autoglm.tuned"


class TuningError(AutoglmError):
    """Tuning could not run: a tracker or board unreachable, a database in use or corrupt."""


def default_db_dir(target: Target, threads: int | None = None) -> Path:
    """`$AUTOGLM_CACHE_DIR/tuning/<target>` (default `~/.cache/autoglm/tuning/<target>`); with a thread count
    other than the target's, `<target>-<threads>t`: records measured at other thread counts never mix."""
    base = os.environ.get("AUTOGLM_CACHE_DIR")
    if base:
        root = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "autoglm"
    name = target.name if threads in (None, target.threads) else f"{target.name}-{threads}t"
    return root / "tuning" / name


def check_writable(db_dir: Path) -> None:
    """Raise UsageError unless `db_dir` exists as a writable directory or can be created; creates nothing."""
    if db_dir.exists():
        if not db_dir.is_dir():
            raise UsageError(f"tuning database {db_dir} is not a directory")
        if not os.access(db_dir, os.W_OK | os.X_OK):
            raise UsageError(f"tuning database directory {db_dir} is not writable: choose another with --db DIR")
        return
    parent = db_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"tuning database directory {db_dir} cannot be created ({parent} is not writable): choose another with --db DIR")


def _target_json(target: Target) -> str:
    import tvm

    return str(tvm.target.Target(target.tvm))


def check_target(db_dir: Path, target: Target, threads: int | None = None) -> None:
    """Refuse a database whose records were measured for another target, or (given `threads`) at another
    thread count (a database written before thread counts were recorded: at the target's)."""
    meta_path = db_dir / META
    if not meta_path.exists():
        return
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise TuningError(f"tuning database {db_dir}: cannot read {META} ({exc})") from None
    if meta.get("tvm_target") != _target_json(target):
        raise UsageError(
            f"tuning database {db_dir} holds records for target {meta.get('target')!r} "
            f"({meta.get('tvm_target')}), not for {target.name!r} ({_target_json(target)}); use another --db"
        )
    had = meta.get("threads", target.threads)
    if threads is not None and had != threads:
        raise UsageError(f"tuning database {db_dir} holds records measured at {had} thread(s), not {threads}; "
                         f"use another --db (the default database of each thread count is its own)")


def write_meta(db_dir: Path, target: Target, threads: int | None = None) -> None:
    import tvm

    meta_path = db_dir / META
    if meta_path.exists():
        return
    write_atomic(meta_path, json.dumps({"format": FORMAT, "target": target.name, "tvm_target": _target_json(target),
                                         "threads": threads or target.threads, "tvm_version": tvm.__version__},
                                        indent=2) + "\n")


def _read_raw(path: Path) -> tuple[list[tuple[Any, bytes]], bool]:
    """The parsed lines of a JSON-lines file (with their exact bytes) and whether its tail is damaged.

    Only the last line can be half-written by a killed append; a bad line elsewhere is corruption.
    """
    if not path.exists():
        return [], False
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    damaged = bool(raw) and not raw.endswith(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            damaged = True
            continue
        try:
            out.append((json.loads(line), line))
        except ValueError:
            if i == len(lines) - 1:
                damaged = True
                continue
            raise TuningError(f"tuning database file {path} is corrupt at line {i + 1}; move it away to start afresh") from None
    return out, damaged


def _read_lines(path: Path) -> tuple[list[Any], bool]:
    parsed, damaged = _read_raw(path)
    return [obj for obj, _ in parsed], damaged


def _rewrite(path: Path, lines: list[bytes]) -> None:
    """Replace `path` atomically with `lines`, each kept byte for byte."""
    write_atomic(path, b"".join(line + b"\n" for line in lines))


def _valid_records(records: list[tuple[Any, bytes]], n_workloads: int) -> list[tuple[Any, bytes]]:
    """The record lines that point at an existing workload (`[workload index, record]`)."""
    return [(r, line) for r, line in records
            if isinstance(r, list) and len(r) == 2 and isinstance(r[0], int) and 0 <= r[0] < n_workloads]


@dataclass
class RepairReport:
    workloads: int
    records: int
    dropped: int


def repair(db_dir: Path) -> RepairReport:
    """Drop a half-written last line (and records of lost workloads) left by a killed run; other lines stay byte for byte."""
    workloads, w_damaged = _read_raw(db_dir / WORKLOADS)
    records, r_damaged = _read_raw(db_dir / RECORDS)
    n_work = len(workloads)
    valid = _valid_records(records, n_work)
    dropped = len(records) - len(valid) + int(w_damaged) + int(r_damaged)
    if w_damaged:
        _rewrite(db_dir / WORKLOADS, [line for _, line in workloads])
    if r_damaged or len(valid) != len(records):
        _rewrite(db_dir / RECORDS, [line for _, line in valid])
    events, t_damaged = _read_raw(db_dir / TASKS)
    if t_damaged:
        _rewrite(db_dir / TASKS, [line for _, line in events])
    return RepairReport(n_work, len(valid), dropped)


def count_records(db_dir: Path) -> int:
    records, _ = _read_lines(db_dir / RECORDS)
    return len(records)


@contextlib.contextmanager
def locked(db_dir: Path) -> Iterator[None]:
    """Hold the database's write lock (one tuning run per database at a time)."""
    fd = os.open(db_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuningError(f"tuning database {db_dir} is in use by another `autoglm tune`; wait for it or use another --db") from None
        yield
    finally:
        os.close(fd)


def open_db(db_dir: Path, *, create: bool):
    """The MetaSchedule JSONDatabase of `db_dir` (repaired first when it can be written)."""
    if create:
        db_dir.mkdir(parents=True, exist_ok=True)
        repair(db_dir)
    return _json_database(db_dir, db_dir, allow_missing=create)


def read_tasks(db_dir: Path) -> dict[str, dict[str, Any]]:
    """Workload hash -> the latest event of that task (`start` means interrupted, `done` finished)."""
    events, _ = _read_lines(db_dir / TASKS)
    latest: dict[str, dict[str, Any]] = {}
    for e in events:
        if isinstance(e, dict) and "workload" in e:
            merged = {**latest.get(e["workload"], {}), **e}
            latest[e["workload"]] = merged
    return latest


def append_task(db_dir: Path, event: dict[str, Any]) -> None:
    path = db_dir / TASKS
    # a killed writer can leave no newline at the end; never glue a new event to a broken one
    prefix = ""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            prefix = "" if f.read(1) == b"\n" else "\n"
    with open(path, "a") as f:
        f.write(prefix + json.dumps(event) + "\n")
        f.flush()
        os.fsync(f.fileno())


def workload_key(mod) -> str:
    """The key of a task's workload (structural hash of the normalised PrimFunc module)."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def normalize(func):
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def record_ms(record) -> float | None:
    secs = [float(s) for s in (record.run_secs or [])]
    if not secs or min(secs) >= 1e9:
        return None
    return 1e3 * sorted(secs)[len(secs) // 2]


def best_record(db, mod, target_obj):
    """The fastest valid record of workload `mod` in `db`, or None."""
    if not db.has_workload(mod):
        return None
    for rec in db.get_top_k(db.commit_workload(mod), 4):
        if record_ms(rec) is not None:
            return rec
    return None


@dataclass
class ApplyResult:
    database: str
    records_applied: int
    tuned: list[str]
    kept_default: list[str]


def check_readable(db_dir: Path) -> None:
    """Refuse, before any work, an existing database whose records TVM cannot parse (nothing is written)."""
    if (db_dir / WORKLOADS).exists() or (db_dir / RECORDS).exists():
        load_readonly(db_dir)


def check_database(db_dir: Path, target: Target) -> None:
    """Validate a database given to compile: an existing directory with records for this target."""
    if not db_dir.is_dir():
        raise UsageError(f"tuning database {db_dir} does not exist: run `autoglm tune MODEL --target {target.name} --db {db_dir}` first")
    if not (db_dir / WORKLOADS).exists() or not (db_dir / RECORDS).exists():
        raise UsageError(f"{db_dir} is not a tuning database (no {WORKLOADS} / {RECORDS}); run `autoglm tune` to make one")
    check_target(db_dir, target)
    load_readonly(db_dir)  # parse it now: a corrupt database is one line about the database, not a failed build


def load_readonly(db_dir: Path):
    """An in-memory copy of the database (a damaged last line is skipped; the files are not touched).

    Raises TuningError when TVM cannot parse a workload or record (hand-edited or foreign files).
    """
    workloads, _ = _read_raw(db_dir / WORKLOADS)
    records, _ = _read_raw(db_dir / RECORDS)
    with tempfile.TemporaryDirectory(prefix="autoglm-db-") as tmp:
        _rewrite(Path(tmp, WORKLOADS), [line for _, line in workloads])
        _rewrite(Path(tmp, RECORDS), [line for _, line in _valid_records(records, len(workloads))])
        # JSONDatabase reads everything at construction and writes only on commit (none happen here)
        return _json_database(tmp, db_dir, allow_missing=False)


def _json_database(work_dir: str | Path, db_dir: Path, *, allow_missing: bool):
    """MetaSchedule's JSONDatabase over `work_dir`; a line TVM cannot parse is a TuningError naming `db_dir`."""
    from tvm.s_tir import meta_schedule as ms

    from .schedules.int8 import register_dot_intrinsics
    from .tune import light_tensor_intrin

    # records of tensorized kernels name the intrinsics they use: TVM's CPU ones and the toolkit's own
    light_tensor_intrin()
    register_dot_intrinsics()
    try:
        return ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=allow_missing, module_equality="structural")
    except Exception as exc:  # TVM raises its own error types for every kind of bad line
        text = str(exc).strip()
        reason = text.splitlines()[-1] if text else type(exc).__name__
        raise TuningError(f"tuning database {db_dir} is corrupt (TVM cannot read its records: {reason[:160]}); "
                          f"move it away or use another --db") from None


def ApplyTuningRecords(db_dir: Path, target: Target, result: ApplyResult):  # noqa: N802 - a pass constructor
    """Module pass: schedule each PrimFunc that has a record in `db_dir` that beats its default schedule.

    Selected records go into an in-memory database that TVM's `MetaScheduleApplyDatabase` applies;
    applied kernels get the attribute `autoglm.tuned` (and `tirx.is_scheduled`, so the default rules
    that run next leave them alone). `result` is filled in while the pass runs.
    """
    import tvm
    from tvm import relax, tirx
    from tvm.s_tir import meta_schedule as ms

    tt = tvm.target.Target(target.tvm)
    source = load_readonly(db_dir)
    defaults = {k: v for k, v in read_tasks(db_dir).items()}

    @tvm.transform.module_pass(opt_level=0, name="AutoglmApplyTuningRecords")
    def _pass(mod, _ctx):
        chosen = ms.database.MemoryDatabase(module_equality="structural")
        names = []
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            wmod = normalize(func)
            rec = best_record(source, wmod, tt)
            if rec is None:
                continue
            tuned_ms = record_ms(rec)
            default_ms = defaults.get(workload_key(rec.workload.mod), {}).get("default_ms")
            if default_ms is not None and tuned_ms is not None and tuned_ms >= default_ms:
                result.kept_default.append(gv.name_hint)
                continue
            w = chosen.commit_workload(wmod)
            chosen.commit_tuning_record(ms.database.TuningRecord(rec.trace, w, rec.run_secs, rec.target, rec.args_info))
            names.append(gv.name_hint)
        if not names:
            return mod
        with tt, chosen:
            new = relax.transform.MetaScheduleApplyDatabase()(mod)
        for name in names:
            gv = new.get_global_var(name)
            new[gv] = new[gv].with_attr(TUNED_ATTR, True)
        result.tuned.extend(names)
        result.records_applied += len(names)
        return new

    return _pass


def kernel_schedule(func) -> str:
    """"tuned", "default:<rule>" or "none": what scheduled one PrimFunc."""
    attrs = func.attrs
    if attrs is not None and TUNED_ATTR in attrs:
        return "tuned"
    if attrs is not None and SCHEDULE_ATTR in attrs:
        return f"default:{attrs[SCHEDULE_ATTR]}"
    return "none"


def kernel_schedules(mod) -> dict[str, str]:
    """Kernel name -> "tuned", "default:<rule>" or "none": what scheduled each PrimFunc."""
    from tvm import tirx

    out = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        out[gv.name_hint] = kernel_schedule(func)
    return dict(sorted(out.items()))



def tuning_passes_for(db_dir: Path | None, target: Target) -> list:
    """The passes `compile` runs before the default schedules: apply the records of `db_dir` (if any)."""
    if db_dir is None:
        return []
    return [ApplyTuningRecords(Path(db_dir), target, ApplyResult(str(db_dir), 0, [], []))]


def tuning_summary(db_dir: Path | None, lowered) -> dict[str, Any]:
    """The manifest's `tuning` entry: database, records applied, and per kernel what scheduled it."""
    kernels = kernel_schedules(lowered)
    return {
        "database": str(db_dir) if db_dir is not None else None,
        "records_applied": sum(1 for v in kernels.values() if v == "tuned"),
        "kernels": kernels,
    }
