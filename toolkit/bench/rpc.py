"""The artifact on a board (or a fleet of boards) behind a TVM RPC tracker.

Every server registered under the key gets one session; each interleaved block is split across
the sessions, which time their share in parallel with `vm.time_evaluator("invoke_stateful", ...)`
after `set_input` (the VM is never driven through `main` over RPC). Load time is measured on this
side (upload + load_module + VM creation, network included), as is the first inference
(set_input + invoke_stateful + get_outputs). The server's memory is not visible over RPC.

TVM RPC has no authentication: trackers and servers stay on 127.0.0.1; a board is reached
through an SSH tunnel (docs/bench-schema.md, "Reaching a board").
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import RPC_SAFETY, DeviceSpec, is_loopback
from .errors import BenchError, BenchUsageError, one_line
from .result import RuntimeResult


def _in_threads(calls: list, timeout: float, what: str) -> list:
    """Run each zero-argument call in a daemon thread (a hung RPC call must not keep the process alive)."""
    results: list = [None] * len(calls)
    errors: list = [None] * len(calls)

    def target(i, fn):
        try:
            results[i] = fn()
        except BaseException as exc:  # re-raised in the calling thread
            errors[i] = exc

    threads = [threading.Thread(target=target, args=(i, fn), daemon=True) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            raise BenchError(f"{what} took longer than {timeout:g} s (--timeout); this run's results were discarded")
    for e in errors:
        if e is not None:
            raise e
    return results


def _split(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class _Session:
    def __init__(self, remote, addr: str):
        self.remote, self.addr = remote, addr
        self.vm = self.dev = None


def _servers(device: DeviceSpec, tracker) -> list[str]:
    """The loopback addresses of every server the tracker has under the device's key."""
    try:
        summary = tracker.summary()
    except Exception as exc:
        raise BenchError(f"the RPC tracker at {device.host}:{device.port} did not answer: {one_line(exc)}") from None
    servers = [s for s in summary.get("server_info", []) if s.get("key", "").split(":", 1)[-1] == device.key]
    if not servers:
        keys = sorted({s.get("key", "").split(":", 1)[-1] for s in summary.get("server_info", [])})
        raise BenchError(f"no RPC server is registered under key {device.key!r} at tracker "
                         f"{device.host}:{device.port} (keys there: {', '.join(keys) or 'none'}); start one with "
                         f"`python -m tvm.exec.rpc_server --host 127.0.0.1 --tracker {device.host}:{device.port} "
                         f"--key {device.key}`")
    addrs = []
    for s in servers:
        host, port = s["addr"][0], s["addr"][1]
        if not device.allow_remote and not is_loopback(str(host)):
            raise BenchUsageError(f"RPC server {host}:{port} under key {device.key!r} is not on a loopback "
                                  f"address; {RPC_SAFETY}")
        addrs.append(f"{host}:{port}")
    return addrs


def connect(device: DeviceSpec, timeout: float, fleet: bool = True) -> list[_Session]:
    """Sessions with the servers under the device's key: one per server (`fleet`), or just one."""
    from tvm import rpc

    d = device
    try:
        tracker = rpc.connect_tracker(d.host, d.port)
    except Exception as exc:
        raise BenchError(f"cannot reach the RPC tracker at {d.host}:{d.port} ({one_line(exc, 160)}); start it with "
                         f"`python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port {d.port}`") from None
    addrs = _servers(d, tracker)
    sessions = []
    for addr in addrs if fleet else addrs[:1]:
        try:
            (remote,) = _in_threads([lambda: tracker.request(d.key, priority=1, session_timeout=0, max_retry=3)],
                                    timeout, f"waiting for a free RPC server under key {d.key!r}")
        except BenchError:
            raise
        except Exception as exc:
            raise BenchError(f"the tracker at {d.host}:{d.port} gave no session for key {d.key!r}: {one_line(exc, 200)}") from None
        sessions.append(_Session(remote, addr))
    return sessions


def remote_vm(remote, artifact: Path, manifest: dict[str, Any], threads: int):
    """Upload the artifact's library, size the server's thread pool and open a Relax VM there: (vm, device)."""
    from tvm import relax

    lib = artifact / manifest["library"]
    name = f"autoglm-{manifest['files'][manifest['library']][:16]}.so"
    remote.upload(str(lib), name)
    remote.get_function("runtime.config_threadpool")(0, threads)
    rlib = remote.load_module(name)
    dev = remote.cuda(0) if manifest["target"]["device"] == "cuda" else remote.cpu(0)
    return relax.VirtualMachine(rlib, dev), dev


class RpcBackend:
    def __init__(self, device: DeviceSpec, artifact: Path, manifest: dict[str, Any], result: RuntimeResult,
                 inputs: dict[str, np.ndarray], *, warmup: int, timeout: float):
        self.device, self.artifact, self.manifest, self.result = device, artifact, manifest, result
        self.inputs, self.warmup, self.timeout = inputs, warmup, timeout
        self.sessions: list[_Session] = []

    def _connect(self) -> None:
        self.sessions = connect(self.device, self.timeout)

    # -- the backend interface ---------------------------------------------------------------------
    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except BenchError:
            raise
        except Exception as exc:
            raise BenchError(f"the RPC session to {self.device} failed while {what} ({one_line(exc, 200)}); the server "
                             f"may have died; this run's results were discarded") from None

    def _prepare(self, s: _Session) -> tuple[float, float, list[np.ndarray]]:
        import tvm

        start = time.perf_counter()
        s.vm, s.dev = remote_vm(s.remote, self.artifact, self.manifest, self.result.threads)
        load_ms = (time.perf_counter() - start) * 1e3
        order = [spec["name"] for spec in self.manifest["inputs"]]
        start = time.perf_counter()
        s.vm.set_input("main", *[tvm.runtime.tensor(np.asarray(self.inputs[n], order="C"), s.dev) for n in order])
        s.vm.invoke_stateful("main")
        outs = s.vm.get_outputs("main")
        outs = [outs] if hasattr(outs, "numpy") else list(outs)
        arrays = [o.numpy() for o in outs]
        first_ms = (time.perf_counter() - start) * 1e3
        if self.warmup:
            s.vm.time_evaluator("invoke_stateful", s.dev, number=self.warmup, repeat=1)("main")
        return load_ms, first_ms, arrays

    def start(self, input_files: dict[str, str]) -> None:  # noqa: ARG002 - inputs are sent as tensors
        self._guard("connecting", self._connect)
        prepared = _in_threads([lambda s=s: self._guard(f"loading the artifact on {s.addr}", self._prepare, s)
                                for s in self.sessions], self.timeout, f"loading the artifact on {self.device}")
        r = self.result
        r.load_ms, r.first_inference_ms, r.outputs = prepared[0]
        r.output_names = [o["name"] for o in self.manifest["outputs"]]
        r.extra_outputs = [p[2] for p in prepared[1:]]
        r.processes = len(self.sessions)
        if len(self.sessions) > 1:
            r.notes.append(f"fleet of {len(self.sessions)} servers ({', '.join(s.addr for s in self.sessions)}): "
                           f"blocks split across them, timed in parallel")

    def _time(self, s: _Session, n: int) -> list[float]:
        res = s.vm.time_evaluator("invoke_stateful", s.dev, number=1, repeat=n)("main")
        return [t * 1e3 for t in res.results]

    def block(self, n: int) -> None:
        jobs = [(s, k) for s, k in zip(self.sessions, _split(n, len(self.sessions))) if k]
        timed = _in_threads([lambda s=s, k=k: self._guard(f"timing on {s.addr}", self._time, s, k) for s, k in jobs],
                            self.timeout, f"a block of {n} runs on {self.device}")
        for samples in timed:
            self.result.samples_ms.extend(samples)

    def finish(self) -> None:
        self.result.notes.append("peak RSS of the RPC server is not visible over RPC; load and first-inference times include the network")
        self._close()

    def abort(self) -> None:
        self._close()

    def _close(self) -> None:
        for s in self.sessions:
            s.vm = s.dev = None
        self.sessions = []
