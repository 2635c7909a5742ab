"""An offline stand-in for the API server's admission of our CRs.

It applies the CRD schema's defaults the way the API server does (structural
defaulting), validates with JSON Schema (types, enums, bounds, patterns), then
evaluates every ``x-kubernetes-validations`` CEL rule with cel-python (plus
Kubernetes' quantity library, tests/cel_quantity.py).  It lets
the fast tier check the generated CRDs without a cluster; the e2e tier sends the
same cases to a real API server, which is the proof.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import celpy
import jsonschema

from disagg.api.crdgen import disaggdeployment_crd, inferencepool_crd
from tests.cel_quantity import FUNCTIONS

Schema = dict[str, Any]


@dataclass(frozen=True)
class Rejection:
    path: str
    message: str


@functools.cache
def _crd(kind: str) -> dict[str, Any]:
    return inferencepool_crd() if kind == "InferencePool" else disaggdeployment_crd()


def crd_schema_for(kind: str) -> Schema:
    crd = copy.deepcopy(_crd(kind))
    schema: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def apply_defaults(schema: Schema, obj: Any) -> Any:
    """Structural defaulting: fill absent properties that have a default, recursively."""
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(sub, obj[name])
    elif isinstance(obj, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in obj]
    return obj


def numbers_as_doubles(schema: Schema, obj: Any) -> Any:
    """CEL sees a ``type: number`` field as a double even when the JSON holds ``1``; so does
    the API server, which converts it before evaluating rules."""
    if schema.get("type") == "number" and isinstance(obj, int) and not isinstance(obj, bool):
        return float(obj)
    if isinstance(obj, dict):
        props = schema.get("properties", {})
        return {k: numbers_as_doubles(props.get(k, {}), v) for k, v in obj.items()}
    if isinstance(obj, list) and "items" in schema:
        return [numbers_as_doubles(schema["items"], item) for item in obj]
    return obj


_cel_env = celpy.Environment()


@functools.cache
def _program(rule: str) -> celpy.Runner:
    return _cel_env.program(_cel_env.compile(rule), functions=FUNCTIONS)


def _cel_failures(schema: Schema, obj: Any, path: str) -> list[Rejection]:
    out: list[Rejection] = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            result = _program(rule["rule"]).evaluate({"self": celpy.json_to_cel(obj)})
        except celpy.CELEvalError as exc:  # the API server reports an evaluation error too
            result = exc
        if isinstance(result, celpy.CELEvalError) or not bool(result):
            out.append(Rejection(path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                out += _cel_failures(sub, obj[name], f"{path}.{name}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out += _cel_failures(schema["items"], item, f"{path}[{i}]")
    return out


def admit(obj: dict[str, Any]) -> list[Rejection]:
    """Every reason the API server would reject ``obj``; empty when it would admit it."""
    schema = crd_schema_for(obj["kind"])
    obj = apply_defaults(schema, copy.deepcopy(obj))
    validator = jsonschema.Draft4Validator(schema)  # OpenAPI v3.0 bounds are draft-4 style
    errors = [
        Rejection("." + ".".join(str(p) for p in e.absolute_path), e.message)
        for e in validator.iter_errors(obj)
    ]
    if errors:  # the API server runs CEL only on schema-valid objects
        return errors
    return _cel_failures(schema, numbers_as_doubles(schema, obj), "")
