"""Conditions in the Kubernetes style, computed without I/O.

``set_condition`` keeps ``lastTransitionTime`` when a condition's status does not
change, so a status written every reconcile does not churn; reasons are
CamelCase words a user can search for, messages say what to do.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Condition = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, ok: bool | None, reason: str, message: str = "") -> Condition:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": type_, "status": status, "reason": reason, "message": message}


def merge_conditions(
    old: list[Condition], new: list[Condition], generation: int | None
) -> list[Condition]:
    """New conditions, each keeping its old transition time when its status is unchanged."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for cond in new:
        before = previous.get(cond["type"])
        stamp = (
            before.get("lastTransitionTime")
            if before and before.get("status") == cond["status"]
            else None
        )
        merged = {**cond, "lastTransitionTime": stamp or now()}
        if generation is not None:
            merged["observedGeneration"] = generation
        out.append(merged)
    return out


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    found = find(conditions, type_)
    return bool(found and found.get("status") == "True")
