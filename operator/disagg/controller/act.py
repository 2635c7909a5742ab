"""Act: the only step of a reconcile that writes, in the order a plan lists.

Children first (creates and applies, then prunes), then pod annotations, then
status, then Events.  The first failed write stops the rest and comes back as an
:class:`Outcome` with the failure sorted into its class (``failures``); a
resourceVersion conflict (someone wrote the object since we read it) is not a
failure, just a reason to look again once the cache has caught up.

Status is skipped when children were just changed and the plan carries no
failure: their watch events will bring the next reconcile, which sees the new
state — so creating an object costs one status write, not one per step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from disagg.api.versions import API_VERSION
from disagg.controller.children import Write, controlled_by
from disagg.controller.conditions import Reason
from disagg.controller.failures import Failure, field_of, first_line
from disagg.controller.kube import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Invalid,
    Kube,
    KubeError,
    MissingAPI,
    NotFound,
)
from disagg.controller.plantypes import EventSpec, Observed, Plan

log = logging.getLogger(__name__)

#: Field manager of the operator's own defaults on a user's object (never ``disagg-operator``:
#: the operator's apply of children must not be confused with what it sets on your object).
DEFAULTS_MANAGER = "disagg-operator-defaults"


#: Told of every object a write answered with, and the version it was written over
#: (None: a create); the store keeps it until the watch delivers (``store.Store.remember``).
Remember = Callable[[Mapping[str, Any], "str | None"], None]


def _forget(body: Mapping[str, Any], over: str | None) -> None:
    """The ``Remember`` of a caller without a cache (tests, one-off tools)."""


@dataclass
class Outcome:
    changed: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of what really changed: children created, updated or deleted, and the
    object itself when its defaults were written."""
    failure: Failure | None = None
    conflict: bool = False
    """A precondition failed: reconcile again soon."""
    gone: bool = False
    """The object itself disappeared while we acted."""
    pod_patches_forbidden: bool = False
    """The operator may not annotate pods (the chart does not grant it by default)."""


def _role_of(o: Observed, write: Write) -> str | None:
    """For a DisaggDeployment: the role of the pool a child belongs to (None: the gateway)."""
    if o.kind != "DisaggDeployment":
        return None
    spec = write.obj.get("spec") or {}
    role = spec.get("role") if write.obj["kind"] == "InferencePool" else None
    return str(role) if role else None


def classify(exc: KubeError, o: Observed, write: Write | None) -> Failure:
    """The failure class of an API error while writing ``write`` (None: status/prune)."""
    what = f"{write.ref}: " if write else ""
    message = first_line(str(exc))
    if isinstance(exc, AlreadyExists):
        return Failure(
            Reason.NAME_CONFLICT,
            f"{what}an object of this name already exists and is not managed by this "
            f"{o.kind}; rename or delete it (it is left untouched)",
        )
    if isinstance(exc, MissingAPI):
        return Failure(Reason.MISSING_API, f"{what}{message} (is its CRD or add-on installed?)")
    if isinstance(exc, Forbidden):
        return Failure(Reason.FORBIDDEN, f"{what}the operator may not do this: {message}")
    if isinstance(exc, Invalid):
        user_field = None
        if write is not None:
            user_field = field_of(message, write.obj["kind"], _role_of(o, write))
        hint = f" (your field: {user_field})" if user_field else ""
        return Failure(Reason.APPLY_REJECTED, f"{what}rejected by the API server{hint}: {message}")
    return Failure(Reason.SERVER_ERROR, f"{what}the API server failed: {message}")


def _ours_already(kube: Kube, o: Observed, write: Write, remember: Remember) -> bool:
    """Whether the object a create found in the way is this owner's own: a create of ours
    the watch has not delivered yet (a busy API server, a slow operator).  Only that
    looks again (remembered, so the next look sees it); anything else is a name conflict."""
    meta = write.obj["metadata"]
    live = kube.get_or_none(
        write.obj["apiVersion"], write.obj["kind"], meta["namespace"], meta["name"]
    )
    if live is None or not controlled_by(live, o.uid):
        return False
    remember(live, None)
    return True


def act_children(kube: Kube, o: Observed, plan: Plan, remember: Remember = _forget) -> Outcome:
    """Writes, prunes and pod patches of ``plan``; every object written is told to
    ``remember``."""
    out = Outcome()
    if plan.defaults is not None:
        body = {**plan.defaults, "metadata": {"resourceVersion": o.resource_version}}
        try:
            patched = kube.merge_patch(
                API_VERSION, o.kind, o.namespace, o.name, body, field_manager=DEFAULTS_MANAGER
            )
            remember(patched, o.resource_version)
            out.changed.append((o.kind, o.name))
        except (Conflict, NotFound):
            out.conflict = True
            return out
        except KubeError as exc:
            out.failure = classify(exc, o, None)
            return out
    for write in plan.writes:
        try:
            if write.mode == "create":
                try:
                    remember(kube.create(write.obj), None)
                except AlreadyExists:
                    if not _ours_already(kube, o, write, remember):
                        raise
                    out.conflict = True  # our own earlier create, not yet in the cache
                    return out
                out.changed.append(write.kind_name)
            else:
                result = kube.apply(write.obj, resource_version=write.resource_version)
                remember(result, write.resource_version)
                new_rv = (result.get("metadata") or {}).get("resourceVersion")
                if new_rv != write.resource_version:
                    out.changed.append(write.kind_name)
        except Conflict:
            out.conflict = True
            return out
        except MissingAPI as exc:  # the kind is not served: a failure, not a race
            out.failure = classify(exc, o, write)
            return out
        except NotFound:
            # Applying at a resourceVersion to an object deleted meanwhile: look again.
            out.conflict = True
            return out
        except KubeError as exc:
            if terminating(exc):
                out.gone = True
            else:
                out.failure = classify(exc, o, write)
            return out
    for prune in plan.prunes:
        try:
            kube.delete(prune.api_version, prune.kind, prune.namespace, prune.name, uid=prune.uid)
            out.changed.append((prune.kind, prune.name))
        except Conflict:
            out.conflict = True
            return out
        except KubeError as exc:
            out.failure = classify(exc, o, None)
            return out
    for patch in plan.pod_patches:
        try:
            kube.merge_patch(
                "v1",
                "Pod",
                o.namespace,
                patch.name,
                {"metadata": {"annotations": dict(patch.annotations)}},
            )
        except Forbidden:
            out.pod_patches_forbidden = True
            break
        except KubeError as exc:  # best effort: a pod may have just gone
            log.debug("pod %s/%s not annotated: %s", o.namespace, patch.name, exc)
    return out


def terminating(exc: KubeError) -> bool:
    """The namespace is being deleted: nothing more can (or need) be written there."""
    return "because it is being terminated" in str(exc)


def write_status(kube: Kube, o: Observed, plan: Plan, remember: Remember = _forget) -> bool:
    """Write ``plan.status`` (if any) to exactly this incarnation; False if it could not be
    (the object or its namespace is going, the server refused: logged, never raised).

    A status that announces something (its Events go out after it) is written only to the
    version it was planned from: two reconciles that both read the old status from a cache
    not yet caught up must not both announce the same transition."""
    if plan.status is None:
        return True
    version = o.resource_version if plan.events else None
    try:
        written = kube.apply_status(
            API_VERSION,
            o.kind,
            o.namespace,
            o.name,
            plan.status,
            uid=o.uid,
            resource_version=version,
        )
        remember(written, o.resource_version)
    except (NotFound, Conflict):
        return False
    except KubeError as exc:
        if not terminating(exc):
            log.warning("%s %s/%s: status not written: %s", o.kind, o.namespace, o.name, exc)
        return False
    return True


def event_body(o: Observed, event: EventSpec, stamp: str, sequence: int) -> dict[str, object]:
    """A core/v1 Event about ``o`` (named uniquely, like kubectl's recorder does)."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{o.name}.{sequence:x}",
            "namespace": o.namespace,
        },
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": o.kind,
            "name": o.name,
            "namespace": o.namespace,
            "uid": o.uid,
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": "disagg-operator"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "reportingComponent": "disagg.dev/operator",
        "reportingInstance": "disagg-operator",
    }


def post_events(kube: Kube, o: Observed, events: list[EventSpec], stamp: str, seq: int) -> None:
    for i, event in enumerate(events):
        kube.post_event(event_body(o, event, stamp, seq + i))
