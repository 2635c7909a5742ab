"""Is a live child what we would render?  The test that makes an unchanged world cost no writes.

A child is *in sync* when (1) it carries the hash of the rendering we would apply now
(``disagg.dev/applied-hash``, written with every apply: it changes when we stop
setting a field, which a comparison of values cannot see), and (2) every field we
render has the same value on the live object (catching someone else's edit of a
field we own, e.g. ``kubectl edit`` of a Deployment's image).  Fields the server
or other controllers add (defaults, status, other managers' labels) are ignored.

Values are compared the way the API server stores them: ``1`` and ``"1"`` are the
same, and so are quantities that differ only in spelling (``0.5`` and ``500m``,
``1Gi`` and ``1024Mi``).
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

APPLIED_HASH = "disagg.dev/applied-hash"

_SUFFIX = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(
    r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)


def quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity (or a number) as a Decimal; None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    if not match:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2) or ""]
    except InvalidOperation:
        return None


def same_value(desired: Any, live: Any) -> bool:
    if desired == live:
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return False
    if isinstance(desired, int | float | str) and isinstance(live, int | float | str):
        if str(desired) == str(live):
            return True
        a, b = quantity(desired), quantity(live)
        return a is not None and a == b
    return False


def covers(live: Any, desired: Any) -> bool:
    """Every field of ``desired`` is present in ``live`` with the same value."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(key in live and covers(live[key], value) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(covers(lv, dv) for lv, dv in zip(live, desired, strict=True))
    return same_value(desired, live)


def rendering_hash(obj: dict[str, Any]) -> str:
    """A stable hash of what we apply (the hash annotation itself excluded)."""
    meta = dict(obj.get("metadata", {}))
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != APPLIED_HASH}
    meta["annotations"] = annotations
    body = json.dumps({**obj, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:20]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with its rendering hash annotation (a new dict; ``obj`` is not changed)."""
    meta = dict(obj["metadata"])
    meta["annotations"] = {**meta.get("annotations", {}), APPLIED_HASH: rendering_hash(obj)}
    return {**obj, "metadata": meta}


def in_sync(desired: dict[str, Any], live: dict[str, Any]) -> bool:
    """``desired`` (as returned by :func:`with_hash`) needs no apply onto ``live``."""
    want = desired["metadata"].get("annotations", {}).get(APPLIED_HASH)
    have = (live.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH)
    if want is None or want != have:
        return False
    return covers(live, {k: v for k, v in desired.items() if k not in ("apiVersion",)})
