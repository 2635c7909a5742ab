"""The metadata every rendered child carries: name, namespace, labels and its owner.

Every child the operator applies is owned by the object it was rendered from through a
*controller* ownerReference, so deleting a DisaggDeployment or an InferencePool garbage-collects
what it created and the controller's watches map a child back to its owner.  The renderers
build metadata only here, so no child can be rendered without the owner its siblings have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    """A controller ownerReference: deleting the owner garbage-collects the child."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    name: str, namespace: str, labels: Mapping[str, str], owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``metadata`` of a child: a copy of ``labels``, and ``owner`` when there is one."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner:
        meta["ownerReferences"] = [owner]
    return meta
