"""Every failure is in status, with one Event per distinct failure (issue 13, class 3).

One object per failure class, all at once, on the real cluster; then three minutes of
watching (with an operator restart in the middle, which forgets every backoff): each
object keeps its Degraded condition and has exactly one Warning Event for its failure,
and the operator logs no ERROR line.

Classes: a child the API server rejects on create (422) and on update (the 500 "failed
to create typed patch object"), a server error (a failing admission webhook: 500), a
missing API (KEDA's ScaledObject without KEDA), a name taken by someone else, an
unsafe pod template, and worker pods forbidden by Pod Security.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.operator_process import OperatorProcess
from e2e.test_operator import DD, IP, a_disagg, a_pool
from testbed.cluster.kubectl import Kubectl, condition

pytestmark = pytest.mark.e2e

WATCH_SECONDS = 180
POLL_SECONDS = 5
"""Between two looks at the Events during the window."""


def _degraded(kube: Kubectl, kind: str, name: str) -> dict[str, Any]:
    obj = kube.get(kind, name) or {}
    found = condition(obj, "Degraded") or {}
    return found if found.get("status") == "True" else {}


@pytest.fixture
def failing_webhook(cluster_kube: Kubectl, namespace: str) -> Iterator[None]:
    """Admission of Deployments labelled for this test calls a webhook that is not there:
    the API server answers 500 (Internal error: failed calling webhook)."""
    name = f"e2e-fail-{namespace}"
    cluster_kube.apply(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "refuse.e2e.disagg.dev",
                    "clientConfig": {"url": "https://127.0.0.1:1/refuse"},
                    "rules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["deployments"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "objectSelector": {"matchLabels": {"disagg.dev/deployment": "server-error"}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 2,
                }
            ],
        }
    )
    try:
        yield
    finally:
        cluster_kube.delete("validatingwebhookconfiguration", name)


@pytest.fixture
def restricted_namespace(cluster_kube: Kubectl, namespace: str) -> Iterator[str]:
    name = f"{namespace[:50]}-psa"
    cluster_kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        }
    )
    try:
        yield name
    finally:
        cluster_kube.delete("namespace", name)


def test_each_failure_class_shows_in_status_with_exactly_one_event(
    operator: OperatorProcess,
    kube: Kubectl,
    failing_webhook: None,
    restricted_namespace: str,
) -> None:
    log_start = operator.log_path.stat().st_size if operator.log_path.exists() else 0
    bad_toleration = {"key": "a", "operator": "Bogus"}
    cases: dict[tuple[str, str], str] = {}  # (kind, name) -> expected reason

    kube.apply(a_disagg("rejected", prefill={"placement": {"tolerations": [bad_toleration]}}))
    cases[(IP, "rejected-prefill")] = "ApplyRejected"
    cases[(DD, "rejected")] = "ApplyRejected"

    kube.apply(a_disagg("server-error"))
    cases[(IP, "server-error-prefill")] = "ServerError"

    kube.apply(a_pool("no-keda", autoscaling={"enabled": True, "engine": "keda"}))
    cases[(IP, "no-keda")] = "MissingAPI"

    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "taken-gateway"}})
    kube.apply(a_disagg("taken"))
    cases[(DD, "taken")] = "NameConflict"

    kube.apply(a_pool("unsafe", podTemplate={"spec": {"hostPID": True}}))
    cases[(IP, "unsafe")] = "UnsafePodTemplate"

    restricted = kube.in_namespace(restricted_namespace)
    restricted.apply(a_pool("forbidden"))

    # Update path: a valid pool first, then a wrong type where the Deployment needs a number.
    kube.apply(a_pool("typed"))
    kube.wait_for(lambda: kube.get("deployment", "typed"), 60, "Deployment typed")
    typed_toleration = {"key": "a", "operator": "Exists", "tolerationSeconds": "soon"}
    kube.apply(a_pool("typed", placement={"tolerations": [typed_toleration]}))
    cases[(IP, "typed")] = "ApplyRejected"

    def shown() -> bool:
        missing = [k for k, r in cases.items() if _degraded(kube, *k).get("reason") != r]
        forbidden_ok = _degraded(restricted, IP, "forbidden").get("reason") == "PodsForbidden"
        return not missing and forbidden_ok

    kube.wait_for(shown, 120, "every failure in status", interval=2)
    for (kind, name), reason in sorted(cases.items()):
        print(f"{kind}/{name}: {reason}: {_degraded(kube, kind, name)['message'][:160]}")
    # The server's complaint is mapped to the user's field.
    assert "spec.placement.tolerations" in _degraded(kube, IP, "rejected-prefill")["message"]
    assert _degraded(kube, DD, "rejected")["message"].startswith("prefill pool:")

    def warnings(k: Kubectl) -> Counter[tuple[str, str]]:
        return Counter(
            (e["involvedObject"]["name"], e["reason"])
            for e in k.items("events")
            if e.get("type") == "Warning"
            and e.get("source", {}).get("component") == "disagg-operator"
        )

    deadline = time.monotonic() + WATCH_SECONDS
    restarted = False
    while time.monotonic() < deadline:
        counts = warnings(kube) + warnings(restricted)
        repeated = {k: n for k, n in counts.items() if n > 1}
        assert not repeated, f"Events repeated: {repeated}"
        if not restarted and time.monotonic() > deadline - WATCH_SECONDS / 2 and operator.proc:
            operator.restart()  # forgets every backoff; status is the memory
            restarted = True
        time.sleep(POLL_SECONDS)  # the window is the point here: nothing to wait for
    counts = warnings(kube) + warnings(restricted)
    for (_kind, name), reason in cases.items():
        assert counts[(name, reason)] == 1, (name, reason, counts)
    assert counts[("forbidden", "PodsForbidden")] == 1, counts
    for key, reason in cases.items():
        assert _degraded(kube, *key).get("reason") == reason, key

    log = operator.log_path.read_text(errors="replace")[log_start:] if operator.proc else ""
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert not errors, errors[:5]
    warnings_logged = [line for line in log.splitlines() if " WARNING " in line]
    print(
        f"{len(warnings_logged)} WARNING lines in {WATCH_SECONDS} s for {len(cases) + 1} failures"
    )
    assert len(warnings_logged) < 20 * (len(cases) + 1), "a hot loop of warnings"
