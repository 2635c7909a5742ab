"""Results written as they are measured, under a time budget.

A device call is killed at its time limit, and what it wrote under ``$OUT`` still comes back --
so every measurement is written to its JSON file the moment it exists (atomically: a file is
replaced, never half-written), and every phase has its own time budget inside the call's.  A phase
that would start with too little time left is skipped and says so in the results, instead of
being cut off half-way.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Results:
    """One JSON document under ``$OUT``, rewritten after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def put(self, key: str, value: Any) -> Any:
        self.data[key] = value
        self.flush()
        return value

    def append(self, key: str, value: Any) -> None:
        self.data.setdefault(key, []).append(value)
        self.flush()

    def flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(self.path.suffix + ".partial")
        partial.write_text(json.dumps(self.data, indent=1, sort_keys=False, default=str))
        os.replace(partial, self.path)


class Budget:
    """Seconds left in the call, and per-phase budgets inside it."""

    def __init__(self, total_s: float, results: Results) -> None:
        self.start = time.monotonic()
        self.total_s = total_s
        self.results = results

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def run(
        self, name: str, need_s: float, work: Callable[[Phase], Any], limit_s: float | None = None
    ) -> Any:
        """Run ``work(phase)`` if at least ``need_s`` are left; it may use ``limit_s`` (or all
        that is left).  The outcome (``ok``, ``skipped``, or the error) and the timing are
        recorded under ``phases``; an exception is recorded and does not end the call.  Returns
        what ``work`` returned, or None."""
        record: dict[str, Any] = {"name": name, "start_s": round(self.elapsed(), 1)}
        result = None
        if self.left() < need_s:
            record["outcome"] = f"skipped: {self.left():.0f} s left, needs {need_s:.0f}"
        else:
            allowed = min(self.left(), limit_s) if limit_s else self.left()
            try:
                result = work(Phase(allowed))
                record["outcome"] = "ok"
            except Exception as exc:  # recorded, the call goes on
                record["outcome"] = f"error: {type(exc).__name__}: {exc}"
                record["traceback"] = traceback.format_exc()[-3000:]
        record["seconds"] = round(self.elapsed() - record["start_s"], 1)
        self.results.append("phases", record)
        print(f"phase {name}: {record['outcome']} ({record['seconds']} s)", flush=True)
        return result


class Phase:
    """The time one phase may take."""

    def __init__(self, allowed_s: float) -> None:
        self.deadline = time.monotonic() + allowed_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self, reserve_s: float = 0.0) -> bool:
        return self.left() <= reserve_s
