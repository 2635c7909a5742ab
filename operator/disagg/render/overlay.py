"""The ``podTemplate`` escape hatch: a user's PodTemplateSpec merged over ours.

A small, predictable subset of strategic merge: maps merge recursively, the
user's scalars win, and the lists Kubernetes merges by key (``containers``,
``initContainers``, ``volumes``, ``env``, ``volumeMounts``, ``ports``) merge by
``name`` (``containerPort`` for ports); any other list is replaced whole.
"""

from __future__ import annotations

import copy
from typing import Any

_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "tolerations": "key",
}


def _merge_list(base: list[Any], over: list[Any], key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in base]
    index = {item.get(key): i for i, item in enumerate(merged) if isinstance(item, dict)}
    for item in over:
        if isinstance(item, dict) and item.get(key) in index:
            i = index[item[key]]
            merged[i] = merge(merged[i], item)
        else:
            merged.append(copy.deepcopy(item))
    return merged


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged onto a copy of ``base``."""
    out = copy.deepcopy(base)
    for name, value in over.items():
        current = out.get(name)
        if isinstance(current, dict) and isinstance(value, dict):
            out[name] = merge(current, value)
        elif isinstance(current, list) and isinstance(value, list) and name in _MERGE_KEYS:
            out[name] = _merge_list(current, value, _MERGE_KEYS[name])
        else:
            out[name] = copy.deepcopy(value)
    return out
