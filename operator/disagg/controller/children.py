"""Desired children against live ones: what to create, what to change, what is not ours.

The ownership rule (controller-runtime's "only adopt orphans"): the operator changes
an object only if it carries our controller ownerReference with the owner's uid.  A
same-named object without it is someone else's and is left untouched and reported
as a name conflict — except an orphan (no ownerReferences at all) that carries our
managed-by label and the owner's pool/deployment label, which is what a
``kubectl delete --cascade=orphan`` leaves behind; such an orphan is adopted.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from disagg.controller.drift import in_sync, with_hash
from disagg.render import names

Body = dict[str, Any]


@dataclass(frozen=True)
class Write:
    """One child to create (POST) or change (server-side apply at ``resource_version``)."""

    obj: Body
    mode: Literal["create", "apply"]
    resource_version: str | None = None

    @property
    def kind_name(self) -> tuple[str, str]:
        return self.obj["kind"], self.obj["metadata"]["name"]

    @property
    def ref(self) -> str:
        return "/".join(self.kind_name)


@dataclass(frozen=True)
class Prune:
    """A child we own that is no longer desired (deleted with its uid as precondition)."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class ChildDiff:
    writes: list[Write] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of same-named objects that are not ours (or are being deleted)."""


def controlled_by(live: Mapping[str, Any], owner_uid: str) -> bool:
    return any(
        ref.get("uid") == owner_uid and ref.get("controller")
        for ref in live.get("metadata", {}).get("ownerReferences") or []
    )


def adoptable(live: Mapping[str, Any], owner_labels: Mapping[str, str]) -> bool:
    """An orphan carrying our managed-by label and the owner's identifying labels."""
    meta = live.get("metadata", {})
    if meta.get("ownerReferences"):
        return False
    labels = meta.get("labels") or {}
    if labels.get(names.LABEL_MANAGED_BY) != names.MANAGED_BY:
        return False
    return all(labels.get(k) == v for k, v in owner_labels.items())


def diff_children(
    desired: list[Body],
    live: Mapping[tuple[str, str], Body | None],
    owner_uid: str,
    owner_labels: Mapping[str, str],
) -> ChildDiff:
    """Writes needed to make ``live`` what ``desired`` says, and the objects in the way."""
    out = ChildDiff()
    for obj in desired:
        want = with_hash(obj)
        key = (obj["kind"], obj["metadata"]["name"])
        have = live.get(key)
        if have is None:
            out.writes.append(Write(want, "create"))
        elif controlled_by(have, owner_uid) or adoptable(have, owner_labels):
            if have.get("metadata", {}).get("deletionTimestamp"):
                out.conflicts.append(key)
            elif not in_sync(want, have):
                rv = have.get("metadata", {}).get("resourceVersion")
                out.writes.append(Write(want, "apply", rv))
        else:
            out.conflicts.append(key)
    return out


def prunes(
    wanted: set[tuple[str, str]],
    candidates: Mapping[tuple[str, str], Body | None],
    api_versions: Mapping[str, str],
    namespace: str,
    owner_uid: str,
) -> list[Prune]:
    """Children of the prunable kinds that we own but no longer want."""
    out = []
    for (kind, name), have in candidates.items():
        if have is None or (kind, name) in wanted or not controlled_by(have, owner_uid):
            continue
        uid = have.get("metadata", {}).get("uid", "")
        out.append(Prune(api_versions[kind], kind, namespace, name, uid))
    return out
