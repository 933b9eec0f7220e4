"""The Optuna study behind a search: where it is stored, how it resumes, how its trials run.

A search resumes without flags. Its study lives in the work directory, `study.db` (SQLite) for one worker
or `study.journal` (Optuna's journal file) for several, since SQLite is for one writer (Optuna FAQ), or in
the storage the user names: a `.journal`/`.log` file or a database URL (`postgresql://user@host/db`).
Running the same search again opens the same study, keeps every finished trial and runs only the missing
ones; trials a killed process left RUNNING are failed, so they neither block nor count.

    study = open_study("mbconv-rpi4", None, workdir, workers=1)
    print(f"resuming study {study.study_name}: {len(completed_trials(study))} completed trials kept")
    run_trials(study, objective, n_trials=50)
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from compile import AutoglmError, UsageError

Objective = Callable[[optuna.Trial], float | Sequence[float]]

DIRECTIONS = ("minimize", "maximize")
JOURNAL_SUFFIXES = (".journal", ".log")
# RDB heartbeat: a worker records one every HEARTBEAT_INTERVAL_S while it runs a trial; a RUNNING trial
# without one for GRACE_PERIOD_S (its process was killed) is failed by the next trial any worker starts.
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 30
# A server that does not answer is an error after this long, not a hang (psycopg, psycopg2, MySQLdb, PyMySQL).
CONNECT_TIMEOUT_S = 10
# What counts toward n_trials: a pruned trial is an answer ("this configuration is bad"), not to be rerun.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# How long interrupted workers get to mark their trials FAIL before they are terminated.
STOP_GRACE_S = 5.0


class StudyWorkerError(AutoglmError):
    """A worker process of a parallel study failed; the message is its error in one line."""


@contextmanager
def _quiet() -> Iterator[None]:
    # The heartbeat and fail_stale_trials are "experimental" in Optuna: a warning per use, nothing to act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _one_line(exc: BaseException) -> str:
    # sqlalchemy wraps the driver's error and appends a multi-line "Background on this error" note.
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_storage(storage: str | None, workdir: Path, workers: int) -> tuple[Any, str]:
    """The storage `optuna.create_study(storage=...)` takes, and its description for logs and lineage.

    None: `workdir/study.db` (SQLite) for one worker, `workdir/study.journal` for more. A string: a journal
    file (`*.journal`, `*.log`) or a database URL. `workdir` is created if missing. The description is a
    `storage` string too: the URL (password hidden) or the journal's absolute path.
    """
    if workers < 1:
        raise UsageError(f"workers is {workers}; it must be 1 or more")
    workdir = Path(workdir)
    if storage is None:
        _make_workdir(workdir)
        if workers == 1:
            return _rdb(f"sqlite:///{(workdir / 'study.db').resolve()}", workers)
        return _journal(workdir / "study.journal")
    if "://" in storage:
        opened = _rdb(storage, workers)
    elif storage.endswith(JOURNAL_SUFFIXES):
        opened = _journal(Path(storage).expanduser())
    else:
        raise UsageError(f"storage {storage!r} is neither a journal file (*.journal, *.log) nor a database URL "
                         "(sqlite:///study.db, postgresql://user@host/db)")
    _make_workdir(workdir)  # the search's other files go there; made only once the storage opened
    return opened


def _make_workdir(workdir: Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the work directory {workdir}: {e.strerror or e}") from None


def _rdb(url: str, workers: int) -> tuple[RDBStorage, str]:
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"storage {url!r} is not a database URL; e.g. sqlite:///study.db, "
                         "postgresql://user@host/db") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and workers > 1:
        raise UsageError(f"storage {shown} is SQLite, which is for one worker; with {workers} workers use a "
                         ".journal file or a server database (postgresql://...)")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise UsageError(f"storage {shown} is an in-memory database, lost when the search stops; name a file: "
                         "sqlite:///study.db")
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() in ("postgresql", "mysql") and "connect_timeout" not in parsed.query:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        with _quiet():
            rdb = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                             grace_period=GRACE_PERIOD_S)
    except ImportError as e:
        # optuna re-raises the driver's ModuleNotFoundError with a generic text; the cause names the module
        raise UsageError(f"cannot open storage {shown}: its database driver is not installed "
                         f"({_one_line(e.__cause__ or e)})") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise UsageError(f"cannot open storage {shown}: unknown database {parsed.get_backend_name()!r}; use "
                         "sqlite:///, postgresql:// or mysql:// URLs, or a .journal file") from None
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError) as e:
        # RuntimeError: a schema from another Optuna version; ValueError: a malformed query string
        raise UsageError(f"cannot open storage {shown}: {_one_line(e)}") from None
    return rdb, shown


def _journal(path: Path) -> tuple[JournalStorage, str]:
    # A worker killed while appending may leave `<file>.lock`; the next writer takes it over after the lock's
    # 30 s grace period, so a resume can pause once but never blocks.
    path = path.absolute()
    if not path.parent.is_dir():
        raise UsageError(f"cannot open storage {path}: directory {path.parent} does not exist")
    try:
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot open storage {path}: not an Optuna journal file ({_one_line(e)})") from None


def _sampler(multi_objective: bool, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed) if multi_objective else optuna.samplers.TPESampler(seed=seed)


def open_study(name: str, storage: str | None, workdir: Path, workers: int, *,
               directions: list[str] | None = None, seed: int = 0, pruner: bool = True) -> optuna.Study:
    """Create the study `name`, or open it to resume it; trials a killed process left RUNNING become FAIL.

    One direction ("minimize" by default): TPE and a median pruner. Several: NSGA-II and no pruner (Optuna
    does not prune multi-objective studies). `len(completed_trials(study))` is what a resume keeps.
    """
    if not name:
        raise UsageError("a study needs a name")
    directions = list(directions or ["minimize"])
    for d in directions:
        if d not in DIRECTIONS:
            raise UsageError(f"study direction {d!r} is not one of {', '.join(DIRECTIONS)}")
    store, where = resolve_storage(storage, workdir, workers)
    multi = len(directions) > 1
    chosen_pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if pruner and not multi
                     else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=store, study_name=name, directions=directions, load_if_exists=True,
                                sampler=_sampler(multi, seed), pruner=chosen_pruner)
    found = [d.name.lower() for d in study.directions]
    if found != directions:
        raise UsageError(f"study {name!r} in {where} was created to {', '.join(found)}, not to "
                         f"{', '.join(directions)}; use another study name or storage")
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        # The same seed again would replay the first trials' random start-up proposals: offset it by the
        # history, which keeps a resumed run deterministic.
        study.sampler = _sampler(multi, seed + existing)
    _fail_stale_trials(study, workers)
    return study


def _fail_stale_trials(study: optuna.Study, workers: int) -> None:
    if workers == 1:
        # Our convention: one worker means no other process runs this study in this storage, so whatever is
        # RUNNING now was left by a killed process.
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        return
    # Other processes may be running trials now: only those whose heartbeat stopped are stale (RDB storage).
    # Journal storage has no heartbeat in Optuna 5.0; its stale RUNNING trials stay RUNNING until a one-worker
    # open, which is harmless: they are not counted as finished, and neither TPE, NSGA-II nor the median
    # pruner waits for RUNNING trials.
    with _quiet():
        optuna.storages.fail_stale_trials(study)


def completed_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE trials, in trial order."""
    return study.get_trials(states=(TrialState.COMPLETE,))


def run_trials(study: optuna.Study, objective: Objective, n_trials: int, workers: int = 1,
               timeout: float | None = None) -> int:
    """Run the trials the study lacks to have `n_trials` finished (COMPLETE or PRUNED); returns how many ran.

    One worker runs them in this process. More start that many processes ("spawn": no fork of a process that
    may hold torch or TVM threads) on the study's storage, which must be a journal file or a server database;
    `objective` is pickled to them by reference, so it must be a module-level function of an importable
    module (or a functools.partial of one). Each worker reseeds its copy of the sampler, so that workers do not
    propose the same trials; a parallel run is therefore not reproducible. KeyboardInterrupt propagates.
    """
    if workers < 1:
        raise UsageError(f"workers is {workers}; it must be 1 or more")
    if n_trials < 0:
        raise UsageError(f"n_trials is {n_trials}; it must be 0 or more")
    missing = n_trials - len(study.get_trials(deepcopy=False, states=FINISHED))
    if missing <= 0:
        return 0
    before = len(study.get_trials(deepcopy=False))
    if workers == 1:
        with _quiet():
            study.optimize(objective, n_trials=missing, timeout=timeout)
    else:
        _run_workers(study, objective, missing, workers, timeout)
    return len(study.get_trials(deepcopy=False)) - before


def _storage_of(study: optuna.Study) -> Any:
    storage = study._storage
    # optuna.create_study wraps an RDBStorage in a per-process cache: the workers get the storage itself
    return storage._backend if isinstance(storage, optuna.storages._CachedStorage) else storage


def _run_workers(study: optuna.Study, objective: Objective, missing: int, workers: int,
                 timeout: float | None) -> None:
    storage = _storage_of(study)
    if isinstance(storage, InMemoryStorage) or (isinstance(storage, RDBStorage) and storage.url.startswith("sqlite")):
        raise UsageError(f"{workers} workers need a journal file or a server database as the study's storage, "
                         "not SQLite or memory")
    main = sys.modules.get("__main__")
    if getattr(objective, "__module__", None) == "__main__" and not getattr(main, "__file__", None):
        raise UsageError("with several workers the objective must be defined in an importable module, "
                         "not in an interactive session or `python -c`")
    try:
        pickle.dumps(objective)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise UsageError(f"with several workers the objective runs in other processes and must be a "
                         f"module-level function of an importable module ({_one_line(e)})") from None
    shares = [s for s in (missing // workers + (i < missing % workers) for i in range(workers)) if s]
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker, name=f"autoglm-study-{i + 1}",
                         args=(i + 1, study.study_name, storage, study.sampler, study.pruner, objective, share,
                               timeout, errors))
             for i, share in enumerate(shares)]
    try:
        for p in procs:
            p.start()
        # Wait for all: a failing worker does not stop the others, whose trials are kept.
        for p in procs:
            p.join()
    except BaseException:
        # Ctrl-C reaches the workers too (one process group): let them mark their trials FAIL and exit.
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            if p.pid is None:
                continue
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join()
        raise
    reported = {}
    while not errors.empty():
        index, cls, message = errors.get()
        reported[index] = (cls, message)
    for i, p in enumerate(procs, 1):
        if p.exitcode == 0:
            continue
        cls, message = reported.get(i, (None, None))
        where = f"study worker {i} of {len(procs)}"
        if cls is not None:
            raise cls(f"{where}: {message}")
        if message is None:
            message = (f"killed by signal {-p.exitcode}" if p.exitcode is not None and p.exitcode < 0
                       else f"exited with code {p.exitcode}")
        raise StudyWorkerError(f"{where} failed: {message}")


def _worker(index: int, name: str, storage: Any, sampler: optuna.samplers.BaseSampler,
            pruner: optuna.pruners.BasePruner, objective: Objective, n_trials: int, timeout: float | None,
            errors: Any) -> None:
    """One worker process of run_trials: `n_trials` trials of the study `name`; errors go back as one line."""
    try:
        sampler.reseed_rng()  # copies of one seeded sampler would propose the same trials in every worker
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        with _quiet():
            study.optimize(objective, n_trials=n_trials, timeout=timeout)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if isinstance(e, AutoglmError):
            errors.put((index, type(e), str(e)))
        else:
            traceback.print_exc()  # a bug in the objective: its traceback is on stderr, the parent says one line
            errors.put((index, None, f"{type(e).__name__}: {_one_line(e)}"))
        sys.exit(1)
