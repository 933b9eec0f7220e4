"""Stage timing for long compiles: one line when a stage ends, and a heartbeat while it runs.

A compile of a large model can sit in LLVM's code generation for minutes; a user must see which stage
the time goes to, and that nothing hangs silently.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator

Reporter = Callable[[str], None]

HEARTBEAT_S = 30.0


class Stages:
    """Times named stages; reports each stage's end (and, every `heartbeat_s`, that it is still running)."""

    def __init__(self, report: Reporter | None = None, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.report = report
        self.heartbeat_s = heartbeat_s
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        done = threading.Event()
        beat = None
        if self.report is not None and self.heartbeat_s > 0:
            def heartbeat() -> None:
                while not done.wait(self.heartbeat_s):
                    self.report(f"  {name}: still running after {time.perf_counter() - start:.0f} s")

            beat = threading.Thread(target=heartbeat, name=f"autoglm-heartbeat-{name}", daemon=True)
            beat.start()
        try:
            yield
        finally:
            done.set()
            if beat is not None:
                beat.join()
            elapsed = time.perf_counter() - start
            self.times[name] = self.times.get(name, 0.0) + elapsed
        if self.report is not None:
            self.report(f"  {name}: {elapsed:.1f} s")

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.times.items()}
