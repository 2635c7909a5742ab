"""Admission of the generated CRDs, offline: schema + CEL via cel-python.

The e2e tier sends the same cases to a real API server (e2e/test_admission.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.admission import Rejection, admit
from tests.admission_cases import INVALID, Case

EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml"))


def test_there_are_at_least_fifteen_invalid_cases() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_invalid_cr_is_rejected_naming_the_field(case: Case) -> None:
    rejections = admit(case.object())
    assert rejections, f"{case.id} was admitted"
    wanted = case.field.removeprefix("spec.").removeprefix("metadata.")
    joined = "; ".join(f"{r.path}: {r.message}" for r in rejections)

    # jsonschema words bounds/enums differently from the API server; the field path and, for
    # CEL rules, our own message are what must match here.
    def names_field(r: Rejection) -> bool:
        path = r.path.replace("[0]", ".0")
        if wanted.replace("[0]", ".0") in path or case.field in r.message:
            return True
        # jsonschema reports a missing property on its parent: ".spec: 'model' is required"
        parent, _, leaf = wanted.rpartition(".")
        return f"'{leaf}' is a required property" in r.message and path.endswith(parent)

    assert any(names_field(r) for r in rejections), joined
    if not any(w in case.message for w in ("Unsupported", "greater", "Required", "least", "match")):
        assert any(case.message in r.message for r in rejections), joined


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_admitted(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert admit(doc) == [], path


def test_valid_base_objects_are_admitted() -> None:
    from tests.admission_cases import disagg, pool

    assert admit(pool()) == []
    assert admit(disagg()) == []
