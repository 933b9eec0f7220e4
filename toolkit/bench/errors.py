"""Errors of the benchmark harness: each prints as one line (`autoglm` adds `error:`)."""

from __future__ import annotations

from compile import AutoglmError, UsageError


def one_line(message: str, limit: int = 400) -> str:
    """Collapse a message (a TVM traceback, a runner's stderr tail) into one readable line."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    text = " | ".join(lines) if len(lines) <= 3 else " | ".join([lines[0], "...", lines[-1]])
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BenchError(AutoglmError):
    """A benchmark run failed (a runtime crashed, a board went away, a timeout). Exit code 1."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class BenchUsageError(UsageError):
    """A bad bench/history flag or argument. Exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))
