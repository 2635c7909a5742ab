"""The real API server rejects invalid CRs at admission, naming the field.

The same cases run offline in tests/test_admission.py (cel-python); here they
meet the real thing: structural schema, defaulting and CEL in kube-apiserver.
"""

from __future__ import annotations

import pytest
from tests.admission_cases import INVALID, Case, disagg, pool

from testbed.cluster.kubectl import Kubectl, KubectlError

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_api_server_rejects_invalid_cr(case: Case, crds: list[str], kube: Kubectl) -> None:
    with pytest.raises(KubectlError) as err:
        kube.create(case.object())
    message = err.value.stderr
    assert case.field in message, message
    assert case.message in message, message


def test_api_server_admits_valid_objects_and_applies_defaults(
    crds: list[str], kube: Kubectl
) -> None:
    created = kube.create(pool())
    spec = created["spec"]
    assert spec["replicas"] == 1
    assert spec["engine"]["blockSize"] == 16
    assert spec["kvTransfer"]["connector"] == "NixlConnector"
    assert spec["kvTransfer"]["sideChannelPort"] == 5600
    assert spec["parallelism"] == {"tensor": 1, "pipeline": 1, "data": 1}
    dd = kube.create(disagg())
    assert dd["spec"]["gateway"]["routing"]["selective"]["minUncachedPromptTokens"] == 256
