"""The real API server refuses invalid CRs at admission, naming the field, and admits the
valid edge cases.

The same cases run offline in tests/test_admission.py (cel-python); here they meet the
real thing: structural schema, defaulting, CEL (with its cost limits: the CRDs must be
accepted first) and Kubernetes' own libraries (quantities) in kube-apiserver.  Each
invalid case must be refused with an error item whose path is the case's field, and,
where the message is one of our rules', with that message.
"""

from __future__ import annotations

import pytest
from tests.admission_cases import INVALID, VALID, Case, disagg, pool

from testbed.cluster.kubectl import Kubectl, KubectlError

pytestmark = pytest.mark.e2e


def error_items(stderr: str) -> list[tuple[str, str]]:
    """``(path, message)`` per item of kubectl's rendering of an Invalid status.

    One error reads ``... is invalid: spec.x: Invalid value: ...``; several read
    ``... is invalid: \\n* spec.x: ...\\n* spec.y: ...``.
    """
    _, _, body = stderr.strip().partition(" is invalid: ")
    items = [i.strip() for i in body.split("\n* ")] if "\n* " in body else [body.strip()]
    out = []
    for item in items:
        path, _, message = item.lstrip("* ").partition(": ")
        out.append((path, message))
    return out


def refusal(kube: Kubectl, case: Case) -> str | None:
    """None when the server refused ``case`` as it must; otherwise what went wrong."""
    try:
        kube.create(case.object())
    except KubectlError as err:
        items = error_items(err.stderr)
        if any(path == case.field and case.message in msg for path, msg in items):
            return None
        return f"refused, but not at {case.field} with {case.message!r}: {err.stderr.strip()}"
    return "admitted"


def test_api_server_refuses_every_invalid_case_at_its_field(crds: list[str], kube: Kubectl) -> None:
    failures = {case.id: refusal(kube, case) for case in INVALID}
    wrong = {k: v for k, v in failures.items() if v is not None}
    refused = [c for c in INVALID if failures[c.id] is None]
    print(
        f"\nreal API server: {len(refused)}/{len(INVALID)} invalid CRs refused at their field "
        f"({sum(c.ours for c in refused)} with our own rule's message)"
    )
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())


def test_api_server_admits_every_valid_edge_case(crds: list[str], kube: Kubectl) -> None:
    refused = {}
    for edge in VALID:
        try:
            kube.create(edge.object())
        except KubectlError as err:
            refused[edge.id] = f"{edge.why}: {err.stderr.strip()}"
        else:
            kube.delete(edge.obj["kind"], edge.obj["metadata"]["name"])
    print(f"\nreal API server: {len(VALID) - len(refused)}/{len(VALID)} valid edge cases admitted")
    assert not refused, "\n".join(f"{k}: {v}" for k, v in refused.items())


def test_api_server_admits_valid_objects_and_applies_defaults(
    crds: list[str], kube: Kubectl
) -> None:
    created = kube.create(pool())
    spec = created["spec"]
    assert "replicas" not in spec  # derived from autoscaling by the model, never defaulted to 1
    assert spec["engine"]["blockSize"] == 16
    assert spec["kvTransfer"]["connector"] == "NixlConnector"
    assert spec["kvTransfer"]["sideChannelPort"] == 5600
    assert spec["parallelism"] == {"tensor": 1, "pipeline": 1, "data": 1}
    assert spec["resources"]["sharedMemory"] == "16Gi"
    dd = kube.create(disagg())
    assert dd["spec"]["gateway"]["routing"]["selective"]["minUncachedPromptTokens"] == 256
