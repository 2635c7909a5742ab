"""The Helm chart on a real API server: install, least privilege, Pod Security, upgrade, uninstall.

One release of ``charts/disagg`` (cluster-wide mode) is installed for the module into a namespace
labelled ``pod-security.kubernetes.io/enforce=restricted``; a second, namespaced-mode release
with ``crds.install=false`` checks that Roles confine the operator to its listed namespaces.
The ``kubectl auth can-i`` matrix is printed (``pytest -s``) and asserted row by row.  The
tests run in file order and the last one uninstalls; the CRDs must survive it.

``--take-ownership`` lets the release adopt CRDs an earlier test applied with ``kubectl apply``
(docs/install.md, "CRDs installed before the chart"); ``--force-conflicts`` lets an upgrade
overwrite fields that apply set.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import Cluster
from testbed.cluster.kubectl import Kubectl, KubectlError

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "disagg"
CRDS = ("inferencepools.disagg.dev", "disaggdeployments.disagg.dev")
WORKER_IMAGE = os.environ.get("E2E_WORKER_IMAGE", "disagg/sim:dev")
GATEWAY_IMAGE = os.environ.get("E2E_GATEWAY_IMAGE", "disagg/gateway:dev")


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    helm: str
    kubeconfig: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.helm, f"--kubeconfig={self.kubeconfig}", "--namespace", self.namespace, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if check and done.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @property
    def operator(self) -> str:
        """The operator Deployment (and ServiceAccount) name: ``<fullname>-operator``."""
        return self.service_account


def _helm(cluster: Cluster) -> str:
    candidates = [os.environ.get("E2E_HELM"), shutil.which("helm")]
    if cluster.local is not None:
        candidates.append(str(cluster.local.tool("helm")))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail(
        "no helm: set E2E_HELM, put helm on PATH, or run `python -m testbed.cluster install`"
    )


def _namespace(kube: Kubectl, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    return name


RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture(scope="module")
def release(cluster: Cluster, cluster_kube: Kubectl, images: None) -> Iterator[Release]:
    # ``images``: the chart runs the operator image, which must be built from this checkout
    # (and loaded) even when this module runs first or alone.
    namespace = _namespace(cluster_kube, "disagg-chart", RESTRICTED)
    # A release name containing "disagg" is the chart's fullname: objects are "<name>-operator".
    name = f"disagg-e2e-{secrets.token_hex(2)}"
    rel = Release(name, namespace, f"{name}-operator", _helm(cluster), cluster.kubeconfig)
    # CRDs applied earlier by other managers (the crds fixture, kubectl) are taken over.
    rel.run(
        "install", rel.name, str(CHART), "--take-ownership", "--force-conflicts",
        "--wait=hookOnly", "--set", f"gateway.trustedImages[0]={GATEWAY_IMAGE}",
    )  # fmt: skip
    try:
        yield rel
    finally:
        rel.run("uninstall", rel.name, "--ignore-not-found", check=False)
        cluster_kube.delete("namespace", namespace)


def can_i(kube: Kubectl, subject: str, verb: str, resource: str, namespace: str | None) -> bool:
    """``kubectl auth can-i VERB RESOURCE --as=SUBJECT``, asked as a SubjectAccessReview.

    The same question the API server's authorizer answers for can-i; the review names the API
    group explicitly, so it also works for kinds the server does not serve (KEDA's
    ScaledObjects where KEDA is not installed), which kubectl's can-i cannot map.
    """
    name, _, sub = resource.partition("|--subresource=")
    plural, _, group = name.partition(".")
    attributes = {"verb": verb, "group": group, "resource": plural, "subresource": sub}
    if namespace:
        attributes["namespace"] = namespace
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": subject,
            "groups": [
                "system:authenticated",
                "system:serviceaccounts",
                f"system:serviceaccounts:{subject.split(':')[2]}",
            ],
            "resourceAttributes": attributes,
        },
    }
    answer = kube.create(review)
    return bool(answer["status"].get("allowed"))


#: (verb, resource["|--subresource=x"], namespace placeholder or None = all, allowed?)
MATRIX: list[tuple[str, str, str | None, bool]] = [
    ("watch", "disaggdeployments.disagg.dev", "work", True),
    ("patch", "disaggdeployments.disagg.dev", "work", True),
    ("patch", "disaggdeployments.disagg.dev|--subresource=status", "work", True),
    ("create", "disaggdeployments.disagg.dev", "work", False),
    ("delete", "disaggdeployments.disagg.dev", "work", False),
    ("create", "inferencepools.disagg.dev", "work", True),
    ("delete", "inferencepools.disagg.dev", "work", True),
    ("patch", "inferencepools.disagg.dev|--subresource=status", "work", True),
    ("update", "inferencepools.disagg.dev|--subresource=scale", "work", False),
    ("create", "deployments.apps", "work", True),
    ("delete", "services", "work", True),
    ("patch", "configmaps", "work", True),
    ("create", "serviceaccounts", "work", True),
    ("create", "serviceaccounts|--subresource=token", "work", False),
    ("create", "poddisruptionbudgets.policy", "work", True),
    ("patch", "horizontalpodautoscalers.autoscaling", "work", True),
    ("create", "scaledobjects.keda.sh", "work", True),
    ("create", "roles.rbac.authorization.k8s.io", "work", True),
    ("create", "rolebindings.rbac.authorization.k8s.io", "work", True),
    ("escalate", "roles.rbac.authorization.k8s.io", "work", False),
    ("bind", "roles.rbac.authorization.k8s.io", "work", False),
    ("list", "endpointslices.discovery.k8s.io", "work", True),
    ("create", "endpointslices.discovery.k8s.io", "work", False),
    ("watch", "pods", "work", True),
    ("delete", "pods", "work", False),
    ("create", "pods|--subresource=exec", "work", False),
    ("get", "pods|--subresource=log", "work", False),
    ("create", "events", "work", True),
    ("create", "events.events.k8s.io", "work", True),
    ("get", "secrets", "work", False),
    ("list", "secrets", "work", False),
    ("get", "secrets", "release", False),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None, True),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, False),
    ("get", "nodes", None, False),
    ("patch", "nodes|--subresource=status", None, False),
    ("create", "clusterroles.rbac.authorization.k8s.io", None, False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, False),
    ("create", "namespaces", None, False),
    ("impersonate", "serviceaccounts", "work", False),
    ("create", "persistentvolumes", None, False),
]


Row = tuple[str, str, str | None, bool]


def _check(kube: Kubectl, subject: str, rows: list[Row]) -> list[str]:
    """Ask can-i for each row, print the matrix, return the rows whose answer is wrong."""
    wrong = []
    for verb, resource, namespace, expected in rows:
        allowed = can_i(kube, subject, verb, resource, namespace)
        row = f"{verb:<11} {resource.replace('|--subresource=', '/'):<52} {namespace or '(all)'}"
        flag = "" if allowed == expected else "  <-- WRONG"
        print(f"  {row:<90} {'yes' if allowed else 'no'}{flag}")
        if flag:
            wrong.append(f"{row}: {allowed}, want {expected}")
    return wrong


def test_release_objects_and_crds(release: Release, cluster_kube: Kubectl) -> None:
    kube = cluster_kube.in_namespace(release.namespace)
    assert kube.get("serviceaccount", release.service_account)
    deployment = kube.get("deployment", release.operator)
    assert deployment and deployment["spec"]["strategy"]["type"] == "Recreate"
    for crd in CRDS:
        obj = cluster_kube.get("crd", crd)
        assert obj, crd
        assert obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert obj["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name


def test_can_i_matrix_cluster_wide(release: Release, cluster_kube: Kubectl) -> None:
    work = _namespace(cluster_kube, "disagg-chart-work")
    try:
        print(f"\ncan-i as {release.subject} (cluster-wide mode):")
        where = {"work": work, "release": release.namespace}
        rows = [(v, r, where[ns] if ns else None, ok) for v, r, ns, ok in MATRIX]
        wrong = _check(cluster_kube, release.subject, rows)
    finally:
        cluster_kube.delete("namespace", work)
    assert wrong == []


def test_namespaced_mode_confines_the_operator(release: Release, cluster_kube: Kubectl) -> None:
    watched = _namespace(cluster_kube, "disagg-chart-watched")
    other = _namespace(cluster_kube, "disagg-chart-other")
    home = _namespace(cluster_kube, "disagg-chart-ns", RESTRICTED)
    name = f"scoped-{secrets.token_hex(2)}"  # its ClusterRole is cluster-wide: unique name
    scoped = Release(name, home, f"{name}-disagg-operator", release.helm, release.kubeconfig)
    try:
        scoped.run(
            "install", scoped.name, str(CHART), "--set", "crds.install=false",
            "--set", "rbac.namespaced=true", "--set", f"watchNamespaces={{{watched}}}",
            "--set", "prometheusAdapter.rules.enabled=false", "--set", "dashboard.enabled=false",
        )  # fmt: skip
        args = cluster_kube.in_namespace(home).get("deployment", scoped.operator)
        assert args
        container = args["spec"]["template"]["spec"]["containers"][0]
        assert f"--namespace={watched}" in container["args"]
        print(f"\ncan-i as {scoped.subject} (namespaced mode, watching {watched}):")
        rows: list[Row] = [
            ("create", "deployments.apps", watched, True),
            ("create", "inferencepools.disagg.dev", watched, True),
            ("watch", "disaggdeployments.disagg.dev", watched, True),
            ("create", "deployments.apps", other, False),
            ("watch", "disaggdeployments.disagg.dev", other, False),
            ("list", "pods", other, False),
            ("create", "events", other, False),
            ("list", "disaggdeployments.disagg.dev", None, False),  # i.e. across namespaces
            ("list", "pods", None, False),
            ("get", "secrets", watched, False),
            ("get", "nodes", None, False),
            ("list", "customresourcedefinitions.apiextensions.k8s.io", None, True),
            ("watch", "namespaces", None, True),
            ("get", "namespaces", None, False),
        ]
        wrong = _check(cluster_kube, scoped.subject, rows)
        assert wrong == []
        _scoped_operator_acts_only_where_it_watches(release, scoped, cluster_kube, watched, other)
    finally:
        scoped.run("uninstall", scoped.name, "--ignore-not-found", check=False)
        for ns in (watched, other, home):
            cluster_kube.delete("namespace", ns)


def _idle_pool(name: str) -> dict[str, Any]:
    """An InferencePool with no replicas: the operator renders its Deployment, no pod runs."""
    return {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": name},
        "spec": {
            "role": "aggregated",
            "replicas": 0,
            "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama"},
            "engine": {"image": WORKER_IMAGE, "imagePullPolicy": "Never"},
            "kvTransfer": {"connector": "None"},
            "resources": {"cpu": "100m", "memory": "256Mi", "sharedMemory": "64Mi"},
        },
    }


def _scoped_operator_acts_only_where_it_watches(
    release: Release, scoped: Release, cluster_kube: Kubectl, watched: str, other: str
) -> None:
    """With every cluster-wide operator stopped, the namespaced one reconciles only ``watched``.

    Other installs (this test's release, a `make demo` left running) are scaled to 0 for the
    check and restored afterwards."""
    home = cluster_kube.in_namespace(scoped.namespace)
    others = [
        d
        for d in json.loads(
            cluster_kube.kubectl(
                "get", "deployments", "-A", "-o", "json", "-l",
                "app.kubernetes.io/component=operator,app.kubernetes.io/part-of=disagg",
            )
        )["items"]
        if d["metadata"]["name"] != scoped.operator
    ]  # fmt: skip
    for d in others:
        cluster_kube.in_namespace(d["metadata"]["namespace"]).kubectl(
            "scale", "deployment", d["metadata"]["name"], "--replicas=0"
        )
    try:
        for d in others:
            ns = cluster_kube.in_namespace(d["metadata"]["namespace"])
            selector = ",".join(f"{k}={v}" for k, v in d["spec"]["selector"]["matchLabels"].items())
            ns.wait_for(lambda ns=ns, sel=selector: not ns.items("pods", sel), 120,
                        "cluster-wide operators stopped")  # fmt: skip
        home.wait_for_object(
            "deployment",
            scoped.operator,
            lambda d: d.get("status", {}).get("availableReplicas", 0) >= 1,
            180,
        )
        cluster_kube.in_namespace(other).apply(_idle_pool("confined"))
        cluster_kube.in_namespace(watched).apply(_idle_pool("confined"))
        cluster_kube.in_namespace(watched).wait_for(
            lambda: cluster_kube.in_namespace(watched).get("deployment", "confined"),
            120,
            "the scoped operator renders the watched namespace's pool",
        )
        # kopf would have handled both pools at once had it seen both.
        assert cluster_kube.in_namespace(other).get("deployment", "confined") is None
        logs = home.kubectl("logs", f"deployment/{scoped.operator}")
        assert rbac_denials(logs) == [], logs[-3000:]
    finally:
        for d in others:
            cluster_kube.in_namespace(d["metadata"]["namespace"]).kubectl(
                "scale", "deployment", d["metadata"]["name"],
                f"--replicas={d['spec'].get('replicas', 1)}",
            )  # fmt: skip


def rbac_denials(logs: str) -> list[str]:
    """Log lines where the authorizer refused the operator (not e.g. a terminating namespace)."""
    marks = ('forbidden: User "system:serviceaccount:', "Not enough permissions")
    return [line for line in logs.splitlines() if any(m in line for m in marks)]


def _operator_pod(kube: Kubectl) -> dict[str, Any]:
    pods = kube.wait_for(
        lambda: kube.items("pods", "app.kubernetes.io/component=operator"), 60, "operator pod"
    )
    pod: dict[str, Any] = pods[0]
    return pod


def test_operator_pod_is_admitted_under_restricted(release: Release, cluster_kube: Kubectl) -> None:
    kube = cluster_kube.in_namespace(release.namespace)
    labels = cluster_kube.get("namespace", release.namespace)["metadata"]["labels"]  # type: ignore[index]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = _operator_pod(kube)  # the ReplicaSet's create passed admission
    # The same pod spec, dry-run: admitted; without its seccomp profile: refused by PodSecurity,
    # which shows the namespace really enforces "restricted".
    template = kube.get("deployment", release.operator)["spec"]["template"]  # type: ignore[index]
    candidate = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-probe"}}
    candidate["spec"] = template["spec"]
    kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(candidate))
    weakened = json.loads(json.dumps(candidate))
    del weakened["spec"]["securityContext"]["seccompProfile"]
    del weakened["spec"]["containers"][0]["securityContext"]["seccompProfile"]
    with pytest.raises(KubectlError) as refused:
        kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(weakened))
    assert 'violates PodSecurity "restricted:latest"' in refused.value.stderr
    assert "seccompProfile" in refused.value.stderr
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_rdma_worker_needs_a_privileged_namespace(cluster_kube: Kubectl) -> None:
    """IPC_LOCK is outside baseline's capability list: only enforce=privileged admits it."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rdma-probe"},
        "spec": {
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "vllm",
                    "image": "disagg/sim:dev",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]},
                    },
                }
            ],
        },
    }
    verdicts = {}
    for level in ("baseline", "privileged"):
        ns = _namespace(
            cluster_kube, f"disagg-psa-{level}", {"pod-security.kubernetes.io/enforce": level}
        )
        try:
            out = cluster_kube.in_namespace(ns).kubectl(
                "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
            )
            verdicts[level] = "created" in out
        finally:
            cluster_kube.delete("namespace", ns)
    assert verdicts == {"baseline": False, "privileged": True}


def test_operator_runs_without_forbidden_errors(release: Release, cluster_kube: Kubectl) -> None:
    kube = cluster_kube.in_namespace(release.namespace)
    pod = _operator_pod(kube)
    image = pod["spec"]["containers"][0]["image"]

    def ready_or_stuck() -> str | None:
        current = kube.get("pod", pod["metadata"]["name"]) or {}
        for status in current.get("status", {}).get("containerStatuses", []):
            if status.get("ready"):
                return "ready"
            waiting = status.get("state", {}).get("waiting", {})
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"):
                return "no-image"
        return None

    state = kube.wait_for(ready_or_stuck, 180, "operator pod ready")
    if state == "no-image":
        pytest.skip(
            f"{image} is not loaded into the node; build it with `python testbed/images.py all`"
        )
    logs = kube.kubectl("logs", pod["metadata"]["name"])
    assert rbac_denials(logs) == [], logs[-3000:]


def _smoke_disagg(name: str) -> dict[str, Any]:
    """A DisaggDeployment on the simulator image: small, fast, P/D over TCP."""
    engine = {
        "image": WORKER_IMAGE,
        "imagePullPolicy": "Never",
        "extraArgs": ["--sim-speedup", "50"],
    }
    pool = {
        "resources": {"cpu": "100m", "memory": "256Mi", "sharedMemory": "64Mi"},
        "drain": {"timeoutSeconds": 5},
    }
    return {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama"},
            "engine": engine,
            "kvTransfer": {"leaseSeconds": 5},
            "prefill": pool,
            "decode": pool,
            "gateway": {"image": GATEWAY_IMAGE, "cpu": "100m", "memory": "256Mi"},
        },
    }


def test_helm_test_serves_one_request_through_a_gateway(
    release: Release, cluster_kube: Kubectl
) -> None:
    """The e2e smoke with the chart-installed operator, checked by the chart's own `helm test`."""
    operator_pod = _operator_pod(cluster_kube.in_namespace(release.namespace))
    if not operator_pod.get("status", {}).get("containerStatuses", [{}])[0].get("ready"):
        pytest.skip("the chart's operator is not running (see test_operator_runs_...)")
    # Workers without RDMA meet "baseline" (the engine image may run as root); warn on restricted.
    baseline = {
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/warn": "restricted",
    }
    work = _namespace(cluster_kube, "disagg-chart-smoke", baseline)
    kube = cluster_kube.in_namespace(work)
    try:
        kube.apply(_smoke_disagg("smoke"))
        kube.wait_for_object(
            "deployment",
            "smoke-gateway",
            lambda d: d.get("status", {}).get("availableReplicas", 0) >= 1,
            240,
        )
        for pool in ("smoke-prefill", "smoke-decode"):
            kube.wait_for_object(
                "deployment", pool, lambda d: d.get("status", {}).get("readyReplicas", 0) >= 1, 240
            )
        # The gateway's pod spec, as the operator rendered it, is admitted under "restricted".
        gateway = kube.get("deployment", "smoke-gateway") or {}
        probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gateway-psa-probe"}}
        probe["spec"] = gateway["spec"]["template"]["spec"]
        # The probe lands in the release namespace, where the gateway's ServiceAccount is absent.
        probe["spec"].pop("serviceAccountName", None)
        probe["spec"].pop("serviceAccount", None)
        cluster_kube.in_namespace(release.namespace).kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(probe)
        )
        service = kube.get("service", "smoke-gateway") or {}
        port = service["spec"]["ports"][0]["port"]
        # By ClusterIP: works with or without a DNS add-on in the cluster.
        url = f"http://{service['spec']['clusterIP']}:{port}"
        release.run(
            "upgrade", release.name, str(CHART), "--reuse-values",
            "--set", f"tests.gateway.url={url}", "--set", "tests.gateway.model=llama",
        )  # fmt: skip
        done = release.run("test", release.name, "--logs", "--timeout", "3m", check=False)
        print(done.stdout[-2000:], done.stderr[-2000:])
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK POST" in done.stdout
    finally:
        cluster_kube.delete("namespace", work)


def _changed_chart(tmp: Path) -> Path:
    copy = tmp / "disagg"
    shutil.copytree(CHART, copy)
    path = copy / "templates" / "crds" / "disagg.dev_inferencepools.yaml"
    text = path.read_text()
    marker = "- name: Age\n"
    assert marker in text
    column = (
        "- name: Upgraded\n      type: string\n      jsonPath: .spec.role\n      priority: 1\n    "
    )
    path.write_text(text.replace(marker, column + marker, 1))
    return copy


def _columns(kube: Kubectl) -> list[str]:
    crd = kube.get("crd", "inferencepools.disagg.dev") or {}
    version = crd["spec"]["versions"][0]
    return [c["name"] for c in version.get("additionalPrinterColumns", [])]


def test_upgrade_applies_a_changed_crd(
    release: Release, cluster_kube: Kubectl, tmp_path: Path
) -> None:
    assert "Upgraded" not in _columns(cluster_kube)
    release.run("upgrade", release.name, str(_changed_chart(tmp_path)), "--force-conflicts")
    assert "Upgraded" in _columns(cluster_kube)
    release.run("upgrade", release.name, str(CHART), "--force-conflicts")
    assert "Upgraded" not in _columns(cluster_kube)


def _rebuilt_operator_image(cluster: Cluster) -> str:
    """The operator image with nothing changed but its identity (a new label): a new build."""
    from testbed.images import cache_dir
    from testbed.images_docker import Docker, load_into_containerd

    assert cluster.local is not None
    docker = Docker(cache_dir() / "dockerd")
    docker.ensure()
    token = secrets.token_hex(3)
    ref = f"disagg/operator:e2e-{token}"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "Dockerfile").write_text(
            f"FROM disagg/operator:dev\nLABEL dev.disagg.e2e.rebuilt={token}\n"
        )
        docker.run(["build", "-q", "-t", ref, tmp])
    assert load_into_containerd(
        docker, [ref], str(cluster.local.containerd_socket), cache_dir() / "logs"
    )
    return ref


def _all_ready(deployment: dict[str, Any]) -> bool:
    """Every replica ready and available (the gateway runs two: the second may lag)."""
    want = deployment["spec"].get("replicas", 1)
    status = deployment.get("status", {})
    return bool(status.get("readyReplicas", 0) == want == status.get("availableReplicas", 0))


def _children(kube: Kubectl) -> dict[str, dict[str, Any]]:
    kinds = ("disaggdeployments.disagg.dev", "inferencepools.disagg.dev", "deployments",
             "services", "configmaps", "serviceaccounts", "roles", "rolebindings",
             "pdb")  # fmt: skip
    return {f"{kind}/{o['metadata']['name']}": o for kind in kinds for o in kube.items(kind)}


def _writers(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Who wrote an object between two reads: its managedFields entries that are new or
    newer, and whether its status changed."""

    def entries(obj: dict[str, Any]) -> set[tuple[str, str, str, str]]:
        return {(m.get("manager", ""), m.get("operation", ""), m.get("subresource", ""),
                 m.get("time", "")) for m in obj["metadata"].get("managedFields", [])}  # fmt: skip

    found = [f"{m} {op} {sub or 'main'} at {t}" for m, op, sub, t in
             sorted(entries(after) - entries(before))]  # fmt: skip
    if before.get("status") != after.get("status"):
        found.append(f"status {before.get('status')} -> {after.get('status')}")
    return found


def test_an_operator_upgrade_restarts_no_worker_and_rewrites_nothing(
    release: Release, cluster: Cluster, cluster_kube: Kubectl
) -> None:
    """helm upgrade to a new operator image (same rendering): worker pods keep their uids and
    no child is written (resourceVersions unchanged) once the new operator has resumed."""
    if cluster.local is None:
        pytest.skip("needs the local cluster to load a rebuilt image")
    work = _namespace(
        cluster_kube, "disagg-chart-upgrade", {"pod-security.kubernetes.io/enforce": "baseline"}
    )
    kube = cluster_kube.in_namespace(work)
    operators = cluster_kube.in_namespace(release.namespace)
    try:
        kube.apply(_smoke_disagg("steady"))
        for pool in ("steady-prefill", "steady-decode", "steady-gateway"):
            kube.wait_for_object("deployment", pool, _all_ready, 240)
        kube.wait_for_object(
            "disaggdeployments.disagg.dev", "steady",
            lambda o: o.get("status", {}).get("observedGeneration") == o["metadata"]["generation"],
            120,
        )  # fmt: skip
        pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in kube.items("pods")}
        before = _settled(kube)
        old_pod = _operator_pod(operators)["metadata"]["uid"]
        ref = _rebuilt_operator_image(cluster)
        release.run(
            "upgrade", release.name, str(CHART), "--reuse-values", "--force-conflicts",
            "--set", f"image.tag={ref.split(':', 1)[1]}", "--set", "image.pullPolicy=Never",
        )  # fmt: skip
        new = operators.wait_for(
            lambda: [
                p for p in operators.items("pods", "app.kubernetes.io/component=operator")
                if p["metadata"]["uid"] != old_pod
                and all(c.get("ready") for c in p.get("status", {}).get("containerStatuses", [{}]))
            ],
            180,
            "the upgraded operator running",
        )  # fmt: skip
        assert new[0]["spec"]["containers"][0]["image"] == ref
        after = _settled(kube)
        assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in kube.items("pods")} == pods
        changed = {
            key: _writers(obj, after[key]) if key in after else ["deleted"]
            for key, obj in before.items()
            if key not in after
            or after[key]["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]
        }
        assert not changed, f"written after the upgrade: {changed}"
        print(f"operator upgraded to {ref}: {len(pods)} worker/gateway pods kept, "
              f"{len(before)} objects unchanged")  # fmt: skip
    finally:
        cluster_kube.delete("namespace", work)


def _settled(kube: Kubectl) -> dict[str, dict[str, Any]]:
    """The children once none has changed for 15 s (a resuming operator has had time)."""
    return kube.wait_unchanged(lambda: _children(kube), 15, 180, key=_rv)


def _rv(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in objects.items()}


def test_uninstall_keeps_the_crds_and_the_custom_resources(
    release: Release, cluster_kube: Kubectl
) -> None:
    """helm uninstall: CRDs and custom resources stay, their workloads keep running without
    the operator, and deleting a custom resource or its namespace afterwards completes."""
    work = _namespace(cluster_kube, "disagg-chart-keep")
    kube = cluster_kube.in_namespace(work)
    pool = yaml.safe_load((REPO / "examples" / "inferencepool.yaml").read_text())
    pool["metadata"] = {"name": "survivor", "namespace": work}
    dd = _smoke_disagg("orphaned")
    for side in ("prefill", "decode"):
        dd["spec"][side]["replicas"] = 0
    dd["spec"]["gateway"]["replicas"] = 0
    try:
        kube.create(pool)
        kube.apply(dd)
        kube.wait_for(lambda: kube.get("configmap", "orphaned-gateway"), 60, "children")
        release.run("uninstall", release.name, "--wait")
        assert not cluster_kube.in_namespace(release.namespace).get("deployment", release.operator)
        for crd in CRDS:
            assert cluster_kube.get("crd", crd), f"{crd} was deleted by helm uninstall"
        assert kube.get("inferencepools.disagg.dev", "survivor")
        assert kube.get("deployment", "orphaned-prefill"), "workloads keep running"
        for obj in (kube.get("inferencepools.disagg.dev", "survivor"),
                    kube.get("disaggdeployments.disagg.dev", "orphaned")):  # fmt: skip
            assert obj is not None and not obj["metadata"].get("finalizers"), obj["metadata"]
        kube.delete("disaggdeployments.disagg.dev", "orphaned", wait=False)
        kube.wait_for(
            lambda: kube.get("disaggdeployments.disagg.dev", "orphaned") is None, 60, "CR deleted"
        )
        kube.wait_for(lambda: kube.get("deployment", "orphaned-prefill") is None, 60, "GC")
    finally:
        cluster_kube.delete("namespace", work, wait=False)
        cluster_kube.wait_for(lambda: cluster_kube.get("namespace", work) is None, 60, "ns gone")
