"""Never take what the operator did not create (issue 13, class 1), on the real cluster.

A same-named object of someone else's — an InferencePool, a Deployment, a Service, a
ConfigMap where a DisaggDeployment's children would go — must survive the
DisaggDeployment's creation and deletion untouched (same resourceVersion, no
ownerReference added, not garbage-collected), and the DisaggDeployment must say so
(Degraded=True, reason NameConflict, one Warning Event naming the object).
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e.operator_process import OperatorProcess
from e2e.test_operator import DD, IP, a_disagg, a_pool
from testbed.cluster.kubectl import Kubectl, condition

pytestmark = pytest.mark.e2e


def _foreign(kind: str, name: str) -> dict[str, Any]:
    labels = {"team": "someone-else"}
    if kind == "InferencePool":
        pool = a_pool(name, replicas=0)
        pool["metadata"]["labels"] = labels
        return pool
    meta = {"name": name, "labels": labels}
    if kind == "ConfigMap":
        return {"apiVersion": "v1", "kind": kind, "metadata": meta, "data": {"mine": "yes"}}
    if kind == "Service":
        spec = {"selector": {"app": "theirs"}, "ports": [{"port": 80}]}
        return {"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/theirs:1"}]},
            },
        },
    }


KINDS = {
    "InferencePool": ("llm-prefill", IP),
    "Deployment": ("llm-gateway", "deployment"),
    "Service": ("llm-gateway", "service"),
    "ConfigMap": ("llm-gateway", "configmap"),
}


def _settled(kube: Kubectl, kubectl_kind: str, name: str) -> dict[str, Any]:
    """The object once nobody has written it for 2 s (a standalone pool gets its own status)."""

    def read() -> dict[str, Any] | None:
        obj = kube.get(kubectl_kind, name)
        if obj is None:
            return None
        if kubectl_kind == IP and not (obj.get("status") or {}).get("observedGeneration"):
            return None
        return obj

    return kube.wait_unchanged(
        read,
        2,
        60,
        f"{kubectl_kind}/{name} settled",
        key=lambda o: o["metadata"]["resourceVersion"],
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_foreign_object_survives_the_deployment_untouched(
    operator: OperatorProcess, kube: Kubectl, kind: str
) -> None:
    name, kubectl_kind = KINDS[kind]
    kube.create(_foreign(kind, name))
    before = _settled(kube, kubectl_kind, name)

    kube.apply(a_disagg("llm"))
    dd = kube.wait_for_object(
        DD,
        "llm",
        lambda o: (condition(o, "Degraded") or {}).get("reason") == "NameConflict",
        90,
    )
    assert f"{kind}/{name}" in condition(dd, "Degraded")["message"]  # type: ignore[index]
    assert (condition(dd, "Ready") or {}).get("status") == "False"
    warnings = [
        e
        for e in kube.events("llm")
        if e.get("type") == "Warning" and e.get("reason") == "NameConflict"
    ]
    assert len(warnings) == 1, warnings

    kube.delete(DD, "llm", wait=True)
    # Let the garbage collector do whatever it would do, then look again.
    kube.wait_for(
        lambda: not kube.items("deployments", "disagg.dev/deployment=llm"), 60, "GC of our children"
    )
    after = kube.get(kubectl_kind, name)
    assert after is not None, f"someone else's {kind} was deleted"
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not after["metadata"].get("ownerReferences")
    assert after["metadata"]["labels"] == before["metadata"]["labels"]


def test_the_deployment_proceeds_once_the_foreign_object_is_gone(
    operator: OperatorProcess, kube: Kubectl
) -> None:
    kube.create(_foreign("ConfigMap", "llm-gateway"))
    kube.apply(a_disagg("llm"))
    kube.wait_for_object(
        DD, "llm", lambda o: (condition(o, "Degraded") or {}).get("reason") == "NameConflict", 90
    )
    kube.delete("configmap", "llm-gateway", wait=True)
    ours = kube.wait_for_object(
        "configmap", "llm-gateway", lambda o: bool(o["metadata"].get("ownerReferences")), 60
    )
    assert ours["metadata"]["ownerReferences"][0]["kind"] == "DisaggDeployment"
    kube.wait_for(lambda: kube.get("deployment", "llm-prefill"), 60, "the pools' workers")
