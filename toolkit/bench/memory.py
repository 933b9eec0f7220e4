"""Resident memory of a process as Linux reports it (/proc/PID/status)."""

from __future__ import annotations


def proc_status_bytes(field: str, pid: int | str = "self") -> int | None:
    """VmHWM (peak resident set) or VmRSS of a process, in bytes; None where /proc lacks it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    return proc_status_bytes("VmHWM", pid)
