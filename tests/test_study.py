"""The search's Optuna study: storage chosen by worker count, bad storages as one-line errors, a study killed
with SIGKILL and resumed (finished trials kept, stale RUNNING ones failed, only the missing ones run),
pruned trials counted, and trials run by spawned worker processes on a journal file."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="optuna runs the architecture search's study")

from optuna.storages import JournalStorage, RDBStorage  # noqa: E402

from compile import UsageError  # noqa: E402
from toolkit.search.study import (  # noqa: E402
    StudyWorkerError, completed_trials, open_study, resolve_storage, run_trials,
)

REPO = Path(__file__).resolve().parents[1]


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -5.0, 5.0)
    return (x - 1.0) ** 2


def good_then_bad(trial: optuna.Trial) -> float:
    """Trials 0 and 1 report 0.0 at every step; later ones report worse values and get pruned at step 1."""
    trial.suggest_float("x", -5.0, 5.0)
    value = 0.0 if trial.number < 2 else 10.0
    for step in range(3):
        trial.report(value + step, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


# --- storage ------------------------------------------------------------------------------------------------


def test_default_storage_is_sqlite_for_one_worker_and_a_journal_for_more(tmp_path):
    work = tmp_path / "new" / "work"
    storage, where = resolve_storage(None, work, 1)
    assert isinstance(storage, RDBStorage)
    assert where == f"sqlite:///{work.resolve() / 'study.db'}" and (work / "study.db").is_file()
    storage, where = resolve_storage(None, work, 3)
    assert isinstance(storage, JournalStorage)
    assert where == str(work.resolve() / "study.journal") and (work / "study.journal").is_file()
    # an explicit journal file, whatever the worker count; a description is itself a storage string
    storage, where = resolve_storage(str(tmp_path / "runs.log"), work, 2)
    assert isinstance(storage, JournalStorage) and where == str(tmp_path / "runs.log")
    assert isinstance(resolve_storage(f"sqlite:///{tmp_path / 'x.db'}", work, 1)[0], RDBStorage)


@pytest.mark.parametrize("storage, workers, fragment", [
    ("sqlite:///{tmp}/s.db", 2, "SQLite, which is for one worker"),
    ("sqlite:////nonexistent/dir/s.db", 1, "unable to open database file"),
    ("sqlite://", 1, "is an in-memory database"),
    ("study.db", 1, "neither a journal file (*.journal, *.log) nor a database URL"),
    ("postgresql://user:secret@127.0.0.1:9/db", 1, "cannot open storage postgresql://user:***@127.0.0.1:9/db"),
    ("mysql://user@127.0.0.1:9/db", 1, "cannot open storage mysql://user@127.0.0.1:9/db"),
    ("nosuchdb://host/db", 1, "unknown database 'nosuchdb'"),
    ("{tmp}/missing/dir/s.journal", 1, "does not exist"),
    ("{tmp}/garbage.log", 1, "not an Optuna journal file"),
    (None, 0, "workers is 0; it must be 1 or more"),
])
def test_bad_storage_is_a_one_line_usage_error(tmp_path, storage, workers, fragment):
    (tmp_path / "garbage.log").write_text("12:00 server started\n12:01 request served\n")
    with pytest.raises(UsageError) as info:
        resolve_storage(storage and storage.format(tmp=tmp_path), tmp_path / "work", workers)
    message = str(info.value)
    assert fragment in message and "\n" not in message and "secret" not in message, message
    assert info.value.__cause__ is None, "the one line is the whole story"
    assert info.value.__context__ is None or info.value.__suppress_context__
    assert not (tmp_path / "work").exists(), "nothing made for a storage that did not open"


def test_directions_choose_sampler_and_pruner_and_must_match_on_resume(tmp_path):
    single = open_study("one", None, tmp_path, 1)
    assert isinstance(single.sampler, optuna.samplers.TPESampler)
    assert isinstance(single.pruner, optuna.pruners.MedianPruner)
    assert isinstance(open_study("one", None, tmp_path, 1, pruner=False).pruner, optuna.pruners.NopPruner)
    multi = open_study("two", None, tmp_path, 1, directions=["minimize", "maximize"])
    assert isinstance(multi.sampler, optuna.samplers.NSGAIISampler)
    assert isinstance(multi.pruner, optuna.pruners.NopPruner)
    with pytest.raises(UsageError, match="created to minimize, maximize, not to minimize; use another study"):
        open_study("two", None, tmp_path, 1)
    with pytest.raises(UsageError, match="'fastest' is not one of minimize, maximize"):
        open_study("three", None, tmp_path, 1, directions=["fastest"])


# --- kill and resume ----------------------------------------------------------------------------------------

# Trials 0-2 take 0.3 s; trial 3 sleeps until killed. Each trial touches `started-N` first, so `started-3`
# means trials 0-2 are COMPLETE in the storage and trial 3 is RUNNING.
KILLED_SEARCH = """
import sys, time
from pathlib import Path
from toolkit.search.study import open_study, run_trials

work, storage = Path(sys.argv[1]), sys.argv[2] or None

def objective(trial):
    x = trial.suggest_float("x", -5.0, 5.0)
    (work / f"started-{trial.number}").touch()
    time.sleep(0.3 if trial.number < 3 else 600)
    return (x - 1.0) ** 2

run_trials(open_study("resume", storage, work, 1), objective, n_trials=100)
"""


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_killed_study_resumes_with_its_finished_trials(tmp_path, kind):
    work = tmp_path / "work"
    storage = None if kind == "sqlite" else str(tmp_path / "study.journal")
    script = tmp_path / "search.py"
    script.write_text(KILLED_SEARCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(work), storage or ""], env=env, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not (work / "started-3").exists():
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the search did not reach trial 3 in 60 s"
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    study = open_study("resume", storage, work, 1)
    kept = completed_trials(study)
    assert [t.number for t in kept] == [0, 1, 2]
    for t in kept:
        assert set(t.params) == {"x"} and t.value == pytest.approx((t.params["x"] - 1.0) ** 2)
    assert states(study) == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"], "trial 3 was RUNNING when killed"

    assert run_trials(study, quadratic, n_trials=6) == 3
    done = completed_trials(study)
    assert len(done) == 6 and [(t.number, t.params, t.value) for t in done[:3]] == \
        [(t.number, t.params, t.value) for t in kept]
    # the resumed sampler is seeded past the history, so it does not replay the first trials' proposals
    assert len({t.params["x"] for t in done}) == 6
    assert run_trials(open_study("resume", storage, work, 1), quadratic, n_trials=6) == 0


def test_pruned_trials_count_toward_n_trials_and_are_not_rerun(tmp_path):
    study = open_study("pruned", None, tmp_path, 1)
    assert run_trials(study, good_then_bad, n_trials=5) == 5
    assert states(study) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED", "PRUNED"]
    again = open_study("pruned", None, tmp_path, 1)
    assert len(completed_trials(again)) == 2
    assert run_trials(again, good_then_bad, n_trials=5) == 0
    assert run_trials(again, good_then_bad, n_trials=6) == 1 and len(again.trials) == 6


def test_keyboard_interrupt_propagates_and_fails_the_trial(tmp_path):
    def interrupted(trial):
        raise KeyboardInterrupt

    study = open_study("ctrl-c", None, tmp_path, 1)
    with pytest.raises(KeyboardInterrupt):
        run_trials(study, interrupted, n_trials=3)
    assert states(study) == ["FAIL"]


# --- parallel workers ---------------------------------------------------------------------------------------

WORKER_OBJECTIVES = """
import os

def objective(trial):
    x = trial.suggest_float("x", -5.0, 5.0)
    trial.set_user_attr("pid", os.getpid())
    return (x - 1.0) ** 2

def failing(trial):
    raise RuntimeError("the board is unreachable")
"""


@pytest.fixture
def worker_objectives(tmp_path, monkeypatch):
    """Objectives spawned workers can import: a module under tmp_path, on the sys.path they inherit."""
    (tmp_path / "study_worker_objectives.py").write_text(WORKER_OBJECTIVES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("study_worker_objectives", None)
    return importlib.import_module("study_worker_objectives")


def test_two_workers_on_a_journal_complete_the_requested_total(tmp_path, worker_objectives):
    study = open_study("parallel", None, tmp_path / "work", 2)
    assert isinstance(study._storage, JournalStorage)
    assert run_trials(study, worker_objectives.objective, n_trials=6, workers=2) == 6
    done = completed_trials(study)
    assert len(done) == 6 and states(study) == ["COMPLETE"] * 6
    pids = {t.user_attrs["pid"] for t in done}
    assert len(pids) == 2 and os.getpid() not in pids, "three trials in each of two worker processes"
    assert len({t.params["x"] for t in done}) == 6, "the workers' samplers are seeded apart"
    assert run_trials(study, worker_objectives.objective, n_trials=6, workers=2) == 0


def test_a_failing_worker_is_one_line(tmp_path, worker_objectives):
    study = open_study("failing", None, tmp_path / "work", 2)
    with pytest.raises(StudyWorkerError, match=r"^study worker 1 of 2 failed: RuntimeError: the board is unreachable$"):
        run_trials(study, worker_objectives.failing, n_trials=2, workers=2)


def test_workers_need_an_importable_objective_and_a_shared_storage(tmp_path, worker_objectives):
    journal = open_study("local", None, tmp_path / "j", 2)
    with pytest.raises(UsageError, match="must be a module-level function of an importable module"):
        run_trials(journal, lambda trial: 0.0, n_trials=2, workers=2)
    sqlite = open_study("local", None, tmp_path / "s", 1)
    with pytest.raises(UsageError, match="2 workers need a journal file or a server database"):
        run_trials(sqlite, worker_objectives.objective, n_trials=2, workers=2)
    assert journal.trials == [] and sqlite.trials == []
