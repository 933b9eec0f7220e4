"""Past runs from the results database, each measurement compared with the previous comparable one.

Comparable: same model (sha256 of the source model), target, device, runtime and thread count,
both runs completed. A median (p50) worse than the previous comparable median by more than the
threshold is a regression.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import db


@dataclass
class HistoryRow:
    run_id: str
    started_utc: str
    status: str
    model: str
    target: str
    device: str
    runtime: str | None
    threads: int | None
    p50_ms: float | None
    previous_p50_ms: float | None
    change: float | None          # p50 / previous p50 - 1
    regression: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def comparable_key(run: dict[str, Any], m: dict[str, Any]) -> tuple:
    return (run["model_sha256"], run["target"], run["device"], m["runtime"], m["threads"], bool(m["emulated"]))


def history(path: Path | None, *, model: str | None = None, target: str | None = None,
            threshold: float = 0.10) -> list[HistoryRow]:
    runs = db.fetch(path, model=model, target=target)
    last: dict[tuple, float] = {}
    rows: list[HistoryRow] = []
    for run in runs:
        base = dict(run_id=run["run_id"], started_utc=run["started_utc"], status=run["status"], model=run["model_name"],
                    target=run["target"], device=run["device"])
        if not run["measurements"]:
            rows.append(HistoryRow(**base, runtime=None, threads=None, p50_ms=None, previous_p50_ms=None, change=None,
                                   regression=False, error=run["error"]))
            continue
        for m in run["measurements"]:
            key = comparable_key(run, m)
            prev = last.get(key)
            p50 = m["p50_ms"]
            change = (p50 / prev - 1) if (prev and p50 is not None and run["status"] == "completed") else None
            rows.append(HistoryRow(**base, runtime=m["runtime"], threads=m["threads"], p50_ms=p50, previous_p50_ms=prev,
                                   change=change, regression=change is not None and change > threshold,
                                   error=run["error"]))
            if run["status"] == "completed" and p50 is not None:
                last[key] = p50
    return rows
