"""The base of every API type.

The pydantic models here ARE the API: the CRD schemas in ``crds/`` are generated
from them (``disagg crds``), field docstrings become schema descriptions, and
cross-field rules are attached as CEL (``x-kubernetes-validations``) so that the
API server rejects them at admission.  The operator parses the same objects with
these models, so what admission accepts and what the operator reads cannot drift.

Field names are snake_case in Python and camelCase on the wire (Kubernetes API
conventions); unknown fields are ignored when parsing so that an older operator
can read a newer object that the API server already pruned or accepted.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, WithJsonSchema
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """A part of a spec or status: camelCase on the wire, docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
        frozen=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it is sent to the API server: camelCase, no unset/None fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``field_path`` names the offending field."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules for a model."""
    return {"x-kubernetes-validations": list(rules)}


#: A free-form object the API server keeps verbatim (an escape hatch, or an
#: upstream Kubernetes type we pass through without re-declaring it).
FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
