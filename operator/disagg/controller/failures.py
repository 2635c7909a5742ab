"""Failure classes: what went wrong, which field of the user's spec it concerns, when to retry.

Every way a reconcile can fail ends in exactly one class — a ``Degraded`` reason, a
Warning Event reason and a retry rule.  Permanent rejections (the server says the
object is invalid, a name is taken, the pod template is unsafe) are not retried
until the spec changes (only on a slow backoff, in case an admin fixed the
cluster); server errors and missing APIs back off exponentially.  Messages carry
the first line of the server's message and, where the path it names maps to a
field of the user's object, that field.  Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from disagg.controller.conditions import Reason

#: Backoff (seconds) of permanent failures: they wait for a spec change, but a slow
#: retry catches what a cluster admin fixed (a webhook, a quota, RBAC).
PERMANENT_BACKOFF = (300.0, 1800.0)
#: Backoff of transient ones (server errors, a missing API that may be installed).
TRANSIENT_BACKOFF = (2.0, 300.0)

PERMANENT = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.APPLY_REJECTED,
        Reason.NAME_CONFLICT,
        Reason.UNSAFE_POD_TEMPLATE,
        Reason.FORBIDDEN,
    }
)


@dataclass(frozen=True)
class Failure:
    """A failed reconcile, as status and Events show it."""

    reason: str
    message: str

    @property
    def permanent(self) -> bool:
        return self.reason in PERMANENT

    def retry_after(self, attempts: int) -> float:
        base, cap = PERMANENT_BACKOFF if self.permanent else TRANSIENT_BACKOFF
        return float(min(cap, base * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class FailureMemory:
    """The last failure of a key, kept by the controller between reconciles (not in etcd)."""

    generation: int | None
    failure: Failure
    attempts: int
    retry_at: float
    """Monotonic time before which a permanent failure is not retried (same generation)."""


#: Where a field of a rendered child comes from in the user's InferencePool spec, by the
#: child field path's prefix (first match wins).
_POOL_FIELDS: tuple[tuple[str, str], ...] = (
    ("spec.template.spec.containers[0].resources", "spec.resources"),
    ("spec.template.spec.containers[0].env", "spec.engine.env"),
    ("spec.template.spec.containers[0].args", "spec.engine.extraArgs"),
    ("spec.template.spec.containers[0].image", "spec.engine.image"),
    ("spec.template.spec.tolerations", "spec.placement.tolerations"),
    ("spec.template.spec.affinity", "spec.placement.affinity"),
    ("spec.template.spec.nodeSelector", "spec.placement.nodeSelector"),
    ("spec.template.spec.topologySpreadConstraints", "spec.placement.topologySpreadConstraints"),
    ("spec.template.spec.priorityClassName", "spec.placement.priorityClassName"),
    ("spec.template.spec.volumes", "spec.model.volume"),
    ("spec.template", "spec.podTemplate"),
    ("spec.behavior", "spec.autoscaling.behavior"),
    ("spec.metrics", "spec.autoscaling.metrics"),
    ("spec.advanced", "spec.autoscaling.behavior"),
    ("spec.triggers", "spec.autoscaling.metrics"),
)
#: Pool spec fields a DisaggDeployment shares between both pools (the rest are per side).
_SHARED = ("spec.model", "spec.engine", "spec.kvTransfer", "spec.rdma")

_PATH = re.compile(r"((?:spec|metadata)(?:\.[A-Za-z0-9_]+|\[[^\]]*\])+)")


def pool_field(child_path: str) -> str | None:
    """The InferencePool spec field a rendered child's field path comes from."""
    for prefix, field in _POOL_FIELDS:
        if child_path.startswith(prefix):
            return field
    return None


def disagg_field(pool_path: str, role: str) -> str:
    """The DisaggDeployment field a child pool's spec field comes from."""
    if pool_path.startswith(_SHARED):
        return pool_path
    return pool_path.replace("spec.", f"spec.{role}.", 1)


def field_of(message: str, child_kind: str, role: str | None) -> str | None:
    """The user's field named by a server message about a child, where it can be mapped.

    ``role`` is set when the user's object is a DisaggDeployment and the child belongs
    to its ``role`` pool (a child pool itself, or — for gateway objects — None)."""
    match = _PATH.search(message)
    if not match:
        return None
    path = match.group(1)
    if child_kind == "InferencePool":
        return disagg_field(path, role) if role else path
    mapped = pool_field(path)
    if mapped is None:
        return None
    return disagg_field(mapped, role) if role else mapped


def first_line(message: str, limit: int = 400) -> str:
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
