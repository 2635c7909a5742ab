"""Pydantic JSON Schema -> Kubernetes structural OpenAPI v3 schema.

The API server only accepts *structural* schemas: every node has a type (or is
int-or-string / preserve-unknown), no ``$ref``, no ``anyOf`` of alternative
types.  Pydantic's output is close; this module inlines ``$ref``s, turns
``Optional[X]`` (``anyOf: [X, null]``) into plain ``X`` (optional = absent), drops
titles and ``null`` defaults, and adds ``default: {}`` to nested spec objects so
that the API server fills in their own defaults (it only defaults inside objects
that exist).  Status subtrees get no defaults: only the operator writes them.
"""

from __future__ import annotations

import copy
from typing import Any

Schema = dict[str, Any]

_DROP = {"title", "discriminator"}


def _clean_text(text: str) -> str:
    return " ".join(text.replace("``", "`").split())


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    merged = copy.deepcopy(target)
    # The field's own keys (its docstring, its default) win over the model's.
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _collapse_optional(node: Schema, defs: dict[str, Schema]) -> tuple[Schema, bool]:
    """Return the node without its ``null`` alternative, and whether it had one."""
    branches = node.get("anyOf")
    if not branches or node.get("x-kubernetes-int-or-string"):
        return node, False
    non_null = [b for b in branches if b.get("type") != "null"]
    if len(non_null) == len(branches):
        return node, False
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if len(non_null) == 1:
        inner = _resolve(non_null[0], defs)
        merged = copy.deepcopy(inner)
        merged.update(rest)
        return merged, True
    rest["anyOf"] = non_null
    return rest, True


def defaults_of(schema: Schema) -> dict[str, Any]:
    """The object the API server would build from ``{}`` by structural defaulting."""
    out: dict[str, Any] = {}
    for name, sub in schema.get("properties", {}).items():
        if "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
    return out


def structural(node: Schema, defs: dict[str, Schema], *, in_status: bool = False) -> Schema:
    """Convert one pydantic schema node (recursively) to a structural schema node."""
    node = _resolve(node, defs)
    node, _ = _collapse_optional(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and (value is None or in_status):
            continue
        if key == "description":
            out[key] = _clean_text(value)
        elif key == "properties":
            required = set(node.get("required", ()))
            props: Schema = {}
            for name, sub in value.items():
                sub_resolved = _resolve(sub, defs)
                sub_clean, was_optional = _collapse_optional(sub_resolved, defs)
                converted = structural(sub_clean, defs, in_status=in_status)
                is_model = converted.get("type") == "object" and "properties" in converted
                if (
                    is_model
                    and not in_status
                    and not was_optional
                    and name not in required
                    and "default" not in converted
                ):
                    # Filled in, not {}: the API server checks a default against the CEL
                    # rules without defaulting inside it first.
                    converted["default"] = defaults_of(converted)
                props[name] = converted
            out[key] = props
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = structural(value, defs, in_status=in_status)
        elif key == "anyOf":
            out[key] = [structural(b, defs, in_status=in_status) for b in value]
        elif key == "$defs":
            continue
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema's numeric form -> OpenAPI v3.0's boolean flag on minimum/maximum.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = copy.deepcopy(value)
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def crd_schema(json_schema: Schema) -> Schema:
    """The ``openAPIV3Schema`` of a kind from its model's pydantic JSON schema."""
    defs = json_schema.get("$defs", {})
    props = json_schema["properties"]
    root: Schema = {
        "type": "object",
        "description": _clean_text(json_schema.get("description", "")),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            # Declared (only ``name`` may be) so that a rule's fieldPath can name it.
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": structural(props["spec"], defs),
            "status": structural(props["status"], defs, in_status=True),
        },
    }
    if "x-kubernetes-validations" in json_schema:
        root["x-kubernetes-validations"] = json_schema["x-kubernetes-validations"]
    root["properties"]["status"].pop("default", None)
    return root
