"""No confused deputy (issue 13, class 2): a tenant who may only create our custom resources
cannot get a pod they could not create themselves, through any field of our API.

The tenant is a real ServiceAccount with a Role on disaggdeployments and inferencepools
only; every request below is made as that user (kubectl impersonation: the API server
authorizes it as the tenant).  Each attempt must be refused — by admission or by the
operator (Degraded=True, reason UnsafePodTemplate, naming the field) — and no Deployment
or pod carrying the dangerous setting may ever appear.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import Cluster
from e2e.operator_process import OperatorProcess
from e2e.test_operator import DD, IP, a_disagg, a_pool
from testbed.cluster.kubectl import Kubectl, KubectlError, condition

pytestmark = pytest.mark.e2e

TENANT = "tenant"
REPO = Path(__file__).resolve().parent.parent


def _vllm(**fields: Any) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "vllm", **fields}]}}


#: name -> (what the tenant sets on the DisaggDeployment, the field the refusal must name)
ATTEMPTS: dict[str, tuple[dict[str, Any], str]] = {
    "privileged": (
        {"prefill": {"podTemplate": _vllm(securityContext={"privileged": True})}},
        "securityContext.privileged",
    ),
    "escalation": (
        {"decode": {"podTemplate": _vllm(securityContext={"allowPrivilegeEscalation": True})}},
        "allowPrivilegeEscalation",
    ),
    "sys-admin": (
        {
            "prefill": {
                "podTemplate": _vllm(securityContext={"capabilities": {"add": ["SYS_ADMIN"]}})
            }
        },
        "capabilities.add",
    ),
    "host-pid": ({"prefill": {"podTemplate": {"spec": {"hostPID": True}}}}, "hostPID"),
    "host-network": ({"decode": {"podTemplate": {"spec": {"hostNetwork": True}}}}, "hostNetwork"),
    "host-ipc": ({"decode": {"podTemplate": {"spec": {"hostIPC": True}}}}, "hostIPC"),
    "host-path": (
        {
            "prefill": {
                "podTemplate": {
                    "spec": {
                        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                        "containers": [
                            {
                                "name": "vllm",
                                "volumeMounts": [{"name": "root", "mountPath": "/host"}],
                            }
                        ],
                    }
                }
            }
        },
        "hostPath",
    ),
    "host-port": (
        {"prefill": {"podTemplate": _vllm(ports=[{"containerPort": 9999, "hostPort": 9999}])}},
        "hostPort",
    ),
    "node-name": ({"prefill": {"podTemplate": {"spec": {"nodeName": "disagg-node"}}}}, "nodeName"),
    "service-account": (
        {"prefill": {"podTemplate": {"spec": {"serviceAccountName": "powerful"}}}},
        "serviceAccountName",
    ),
    "api-token": (
        {"decode": {"podTemplate": {"spec": {"automountServiceAccountToken": True}}}},
        "automountServiceAccountToken",
    ),
    "projected-token": (
        {
            "prefill": {
                "podTemplate": {
                    "spec": {
                        "volumes": [
                            {
                                "name": "tok",
                                "projected": {
                                    "sources": [
                                        {"serviceAccountToken": {"path": "t", "audience": "x"}}
                                    ]
                                },
                            }
                        ]
                    }
                }
            }
        },
        "serviceAccountToken",
    ),
    "secret-volume": (
        {
            "prefill": {
                "podTemplate": {
                    "spec": {"volumes": [{"name": "s", "secret": {"secretName": "db-password"}}]}
                }
            }
        },
        "Secret 'db-password'",
    ),
    "secret-env": (
        {
            "engine": {
                "env": [
                    {
                        "name": "PW",
                        "valueFrom": {"secretKeyRef": {"name": "db-password", "key": "pw"}},
                    }
                ]
            }
        },
        "Secret 'db-password'",
    ),
    "secret-envfrom": (
        {"decode": {"podTemplate": _vllm(envFrom=[{"secretRef": {"name": "db-password"}}])}},
        "Secret 'db-password'",
    ),
    "init-container": (
        {
            "prefill": {
                "podTemplate": {
                    "spec": {
                        "initContainers": [
                            {
                                "name": "x",
                                "image": "busybox",
                                "securityContext": {"privileged": True},
                            }
                        ]
                    }
                }
            }
        },
        "initContainers",
    ),
    "gateway-image": (
        {
            "gateway": {
                "image": "tenant/exfiltrate:1",
                "apiKeySecretRef": {"name": "db-password", "key": "pw"},
            }
        },
        "spec.gateway.image",
    ),
}


@pytest.fixture
def tenant(kube: Kubectl, namespace: str) -> str:
    """A ServiceAccount that may do anything with our custom resources and nothing else."""
    kube.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": TENANT}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "powerful"}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "db-password"},
                "stringData": {"pw": "hunter2"},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "crs-only"},
                "rules": [
                    {
                        "apiGroups": ["disagg.dev"],
                        "resources": ["disaggdeployments", "inferencepools"],
                        "verbs": ["*"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "crs-only"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "crs-only",
                },
                "subjects": [{"kind": "ServiceAccount", "name": TENANT, "namespace": namespace}],
            },
        ]
    )
    return f"system:serviceaccount:{namespace}:{TENANT}"


def _as(kube: Kubectl, user: str, obj: dict[str, Any]) -> None:
    kube.kubectl("apply", f"--as={user}", "--server-side", "-f", "-", input=json.dumps(obj))


def _admitted(kube: Kubectl, user: str, obj: dict[str, Any]) -> bool:
    try:
        _as(kube, user, obj)
    except KubectlError:
        return False
    return True


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def test_the_tenant_really_has_only_our_resources(kube: Kubectl, tenant: str) -> None:
    for verb, resource in (("get", "secrets"), ("create", "pods"), ("create", "deployments")):
        answer = kube.kubectl("auth", "can-i", verb, resource, f"--as={tenant}", check=False)
        assert answer.strip() == "no", (verb, resource, answer)
    assert kube.kubectl("auth", "can-i", "create", DD, f"--as={tenant}").strip() == "yes"


def test_no_field_of_our_api_gets_the_tenant_an_unsafe_pod(
    operator: OperatorProcess, kube: Kubectl, tenant: str
) -> None:
    admitted: dict[str, str] = {}
    for name, (overlay, field) in ATTEMPTS.items():
        body = a_disagg(name)
        body["spec"] = _merge(body["spec"], overlay)
        try:
            _as(kube, tenant, body)
            admitted[name] = field
        except KubectlError as err:
            print(f"{name}: refused at admission: {err.stderr.strip()[:200]}")
    for name, field in admitted.items():
        dd = kube.wait_for_object(
            DD, name, lambda o: (condition(o, "Degraded") or {}).get("status") == "True", 90
        )
        degraded = condition(dd, "Degraded") or {}
        assert degraded.get("reason") == "UnsafePodTemplate", (name, degraded)
        assert field in degraded.get("message", ""), (name, degraded)
        print(f"{name}: refused by the operator: {degraded['message'][:200]}")
    # Nothing was created for any of them: no pools, no Deployments, no pods.
    assert kube.items(IP) == []
    assert kube.items("deployments") == []
    assert kube.items("pods") == []
    print(f"{len(ATTEMPTS)} attempts refused ({len(ATTEMPTS) - len(admitted)} at admission)")


def test_a_standalone_pool_is_held_to_the_same_rules(
    operator: OperatorProcess, kube: Kubectl, tenant: str
) -> None:
    pool = a_pool("sneaky", podTemplate={"spec": {"hostNetwork": True, "hostPID": True}})
    _as(kube, tenant, pool)
    got = kube.wait_for_object(
        IP,
        "sneaky",
        lambda o: (condition(o, "Degraded") or {}).get("reason") == "UnsafePodTemplate",
        60,
    )
    message = condition(got, "Degraded")["message"]  # type: ignore[index]
    assert "spec.podTemplate.spec.hostNetwork" in message and "hostPID" in message
    assert kube.get("deployment", "sneaky") is None


def test_the_model_token_secret_the_spec_names_is_allowed(
    operator: OperatorProcess, kube: Kubectl, tenant: str
) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hf"},
            "stringData": {"token": "t"},
        }
    )
    body = a_disagg("ok")
    body["spec"]["model"]["tokenSecretRef"] = {"name": "hf", "key": "token"}
    _as(kube, tenant, body)
    deployment = kube.wait_for(
        lambda: kube.get("deployment", "ok-prefill"), 90, "worker Deployment"
    )
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork") and not pod.get("serviceAccountName")


@pytest.fixture
def secret_ref_policy(
    cluster: Cluster, cluster_kube: Kubectl, kube: Kubectl, tenant: str
) -> Iterator[None]:
    """The chart's ValidatingAdmissionPolicy, rendered by helm and applied as the chart would."""
    from testbed.cluster.config import Settings

    helm_bin = str(Settings.from_env().tool("helm"))
    rendered = subprocess.run(
        [helm_bin, "template", "e2e", str(REPO / "charts" / "disagg"),
         "--namespace", "disagg-e2e", "--show-only", "templates/admission-policy.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cluster_kube.apply(rendered)
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(rendered) if d]
    try:
        # The API server compiles a new policy asynchronously: wait until it refuses something.
        probe = a_disagg("policy-probe")
        probe["spec"]["model"]["tokenSecretRef"] = {"name": "db-password", "key": "pw"}

        def refusing() -> bool:
            try:
                kube.kubectl(
                    "create", "--dry-run=server", f"--as={tenant}", "-f", "-",
                    input=json.dumps(probe), check=True,
                )  # fmt: skip
            except KubectlError as err:
                return "may not" in err.stderr
            return False

        cluster_kube.wait_for(refusing, 60, "the admission policy in force")
        yield
    finally:
        cluster_kube.delete("validatingadmissionpolicybinding", names[1])
        cluster_kube.delete("validatingadmissionpolicy", names[0])


def test_naming_a_secret_you_may_not_read_is_refused_at_admission(
    kube: Kubectl, tenant: str, secret_ref_policy: None
) -> None:
    for where, overlay in {
        "model token": {"model": {"tokenSecretRef": {"name": "db-password", "key": "pw"}}},
        "gateway API key": {"gateway": {"apiKeySecretRef": {"name": "db-password", "key": "pw"}}},
        "engine env": {
            "engine": {
                "env": [
                    {
                        "name": "PW",
                        "valueFrom": {"secretKeyRef": {"name": "db-password", "key": "pw"}},
                    }
                ]
            }
        },
    }.items():
        body = a_disagg("named")
        body["spec"] = _merge(body["spec"], overlay)
        with pytest.raises(KubectlError) as refused:
            _as(kube, tenant, body)
        assert "db-password" in refused.value.stderr and "may not" in refused.value.stderr
        print(f"{where}: refused at admission: {refused.value.stderr.strip()[:160]}")
    # Once the tenant may read the Secret, naming it is their right.
    kube.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "read-db"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["secrets"],
                        "resourceNames": ["db-password"],
                        "verbs": ["get"],
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "read-db"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-db",
                },
                "subjects": [{"kind": "User", "name": tenant}],
            },
        ]
    )
    body = a_disagg("named")
    body["spec"]["model"]["tokenSecretRef"] = {"name": "db-password", "key": "pw"}
    kube.wait_for(lambda: _admitted(kube, tenant, body), 30, "admitted once readable")
