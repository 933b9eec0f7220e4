"""MetaSchedule tuning of a model's fused kernels into a per-target tuning database.

How a run goes:

1. The model is imported and fused exactly as `compile` fuses it (the CPU pipeline up to the
   schedule stage), so every task's workload is a PrimFunc that `compile --tuning-db` will meet.
2. MetaSchedule extracts one task per distinct kernel. A task whose workload already has records
   in the database and is not marked interrupted (see `tuning_db`) is *reused*: nothing is
   measured for it, whichever model it was tuned for.
3. For each task left, the default rule-based schedule (`compile.schedule`) is built and measured
   once with the same builder and runner as the search. That gives the baseline the search has
   to beat, and the weights for the budget: each task gets trials (or time) in proportion to
   calls x default latency, so the kernels that dominate the model get most of the search.
   At compile time a tuned record is applied only where it measured faster than the default
   schedule; elsewhere the default rules schedule the kernel.
4. Tasks are tuned one after another. A task's search starts from its default schedule: first the
   default rule's own alternatives (other register-tile shapes and loop orders, up to
   VARIANTS_PER_TASK, nearest the default first; `compile/schedules/knobs.py`) are measured and
   stored as records, since MetaSchedule's generic design space does not hold the blocked-layout
   tiles the rules write. The rest of the task's share goes to MetaSchedule's evolutionary search
   (XGBoost cost model shared across tasks), in its own task-scheduler run that stops at the task's
   trial share or time slice. Measurements are appended to the JSONDatabase as each batch finishes, and the task
   log gets `start`/`done` lines, so a killed run keeps all measured records and the next run
   resumes the unfinished tasks (MetaSchedule seeds their search with the records already there).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import re
import shutil
import socket
import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from targets import Target, host_arch

from . import tuning_db
from .errors import UsageError
from .frontend import load_model
from .tuning_db import TuningError

__all__ = ["RpcSpec", "TaskReport", "TuneSummary", "TuningError", "parse_budget", "parse_rpc", "tune_model"]

DEFAULT_BATCH = 16
MAX_TRIALS_PER_TASK_TIMED = 100_000
VARIANTS_PER_TASK = 24  # the default rule's alternatives measured first (compile/schedules/knobs.py)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """Seconds of a duration like `90s`, `15m`, `1h30m`, `2h`."""
    s = text.strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|min|m|sec|s)", s)
    if not s or not parts or "".join(n + u for n, u in parts) != s:
        raise UsageError(f"--budget {text!r} is not a duration: use e.g. 90s, 15m, 1h30m")
    seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if seconds <= 0:
        raise UsageError(f"--budget {text!r} must be longer than zero")
    return seconds


@dataclass(frozen=True)
class RpcSpec:
    host: str
    port: int
    key: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.key}"


_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
REMOTE_TRACKER_FLAG = "--allow-remote-tracker"
RPC_SAFETY = ("TVM RPC has no authentication: keep tracker and servers on 127.0.0.1 and reach a board "
              "through an SSH tunnel (docs/bench-schema.md, 'Reaching a board')")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback interface (a name or a literal address)."""
    import ipaddress

    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_loopback(host: str, flag: str, text: str, allow_remote: bool) -> None:
    """The one rule for `bench --device rpc://` and `tune --rpc`: a tracker on loopback, unless opted out."""
    if not allow_remote and not is_loopback(host):
        raise UsageError(f"{flag} {text!r}: the tracker must be on a loopback address (127.0.0.1); {RPC_SAFETY}; "
                         f"to use a remote tracker anyway, add {REMOTE_TRACKER_FLAG}")


def parse_rpc(text: str, default_key: str, allow_remote: bool = False) -> RpcSpec:
    """`HOST:PORT[/KEY]` of an RPC tracker on loopback (the key defaults to the target's rpc_key)."""
    m = re.fullmatch(r"\s*([^:/\s]+):([0-9]{1,5})(?:/([^/\s]+))?\s*", text, flags=re.ASCII)
    if not m or not (0 < int(m.group(2)) < 65536):
        raise UsageError(f"--rpc {text!r} is not HOST:PORT[/KEY] of an RPC tracker (e.g. 127.0.0.1:9190/rpi4)")
    require_loopback(m.group(1), "--rpc", text, allow_remote)
    return RpcSpec(m.group(1), int(m.group(2)), m.group(3) or default_key)


def check_rpc(spec: RpcSpec, timeout: float = 5.0) -> int:
    """Number of servers registered under the key; raises TuningError when the tracker is unreachable or has none."""
    try:
        with socket.create_connection((spec.host, spec.port), timeout=timeout):
            pass
    except OSError as exc:
        raise TuningError(f"RPC tracker {spec.host}:{spec.port} is unreachable ({exc.strerror or exc}); "
                          f"start one with `python -m tvm.exec.rpc_tracker --port {spec.port}`") from None
    from tvm import rpc

    try:
        summary = rpc.connect_tracker(spec.host, spec.port).summary()
    except Exception as exc:  # noqa: BLE001 - anything the tracker protocol raises
        raise TuningError(f"{spec.host}:{spec.port} does not answer as an RPC tracker: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    servers = sum(1 for item in summary.get("server_info", []) if item["key"].split(":", 1)[-1] == spec.key)
    if servers == 0:
        keys = sorted({item["key"].split(":", 1)[-1] for item in summary.get("server_info", [])})
        raise TuningError(f"no board is registered under key {spec.key!r} at RPC tracker {spec.host}:{spec.port}"
                          + (f" (keys there: {', '.join(keys)})" if keys else " (no servers registered)"))
    return servers


@dataclass
class TaskReport:
    name: str
    workload: str
    calls: int
    status: str  # "reused", "tuned", "resumed", "skipped" (no budget left)
    default_rule: str | None = None
    default_ms: float | None = None
    best_ms: float | None = None
    trials: int = 0
    records: int = 0

    @property
    def effective_ms(self) -> float | None:
        vals = [v for v in (self.default_ms, self.best_ms) if v is not None]
        return min(vals) if vals else None


@dataclass
class TuneSummary:
    model: str
    target: str
    database: str
    measured_on: str
    budget: str
    tasks: list[TaskReport] = field(default_factory=list)
    trials_measured: int = 0
    default_measurements: int = 0
    records_in_db: int = 0
    repaired_lines: int = 0
    elapsed_s: float = 0.0
    threads: int | None = None          # the thread count kernels were measured at (local runs)

    @property
    def tasks_tuned(self) -> int:
        return sum(1 for t in self.tasks if t.status in ("tuned", "resumed"))

    @property
    def tasks_reused(self) -> int:
        return sum(1 for t in self.tasks if t.status == "reused")

    @property
    def unmeasured(self) -> list[str]:
        """Kernels whose default schedule could not be timed (e.g. a gather that random indices send out of bounds)."""
        return [t.name for t in self.tasks if t.default_ms is None]

    def estimate_ms(self, which: str) -> float | None:
        """Sum over the measured kernels of calls x latency: `default` schedules only, or `best` (tuned where faster).

        Kernels in `unmeasured` are left out of both sums, so the two stay comparable."""
        measured = [t for t in self.tasks if t.default_ms is not None]
        if not measured:
            return None
        return sum(t.calls * (t.default_ms if which == "default" else t.effective_ms) for t in measured)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "target": self.target, "database": self.database, "measured_on": self.measured_on,
            "threads": self.threads,
            "budget": self.budget, "tasks_total": len(self.tasks), "tasks_tuned": self.tasks_tuned,
            "tasks_reused": self.tasks_reused, "trials_measured": self.trials_measured,
            "default_measurements": self.default_measurements, "records_in_db": self.records_in_db,
            "repaired_lines": self.repaired_lines, "elapsed_s": round(self.elapsed_s, 2),
            "estimated_kernel_ms": {"default": self.estimate_ms("default"), "best": self.estimate_ms("best"),
                                    "unmeasured_kernels": self.unmeasured},
            "tasks": [asdict(t) for t in self.tasks],
        }


class Progress:
    """Callbacks a front end implements to show a run; the defaults do nothing."""

    def phase(self, text: str) -> None: ...

    def start(self, total: float, unit: str) -> None: ...

    def update(self, done: float, *, task: str, trials: int, best_ms: float | None, model_ms: float | None) -> None: ...

    def task_done(self, report: TaskReport) -> None: ...

    def stop(self) -> None: ...


def _light_tensor_intrin(target: Target) -> None:
    """Register only the CPU tensor intrinsics MetaSchedule may need for `target` (see light_tensor_intrin)."""
    if target.device == "cpu":
        light_tensor_intrin(("x86" if target.arch == "x86_64" else "arm_cpu",))


def light_tensor_intrin(families: tuple[str, ...] = ("x86", "arm_cpu")) -> None:
    """Register TVM's CPU tensor intrinsics of `families` without TVM's CUDA ones.

    `TuneContext` imports `tvm.s_tir.tensor_intrin`, whose CUDA part takes ~40 s to import on a
    small CPU. For CPU targets a stand-in package that imports only the CPU intrinsics does the same
    job in a fraction of that. A tuning record names the intrinsics its trace tensorizes with, and
    TVM cannot parse it while they are unregistered, so `compile --tuning-db` needs them too.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        import tvm.s_tir

        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return
        pkg = types.ModuleType(name)
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = spec.origin
        pkg.__package__ = name
        sys.modules[name] = pkg
        tvm.s_tir.tensor_intrin = pkg
    for family in families:
        importlib.import_module(f"{name}.{family}")


def fused_module(mod, target: Target):
    """The model as `compile` has it right before scheduling: dispatched, legalized, folded, fused."""
    import tvm

    from .build import cpu_front_passes

    tt = tvm.target.Target(target.tvm)
    with tt:
        return tvm.transform.Sequential(cpu_front_passes(tt, target))(mod)


def _default_schedule(task_mod, target: Target):
    """The task scheduled by the default rules (or as it is, when no rule applies) and the rule's name."""
    import tvm

    from .schedule import schedule_passes

    passes = schedule_passes(target)
    if not passes:
        return task_mod, None
    fresh = tvm.IRModule({"main": task_mod["main"]})  # a pass may update its input module in place
    with tvm.target.Target(target.tvm):
        out = tvm.transform.Sequential(passes)(fresh)
    func = out["main"]
    rule = func.attrs[tuning_db.SCHEDULE_ATTR] if func.attrs is not None and tuning_db.SCHEDULE_ATTR in func.attrs else None
    return out, (str(rule) if rule is not None else None)


def _measure(builder, runner, mods: list, tt) -> list[float | None]:
    """Build and run plain (untraced) PrimFunc modules with the tuning builder/runner: median ms each."""
    return [1e3 * sorted(secs)[len(secs) // 2] if secs else None for secs in _run_secs(builder, runner, mods, tt)]


def _run_secs(builder, runner, mods: list, tt) -> list[list[float] | None]:
    """Build and run PrimFunc modules with the tuning builder/runner: the runner's seconds per repeat, each."""
    from tvm.s_tir import meta_schedule as ms

    results: list[list[float] | None] = [None] * len(mods)
    built = builder.build([ms.builder.BuilderInput(m, tt) for m in mods])
    inputs, where = [], []
    for i, (m, b) in enumerate(zip(mods, built)):
        if b.error_msg is None and b.artifact_path:
            # the builder drops weight-repacking stages, so the arguments are those of the packed kernel
            args = ms.arg_info.ArgInfo.from_entry_func(m, remove_preproc=True)
            inputs.append(ms.runner.RunnerInput(b.artifact_path, "cpu", args))
            where.append(i)
    futures = runner.run(inputs) if inputs else []
    for i, fut in zip(where, futures):
        res = fut.result()
        if res.error_msg is None and res.run_secs:
            results[i] = [float(s) for s in res.run_secs]
    for b in built:
        if b.artifact_path:
            shutil.rmtree(Path(b.artifact_path).parent, ignore_errors=True)
    return results


def _allocate(total: int, weights: list[float]) -> list[int]:
    """Split `total` trials: half evenly, half in proportion to the weights (largest remainder)."""
    n = len(weights)
    if n == 0 or total <= 0:
        return [0] * n
    order = sorted(range(n), key=lambda i: -weights[i])
    if total < n:
        out = [0] * n
        for i in order[:total]:
            out[i] = 1
        return out
    even = max(1, total // (2 * n))
    out = [even] * n
    rest = total - even * n
    wsum = sum(weights) or float(n)
    shares = [rest * (w if sum(weights) else 1.0) / wsum for w in weights]
    for i in range(n):
        out[i] += int(math.floor(shares[i]))
    left = total - sum(out)
    for i in sorted(range(n), key=lambda i: -(shares[i] - math.floor(shares[i])))[:left]:
        out[i] += 1
    return out


def _make_builder(target: Target):
    """A LocalBuilder-like builder whose worker processes live across batches.

    TVM's LocalBuilder starts a fresh process pool for every batch, and each new worker pays the
    TVM import (~6 s here) again; this one keeps its pool and renews it every 20 batches (the
    reason TVM gives for the fresh pools is a slow memory leak in long-lived workers).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    from . import tune_worker

    f_build = tune_worker.build
    f_export = functools.partial(tune_worker.export, compiler=target.cross_compiler)
    workers = max(1, min(2, target.threads if target.is_native else 2))

    @derived_object
    class KeptPoolBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = None
            self.uses = 0

        def build(self, build_inputs):
            if self.pool is None or self.uses >= 20:
                if self.pool is not None:
                    self.pool.shutdown()
                self.pool = PopenPoolExecutor(max_workers=workers, timeout=120)
                self.uses = 0
            self.uses += 1
            results = []
            args = [(f_build, f_export, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            for res in self.pool.map_with_error_catching(lambda x: _worker_func(*x), args):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, "build timed out after 120 s"))
                    self.uses = 1 << 30  # a killed worker: start a fresh pool next time
                else:
                    results.append(BuilderResult(None, "build failed:\n" + str(res.value)))
            return results

    return KeptPoolBuilder()


def _make_runner(target: Target, rpc: RpcSpec | None, threads: int | None = None):
    """MetaSchedule's runner: local worker processes running `threads` TVM threads (default: TVM's, all
    cores), or a board over RPC (its server's TVM_NUM_THREADS decides there)."""
    from tvm.s_tir import meta_schedule as ms

    from . import tune_worker

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False)
    if rpc is not None:
        return ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key,
                                           session_timeout_sec=120),
            evaluator_config=evaluator, max_workers=1)
    init = functools.partial(tune_worker.use_threads, threads) if threads is not None else None
    return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator, initializer=init)


def _classes():
    """MetaSchedule subclasses, defined lazily so importing this module does not import TVM."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    from .artifact import interrupted

    @derived_object
    class OneTaskScheduler(PyTaskScheduler):
        """Runs a single task until its trial share, its deadline or its search space ends."""

        def __init__(self, deadline: float | None, state: dict):
            super().__init__()
            self.deadline = deadline
            self.state = state  # "in_flight": a batch was sent and its results not joined yet

        def next_task_id(self) -> int:
            outer = self._outer()
            outer.touch_task(0)
            if outer.tasks_[0].is_terminated:
                return -1
            if self.state.get("in_flight"):
                self.join_running_task(0)
            if interrupted():  # SIGINT/SIGTERM during the search: stop after the batch in flight (its records kept)
                return -1
            # every task gets at least one batch; after that its time slice decides
            if self.deadline is not None and self.state.get("batches", 0) and time.monotonic() >= self.deadline:
                return -1
            self.state["in_flight"] = True
            return 0

    @derived_object
    class ProgressCallback(PyMeasureCallback):
        def __init__(self, on_batch: Callable[[int, list[float]], None], state: dict):
            super().__init__()
            self.on_batch = on_batch
            self.state = state

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
            self.state["in_flight"] = False
            self.state["batches"] = self.state.get("batches", 0) + 1
            ok = []
            for b, r in zip(builder_results, runner_results):
                if b.error_msg is None and r.error_msg is None and r.run_secs:
                    secs = sorted(float(s) for s in r.run_secs)
                    ok.append(1e3 * secs[len(secs) // 2])
            self.on_batch(len(measure_candidates), ok)

    return ms, OneTaskScheduler, ProgressCallback


def tune_model(
    model_path: str | Path,
    target: Target,
    db_dir: str | Path | None = None,
    *,
    trials: int | None = None,
    budget_s: float | None = None,
    rpc: RpcSpec | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    batch: int = DEFAULT_BATCH,
    seed: int = 0,
    progress: Progress | None = None,
    threads: int | None = None,
) -> TuneSummary:
    """Tune the kernels of a model for `target` into the tuning database `db_dir`; see the module doc.
    `threads`: measure at this many threads (the thread count the model will run at; default the target's)."""
    progress = progress or Progress()
    started = time.monotonic()
    if trials is not None and budget_s is not None:
        raise UsageError("give either --trials or --budget, not both")
    if trials is None and budget_s is None:
        raise UsageError("give a tuning budget: --trials N or --budget 15m")
    if trials is not None and trials < 0:
        raise UsageError("--trials must be zero or more")
    if batch < 1:
        raise UsageError("--batch must be at least 1")
    if target.device != "cpu":
        raise UsageError(f"tuning supports CPU targets; {target.name} is a {target.device} target")
    if rpc is None and target.arch != host_arch():
        raise UsageError(f"target {target.name} ({target.arch}) cannot be measured on this machine: give --rpc HOST:PORT[/KEY] "
                         f"of an RPC tracker where a {target.name} board is registered")
    if threads is not None and not 1 <= threads <= 4096:
        raise UsageError(f"--threads {threads}: give 1 to 4096")
    if threads is not None and rpc is not None and threads != target.threads:
        raise UsageError("--threads sets the thread count measured on this machine; on a board the RPC server's "
                         "decides: start it with TVM_NUM_THREADS set")
    threads = threads or target.threads
    db_dir = Path(db_dir) if db_dir is not None else tuning_db.default_db_dir(target, threads)
    tuning_db.check_writable(db_dir)
    tuning_db.check_target(db_dir, target, threads)
    tuning_db.check_readable(db_dir)
    if target.cross_compiler:
        from .build import toolchain

        toolchain(target)  # the candidates are linked with the target's compiler
    progress.phase(f"importing {Path(model_path).name}")
    model = load_model(model_path, input_shapes)
    if rpc is not None:
        progress.phase(f"checking RPC tracker {rpc}")
        check_rpc(rpc)

    import tvm

    _light_tensor_intrin(target)
    from tvm.s_tir import meta_schedule as ms

    # MetaSchedule sizes parallel loops by the target's core count, so the tuning target names it
    tt = tvm.target.Target({**target.tvm, "num-cores": threads})
    progress.phase("fusing and extracting tasks")
    mod = fused_module(model.mod, target)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, tt) if not t.mod.attrs.get("tirx.is_scheduled", False)]
    budget_text = f"{trials} trials" if trials is not None else f"{budget_s:g} s"
    summary = TuneSummary(model.name, target.name, str(db_dir), f"rpc {rpc}" if rpc else f"local, {threads} thread(s)",
                          budget_text, threads=threads if rpc is None else None)

    db_dir.mkdir(parents=True, exist_ok=True)
    with tuning_db.locked(db_dir):
        summary.repaired_lines = tuning_db.repair(db_dir).dropped
        tuning_db.write_meta(db_dir, target, threads)
        db = tuning_db.open_db(db_dir, create=True)
        log = tuning_db.read_tasks(db_dir)

        pending: list[tuple[Any, TaskReport]] = []
        for task in tasks:
            wmod = task.dispatched[0]
            key = tuning_db.workload_key(wmod)
            entry = log.get(key, {})
            rep = TaskReport(task.task_name, key, int(task.weight), "pending",
                             entry.get("default_rule"), entry.get("default_ms"))
            best = tuning_db.best_record(db, wmod, tt)
            if best is not None and entry.get("event") != "start":
                rep.status, rep.best_ms = "reused", tuning_db.record_ms(best)
                rep.records = len(db.get_top_k(db.commit_workload(wmod), 1 << 30))
            else:
                rep.status = "resumed" if entry.get("event") == "start" else "tuned"
                pending.append((task, rep))
            summary.tasks.append(rep)

        if pending and (trials is None or trials > 0):
            builder = _make_builder(target)
            runner = _make_runner(target, rpc, threads if rpc is None else None)
            need = [(t, r) for t, r in pending if r.default_ms is None]
            if need:
                progress.phase(f"measuring the default schedules of {len(need)} kernels")
                scheduled = [_default_schedule(t.dispatched[0], target) for t, _ in need]
                times = _measure(builder, runner, [m for m, _ in scheduled], tt)
                summary.default_measurements = len(need)
                for (_, rep), (_, rule), ms_ in zip(need, scheduled, times):
                    rep.default_rule, rep.default_ms = rule, ms_
            _tune_pending(ms, db, db_dir, pending, summary, tt, target, builder, runner, trials=trials, budget_s=budget_s,
                          batch=batch, seed=seed, progress=progress)
        else:
            for _, rep in pending:
                rep.status = "skipped"
        summary.records_in_db = len(db)
    summary.elapsed_s = time.monotonic() - started
    return summary


def _tune_pending(ms, db, db_dir: Path, pending, summary: TuneSummary, tt, target: Target, builder, runner, *, trials,
                  budget_s, batch, seed, progress: Progress) -> None:
    from .artifact import interrupts_deferred

    _, OneTaskScheduler, ProgressCallback = _classes()
    weights = [max(rep.calls * (rep.default_ms or 1.0), 1e-6) for _, rep in pending]
    # no kernel is starved: each weighs at least a tenth of the average
    floor = 0.1 * sum(weights) / len(weights) if weights else 0.0
    weights = [max(w, floor) for w in weights]
    order = sorted(range(len(pending)), key=lambda i: -weights[i])
    shares = _allocate(trials, weights) if trials is not None else None
    # the budget is the search's: import, fusion and the default measurements before it are their
    # own stages, so a slow machine never spends a short budget before the first trial
    search_started = time.monotonic()
    deadline_all = search_started + budget_s if budget_s is not None else None
    cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=2)
    quiet = logging.getLogger("autoglm.tune.metaschedule")
    quiet.setLevel(logging.WARNING)
    done_trials = 0
    batch_s, batch_times = 5.0, []  # seconds per search round (estimate until measured)
    progress.start(float(trials) if trials is not None else float(budget_s), "trials" if trials is not None else "s")

    def model_ms() -> float | None:
        return summary.estimate_ms("best")

    for pos, idx in enumerate(order):
        task, rep = pending[idx]
        share = shares[idx] if shares is not None else MAX_TRIALS_PER_TASK_TIMED
        deadline = None
        if deadline_all is not None:
            left = deadline_all - time.monotonic()
            wleft = sum(weights[j] for j in order[pos:])
            if left <= 0:
                rep.status = "skipped"
                continue
            # keep about one batch of time for each task still to come, split the rest by weight
            after = len(order) - pos - 1
            usable = max(0.0, left - batch_s * after)
            deadline = time.monotonic() + usable * weights[idx] / wleft
        if share <= 0:
            rep.status = "skipped"
            continue
        wmod = task.dispatched[0]
        tuning_db.append_task(db_dir, {"workload": rep.workload, "event": "start", "task": rep.name,
                                       "default_rule": rep.default_rule, "default_ms": rep.default_ms, "trials": share})
        state: dict[str, Any] = {"in_flight": False}

        def on_batch(n: int, ok: list[float], rep=rep) -> None:
            nonlocal done_trials
            done_trials += n
            rep.trials += n
            if ok:
                rep.best_ms = min(ok + ([rep.best_ms] if rep.best_ms is not None else []))
            elapsed = time.monotonic() - search_started
            progress.update(float(done_trials) if trials is not None else min(elapsed, float(budget_s)),
                            task=rep.name, trials=done_trials, best_ms=rep.best_ms, model_ms=model_ms())

        if rep.default_rule is not None:
            _measure_variants(ms, db, wmod, tt, target, builder, runner, rep, share=share, deadline=deadline,
                              batch=batch, on_batch=on_batch)
            state["batches"] = state.get("batches", 0) + (1 if rep.trials else 0)
        prior = tuning_db.best_record(db, wmod, tt)
        if prior is not None:
            rep.best_ms = tuning_db.record_ms(prior)
        left = share - rep.trials
        if left <= 0 or (deadline is not None and time.monotonic() >= deadline):
            _finish_task(db, db_dir, wmod, tt, rep, summary, progress)
            continue
        ctx = ms.TuneContext(
            mod=wmod, target=tt, space_generator="post-order-apply",
            # a population in proportion to the trials: small runs stay quick, long runs search wide
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=min(512, max(64, 4 * left)), init_min_unmeasured=min(50, max(16, left))),
            task_name=rep.name, logger=quiet, rand_state=seed + idx, num_threads=2,
        ).clone()
        scheduler = OneTaskScheduler(deadline, state)
        callbacks = ms.measure_callback.MeasureCallback.create("default") + [ProgressCallback(on_batch, state)]
        task_started = time.monotonic()
        # MetaSchedule calls back into Python (this scheduler, the builder, the cost model) from C++ frames
        # that abort the process on a KeyboardInterrupt: a signal stops the search at its next batch instead
        with interrupts_deferred():
            scheduler.tune(
                tasks=[ctx], task_weights=[1.0], max_trials_global=left, max_trials_per_task=left,
                num_trials_per_iter=max(1, min(batch, left)), builder=builder, runner=runner,
                measure_callbacks=callbacks, database=db, cost_model=cost_model,
            )
        if state.get("batches"):
            batch_times.append((time.monotonic() - task_started) / state["batches"])
            batch_s = sum(batch_times) / len(batch_times)
        _finish_task(db, db_dir, wmod, tt, rep, summary, progress)
    progress.stop()


def _finish_task(db, db_dir: Path, wmod, tt, rep: TaskReport, summary: TuneSummary, progress: Progress) -> None:
    best = tuning_db.best_record(db, wmod, tt)
    rep.best_ms = tuning_db.record_ms(best) if best is not None else rep.best_ms
    rep.records = len(db.get_top_k(db.commit_workload(wmod), 1 << 30))
    summary.trials_measured += rep.trials
    tuning_db.append_task(db_dir, {"workload": rep.workload, "event": "done", "task": rep.name,
                                   "default_rule": rep.default_rule, "default_ms": rep.default_ms,
                                   "best_ms": rep.best_ms, "trials": rep.trials})
    progress.task_done(rep)


def _measure_variants(ms, db, wmod, tt, target: Target, builder, runner, rep: TaskReport, *, share: int,
                      deadline: float | None, batch: int, on_batch: Callable[[int, list[float]], None]) -> None:
    """The first stage of a task's search: the default rule's own alternatives (its tile shapes and loop
    orders, `compile/schedules/knobs.py`), measured and stored as records of the workload.

    MetaSchedule's generic design space does not hold the blocked-layout register tiles the default rules
    write, so its search alone seldom beats them; starting from the rule's neighbours does. The default
    schedule itself was measured before (`rep.default_ms`); a variant is applied by `compile` only where it
    measured faster. The variants take trials from the task's share and time from its slice, in batches,
    at least one batch."""
    from .artifact import interrupts_deferred
    from .schedules import cpu_config, schedule_variants

    with interrupts_deferred():
        variants = [v for v in schedule_variants(wmod["main"], cpu_config(target), tt, limit=VARIANTS_PER_TASK)
                    if not v.is_default]
    variants = variants[:max(0, share)]
    workload = db.commit_workload(wmod)
    for start in range(0, len(variants), batch):
        if start and deadline is not None and time.monotonic() >= deadline:
            break
        chunk = variants[start:start + batch]
        secs = _run_secs(builder, runner, [v.sch.mod for v in chunk], tt)
        ok = []
        for v, run in zip(chunk, secs):
            if run is None:
                continue
            args = ms.arg_info.ArgInfo.from_entry_func(v.sch.mod, remove_preproc=True)
            db.commit_tuning_record(ms.database.TuningRecord(v.sch.trace, workload, run, tt, args))
            ok.append(1e3 * sorted(run)[len(run) // 2])
        on_batch(len(chunk), ok)
