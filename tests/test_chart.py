"""The Helm chart (charts/disagg), rendered by the real ``helm`` binary.

``helm lint`` and ``helm template`` run for each values file under ``charts/disagg/ci/`` (and the
defaults); every rendered built-in object must pass ``kubernetes-validate`` (strict); the
chart's CRDs must equal ``crds/`` apart from the template wrapper; RBAC must be exact (no
wildcard, nothing beyond the list below, everything ``controller.kube`` touches); the operator
pod must meet Pod Security "restricted".  The e2e tier (e2e/test_chart.py) proves the same on an
API server.

helm comes from ``$HELM``, ``PATH`` or the local cluster's cache (``python -m testbed.cluster
install`` puts helm v4 in ``~/.cache/disagg/bin``); without it these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from disagg.controller.kube import RESOURCES
from disagg.gateway.metrics import GatewayMetrics
from disagg.render import names
from disagg.render.autoscaling import METRICS

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "disagg"
K8S_VERSION = "1.34.0"
MONITORING = "monitoring.coreos.com/v1"
#: name -> (values file or None for the defaults, extra --api-versions)
CASES: dict[str, tuple[Path | None, list[str]]] = {
    "default": (None, []),
    "namespaced": (CHART / "ci" / "namespaced-values.yaml", []),
    "crds-off": (CHART / "ci" / "crds-off-values.yaml", []),
    "monitoring": (CHART / "ci" / "monitoring-values.yaml", [MONITORING]),
}

RW = {"get", "list", "watch", "create", "patch", "update", "delete"}
#: Exactly what the operator may do in a namespace: (apiGroup, resource) -> verbs.
NAMESPACED_GRANTS: dict[tuple[str, str], set[str]] = {
    ("disagg.dev", "disaggdeployments"): {"get", "list", "watch", "patch", "update"},
    ("disagg.dev", "inferencepools"): RW,
    ("disagg.dev", "disaggdeployments/status"): {"get", "patch", "update"},
    ("disagg.dev", "inferencepools/status"): {"get", "patch", "update"},
    ("apps", "deployments"): RW,
    ("", "services"): RW,
    ("", "configmaps"): RW,
    ("", "serviceaccounts"): RW,
    ("policy", "poddisruptionbudgets"): RW,
    ("autoscaling", "horizontalpodautoscalers"): RW,
    ("keda.sh", "scaledobjects"): RW,
    ("rbac.authorization.k8s.io", "roles"): RW,
    ("rbac.authorization.k8s.io", "rolebindings"): RW,
    ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
CRD_READS = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
NAMESPACE_READS = {("", "namespaces"): {"list", "watch"}}


def helm_binary() -> str | None:
    cache_bin = Path(os.environ.get("DISAGG_CACHE", Path.home() / ".cache" / "disagg")) / "bin"
    for candidate in (os.environ.get("HELM"), shutil.which("helm"), str(cache_bin / "helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


HELM = helm_binary()
pytestmark = pytest.mark.skipif(
    HELM is None,
    reason="helm not found ($HELM, PATH or ~/.cache/disagg/bin/helm); "
    "`python -m testbed.cluster install` fetches it",
)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60)


@cache
def render(case: str) -> list[dict[str, Any]]:
    values, api_versions = CASES[case]
    args = ["template", "disagg", str(CHART), "--namespace", "disagg-system"]
    args += ["--kube-version", K8S_VERSION]
    if values:
        args += ["-f", str(values)]
    for version in api_versions:
        args += ["--api-versions", version]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def operator_cluster_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ClusterRoles the operator itself holds (not the one it binds for gateways)."""
    return [
        d
        for d in of_kind(docs, "ClusterRole")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") != "gateway"
    ]


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def operator_deployment(case: str) -> dict[str, Any]:
    (deployment,) = of_kind(render(case), "Deployment")
    return deployment


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict(case: str) -> None:
    values, _ = CASES[case]
    done = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("case", CASES)
def test_every_builtin_object_passes_kubernetes_validate(case: str) -> None:
    builtin = [d for d in render(case) if d["apiVersion"] != MONITORING]
    assert builtin
    for doc in builtin:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_chart_crds_equal_the_crds_folder() -> None:
    committed = {
        doc["metadata"]["name"]: doc
        for path in sorted((ROOT / "crds").glob("*.yaml"))
        for doc in [yaml.safe_load(path.read_text())]
    }
    rendered = {}
    for crd in of_kind(render("default"), "CustomResourceDefinition"):
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}, "uninstall must keep CRDs"
        rendered[crd["metadata"]["name"]] = crd
    assert rendered == committed


def test_crds_switch_off() -> None:
    assert not of_kind(render("crds-off"), "CustomResourceDefinition")
    assert len(of_kind(render("namespaced"), "CustomResourceDefinition")) == 2


@pytest.mark.parametrize("case", CASES)
def test_no_wildcard_in_any_role(case: str) -> None:
    roles = of_kind(render(case), "ClusterRole") + of_kind(render(case), "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in item for item in rule.get(field, [])), (role, rule)


def test_cluster_wide_role_is_exactly_what_the_operator_needs() -> None:
    (role,) = operator_cluster_roles(render("default"))
    assert grants(role["rules"]) == {**NAMESPACED_GRANTS, **CRD_READS}
    (binding,) = of_kind(render("default"), "ClusterRoleBinding")
    (account,) = of_kind(render("default"), "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": "disagg-system",
        }
    ]
    assert not of_kind(render("default"), "Role")


@pytest.mark.parametrize("case", ["default", "namespaced"])
def test_gateways_are_bound_to_one_cluster_role_that_only_reads_pods(case: str) -> None:
    docs = render(case)
    (role,) = [r for r in of_kind(docs, "ClusterRole") if r not in operator_cluster_roles(docs)]
    assert grants(role["rules"]) == {("", "pods"): {"get", "list", "watch"}}
    assert f"--gateway-cluster-role={role['metadata']['name']}" in _args(case)
    # Nothing binds it cluster-wide: only the operator's RoleBindings, per namespace.
    assert all(
        b["roleRef"]["name"] != role["metadata"]["name"]
        for b in of_kind(docs, "ClusterRoleBinding")
    )


def test_every_kind_the_operator_touches_is_granted() -> None:
    """A kind added to controller.kube.RESOURCES without RBAC would fail at runtime with 403."""
    for resource in RESOURCES.values():
        group = resource.group_version.rpartition("/")[0]
        assert (group, resource.plural) in NAMESPACED_GRANTS, resource


def test_namespaced_mode_grants_roles_only_in_listed_namespaces() -> None:
    docs = render("namespaced")
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert grants(role["rules"]) == NAMESPACED_GRANTS
    bindings = of_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    (cluster_role,) = operator_cluster_roles(docs)
    assert grants(cluster_role["rules"]) == {**CRD_READS, **NAMESPACE_READS}
    args = operator_deployment("namespaced")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--prometheus-url=http://prometheus.monitoring.svc:9090" in args
    assert not any(a.startswith("--namespace") for a in _args("default"))


def _args(case: str) -> list[str]:
    return list(operator_deployment(case)["spec"]["template"]["spec"]["containers"][0]["args"])


def test_namespaced_mode_without_namespaces_is_refused() -> None:
    done = helm("template", "x", str(CHART), "--set", "rbac.namespaced=true")
    assert done.returncode != 0
    assert "watchNamespaces" in done.stderr


def test_operator_runs_one_replica_with_recreate() -> None:
    spec = operator_deployment("default")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = spec["template"]["spec"]["containers"][0]
    assert container["image"] == f"disagg/operator:{_chart()['appVersion']}"
    assert container["command"] == ["disagg", "operator"]


def _chart() -> dict[str, Any]:
    chart: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return chart


# ---------------------------------------------------------------- Pod Security "restricted"

_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What Pod Security "restricted" (v1.34) would reject in ``pod`` (a PodSpec)."""
    out: list[str] = []
    psc = pod.get("securityContext", {})
    out += [f"spec.{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        out += [f"volume {volume['name']}: {k}" for k in kinds - _RESTRICTED_VOLUMES]
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: must drop ALL capabilities")
        out += [f"{name}: adds {cap}" for cap in caps.get("add", []) if cap != "NET_BIND_SERVICE"]
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"{name}: hostPort")
    return out


@pytest.mark.parametrize("case", CASES)
def test_operator_pod_meets_restricted(case: str) -> None:
    pod = operator_deployment(case)["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


def test_the_checker_catches_what_restricted_rejects() -> None:
    pod = {
        "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}}}]
    }
    found = " ".join(restricted_violations(pod))
    for expected in ("allowPrivilegeEscalation", "drop ALL", "IPC_LOCK", "runAsNonRoot", "seccomp"):
        assert expected in found


def test_helm_test_pod_meets_restricted_and_targets_the_gateway() -> None:
    assert not of_kind(render("default"), "Pod"), "no test unless tests.gateway.url is set"
    (pod,) = of_kind(render("monitoring"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert restricted_violations(pod["spec"]) == []
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["GATEWAY_URL"]["value"] == "http://llama-gateway.default.svc:8000"
    assert env["API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "llama-gateway-api-key"


def test_gateway_pods_the_operator_renders_meet_restricted() -> None:
    from tests.test_render import render_everything

    example = yaml.safe_load((ROOT / "examples" / "disaggdeployment-full.yaml").read_text())
    objects = render_everything(example)
    (gateway,) = [
        o for o in objects if o["kind"] == "Deployment" and "gateway" in o["metadata"]["name"]
    ]
    assert restricted_violations(gateway["spec"]["template"]["spec"]) == []
    workers = [o for o in objects if o["kind"] == "Deployment" and o is not gateway]
    for worker in workers:  # RDMA is on in this example: IPC_LOCK, and nothing else, is added
        for c in worker["spec"]["template"]["spec"]["containers"]:
            assert c["securityContext"]["capabilities"].get("add") == ["IPC_LOCK"]


# ---------------------------------------------------------------- metrics: adapter, monitors


def _adapter_config(case: str = "default") -> dict[str, Any]:
    (cm,) = [d for d in of_kind(render(case), "ConfigMap") if "adapter" in d["metadata"]["name"]]
    config: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return config


def _exposed(rules: list[dict[str, Any]], series: str) -> list[str]:
    """Names the adapter would expose for ``series`` (rule discovery + naming)."""
    out = []
    for rule in rules:
        name_filter = re.search(r'__name__=~?"([^"]+)"', rule["seriesQuery"])
        pattern = name_filter.group(1) if name_filter else rule["seriesQuery"].split("{")[0]
        if not re.fullmatch(pattern.strip("^$"), series):
            continue
        as_ = re.sub(r"\$\{(\d+)\}", r"\\g<\1>", rule["name"]["as"])
        if re.search(rule["name"]["matches"], series):
            out.append(re.sub(rule["name"]["matches"], as_, series))
    return out


def test_adapter_rules_expose_every_metric_the_hpas_use() -> None:
    config = _adapter_config()
    gateway_series = {m.name for m in GatewayMetrics().registry.collect()}
    for kind, name in METRICS.values():
        if kind == "External":
            assert name in gateway_series
            assert _exposed(config["externalRules"], name) == [name]
            assert _exposed(config["rules"], name) == []
        else:
            source = "vllm:" + name.removeprefix("vllm_")
            assert _exposed(config["rules"], source) == [name], source
    for rule in config["rules"] + config["externalRules"]:
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_adapter_rules_namespace_moves_with_the_value() -> None:
    (cm,) = [
        d for d in of_kind(render("monitoring"), "ConfigMap") if "adapter" in d["metadata"]["name"]
    ]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert _adapter_config("monitoring") == _adapter_config("default")


def test_monitors_only_with_the_prometheus_operator_and_they_select_our_objects() -> None:
    assert not [d for d in render("default") if d["apiVersion"] == MONITORING]
    docs = render("monitoring")
    (service_monitor,) = of_kind(docs, "ServiceMonitor")
    (pod_monitor,) = of_kind(docs, "PodMonitor")
    gateway = names.gateway_labels("llama")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= gateway.items()
    worker = names.pool_labels("llama-decode", "decode", "llama")
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= worker.items()
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_queries_only_series_that_exist() -> None:
    (cm,) = [
        d for d in of_kind(render("default"), "ConfigMap") if "dashboard" in d["metadata"]["name"]
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["disagg.json"])
    exported = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for family in GatewayMetrics().registry.collect():
        exported |= {family.name + suffix for suffix in suffixes[family.type]}
    vllm = {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(disagg_gateway_\w+|vllm:\w+)", e)}
    assert used - exported - vllm == set()
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in (
        "queue depth",
        "replicas",
        "time to first token",
        "inter-token",
        "kv handoff",
        "disaggregated share",
    ):
        assert topic in titles


# ---------------------------------------------------------------- deploy/ for kubectl users

DEPLOY = ROOT / "deploy" / "disagg-operator.yaml"
DEPLOY_HEADER = (
    "# Generated from charts/disagg (helm template, default values, release `disagg` in\n"
    "# disagg-system, without CRDs, adapter rules and dashboard) by tests/test_chart.py;\n"
    "# regenerate with UPDATE_GOLDEN=1. Apply after crds/: kubectl apply -f deploy/\n"
)
_HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def _without_helm_labels(doc: dict[str, Any]) -> dict[str, Any]:
    template = doc.get("spec", {}).get("template", {})
    for meta in (doc["metadata"], template.get("metadata", {})):
        for key in _HELM_ONLY_LABELS:
            meta.get("labels", {}).pop(key, None)
    return doc


def render_deploy_manifests() -> str:
    done = helm(
        "template", "disagg", str(CHART), "--namespace", "disagg-system",
        "--kube-version", K8S_VERSION, "--set", "crds.install=false",
        "--set", "prometheusAdapter.rules.enabled=false", "--set", "dashboard.enabled=false",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "disagg-system",
            "labels": {
                "app.kubernetes.io/part-of": "disagg",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    docs = [namespace] + [_without_helm_labels(d) for d in yaml.safe_load_all(done.stdout) if d]
    return DEPLOY_HEADER + yaml.safe_dump_all(docs, sort_keys=False, width=100)


def test_deploy_manifests_match_the_chart() -> None:
    fresh = render_deploy_manifests()
    if os.environ.get("UPDATE_GOLDEN"):
        DEPLOY.parent.mkdir(exist_ok=True)
        DEPLOY.write_text(fresh)
    assert DEPLOY.exists(), f"no {DEPLOY}; run with UPDATE_GOLDEN=1"
    assert DEPLOY.read_text() == fresh, f"{DEPLOY} differs from the chart; UPDATE_GOLDEN=1"
    docs = list(yaml.safe_load_all(fresh))
    assert docs[0]["kind"] == "Namespace"
    assert {d["kind"] for d in docs} == {
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
        "ConfigMap",  # the worker policy
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    }  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
