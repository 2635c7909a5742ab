"""The operator at scale on the local cluster: N DisaggDeployments, what it costs the API server.

    python bench/operator_scale.py --n 100 300 500      # writes docs/benchmarks-operator.json

Runs of other N already in the results file are kept (a run replaces the one of its N).

Needs the local cluster up (``make cluster-up``) and no other operator running against it
(hold the e2e lock).  Pools and gateways run at 0 replicas, so no pod is scheduled: this
measures the operator and the API server, nothing else.

The operator under test runs from this checkout as its own ServiceAccount (cluster-admin,
for the benchmark only) with a FlowSchema matching exactly that user, so the API server's
own counter ``apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`` counts
its requests — reads, writes, watches and Events — and nobody else's.

For each N: wall time from the first create to every DisaggDeployment converged
(``status.observedGeneration == metadata.generation``), per-object p50/p99, API requests per
DisaggDeployment, operator CPU seconds and peak RSS, requests/s at rest, spec change →
child Deployment latency (p50/p99 over 100 changes, one at a time: a p99 of 20 is their
maximum), operator restart → everything resumed
(and the writes it made), delete → every child gone, RSS after.  The peer in the same run
is the floor: the same objects created directly by this driver with the same concurrency
(what the API server needs without any operator).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from disagg.render.gateway import GATEWAY_RULES  # noqa: E402
from testbed.operator_process import OperatorProcess  # noqa: E402

CACHE = Path(os.environ.get("DISAGG_CACHE", Path.home() / ".cache" / "disagg"))
KUBECONFIG = CACHE / "kubeconfig"
GROUP, VERSION = "disagg.dev", "v1alpha1"
BENCH_NS = "disagg-bench-system"
SA = "disagg-bench-operator"
FLOW = "disagg-bench-operator"
#: The gateways' ClusterRole, as the chart installs it (the operator binds it per gateway).
GATEWAY_ROLE = "disagg-bench-gateway"
CHANGES = 100


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def kubectl(*args: str, input: str | None = None) -> str:
    kubectl_bin = os.environ.get("KUBECTL") or str(CACHE / "bin" / "kubectl")
    proc = subprocess.run(
        [kubectl_bin, f"--kubeconfig={KUBECONFIG}", *args],
        input=input,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def a_disagg(name: str) -> dict[str, Any]:
    small = {"cpu": "100m", "memory": "256Mi", "sharedMemory": "64Mi"}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DisaggDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama"},
            "engine": {"image": "disagg/sim:dev", "imagePullPolicy": "Never"},
            "prefill": {"replicas": 0, "resources": small},
            "decode": {"replicas": 0, "resources": small},
            "gateway": {"replicas": 0, "cpu": "100m", "memory": "128Mi"},
        },
    }


# ------------------------------------------------------------------- identity and counting


def operator_identity(tmp: Path) -> Path:
    """A ServiceAccount + kubeconfig for the operator, and a FlowSchema counting its requests."""
    kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BENCH_NS}},
                    {
                        "apiVersion": "v1",
                        "kind": "ServiceAccount",
                        "metadata": {"name": SA, "namespace": BENCH_NS},
                    },
                    {
                        "apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": "ClusterRoleBinding",
                        "metadata": {"name": SA},
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "ClusterRole",
                            "name": "cluster-admin",
                        },
                        "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": BENCH_NS}],
                    },
                    {
                        "apiVersion": "rbac.authorization.k8s.io/v1",
                        "kind": "ClusterRole",
                        "metadata": {"name": GATEWAY_ROLE},
                        "rules": GATEWAY_RULES,
                    },
                    {
                        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                        "kind": "FlowSchema",
                        "metadata": {"name": FLOW},
                        "spec": {
                            "matchingPrecedence": 100,
                            "priorityLevelConfiguration": {"name": "workload-high"},
                            "rules": [
                                {
                                    "subjects": [
                                        {
                                            "kind": "ServiceAccount",
                                            "serviceAccount": {"name": SA, "namespace": BENCH_NS},
                                        }
                                    ],
                                    "resourceRules": [
                                        {
                                            "apiGroups": ["*"],
                                            "resources": ["*"],
                                            "verbs": ["*"],
                                            "namespaces": ["*"],
                                            "clusterScope": True,
                                        }
                                    ],
                                    "nonResourceRules": [
                                        {"nonResourceURLs": ["*"], "verbs": ["*"]}
                                    ],
                                }
                            ],
                        },
                    },
                ],
            }
        ),
    )
    token = kubectl("create", "token", SA, "-n", BENCH_NS, "--duration=24h").strip()
    admin = yaml.safe_load(KUBECONFIG.read_text())
    cluster = admin["clusters"][0]
    path = tmp / "operator.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": SA, "user": {"token": token}}],
                "contexts": [{"name": SA, "context": {"cluster": cluster["name"], "user": SA}}],
                "current-context": SA,
            }
        )
    )
    return path


def operator_requests() -> float:
    """Requests the API server dispatched for the operator's user so far."""
    text = kubectl("get", "--raw", "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_flowcontrol_dispatched_requests_total{") and (
            f'flow_schema="{FLOW}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ----------------------------------------------------------------------------- the operator


class Operator(OperatorProcess):
    """The operator from this checkout, with what the waits below read of its metrics."""

    def start(self) -> None:
        super().start()
        self.wait(lambda h: h is not None, 60, "operator up")

    def counters(self) -> dict[str, Any] | None:
        """Reconciles, queue and API requests by verb and kind, from its live metrics."""
        values = self.metrics()
        if values is None:
            return None
        requests: dict[str, float] = {}
        for name, value in values.items():
            if name.startswith("disagg_operator_api_requests_total"):
                verb = name.split('verb="')[1].split('"')[0]
                kind = name.split('kind="')[1].split('"')[0]
                requests[f"{verb} {kind}"] = value
        return {
            "reconciles": values.get("disagg_operator_reconciles_total", 0),
            "queued": values.get("disagg_operator_queue_depth", 0),
            "processing": values.get("disagg_operator_in_progress", 0),
            "requests": requests,
        }

    def wait(self, ok: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counters = self.counters()
            if ok(counters):
                return counters or {}
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------ measuring


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def converged(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("observedGeneration") == obj["metadata"].get("generation")


class Watcher:
    """Follows one list of objects with a watch (never by polling: a driver listing N
    objects several times a second would cost the API server more than the operator does)
    and records when ``ok`` first held for each object."""

    def __init__(self, list_fn: Any, ok: Any, **kwargs: Any) -> None:
        self.list_fn, self.ok, self.kwargs = list_fn, ok, kwargs
        self.seen: dict[str, float] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _record(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self._cond:
            self.latest[name] = obj
            if name not in self.seen and self.ok(obj):
                self.seen[name] = time.monotonic()
            self._cond.notify_all()

    def _run(self) -> None:
        version = None
        while not self._stop:
            try:
                if version is None:
                    response = self.list_fn(_preload_content=False, **self.kwargs)
                    listed = json.loads(response.data)
                    for obj in listed["items"]:
                        self._record(obj)
                    version = listed["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    self.list_fn,
                    resource_version=version,
                    timeout_seconds=60,
                    _preload_content=False,
                    **self.kwargs,
                )
                for event in stream:
                    if self._stop:
                        return
                    raw = event["raw_object"]
                    version = raw["metadata"].get("resourceVersion", version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(raw)
            except ApiException as exc:
                if exc.status == 410:  # too old: list again
                    version = None
                else:
                    time.sleep(0.5)

    def _wait_until(self, done: Any, timeout: float) -> bool:
        """Until ``done()`` holds (checked whenever an object changes), or the timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
        return True

    def wait(self, names: list[str], timeout: float) -> bool:
        """Until ``ok`` has held once for each of ``names``."""
        return self._wait_until(lambda: all(n in self.seen for n in names), timeout)

    def wait_all_ok(self, timeout: float) -> bool:
        """Until ``ok`` holds for the latest state of every object seen."""
        return self._wait_until(lambda: all(self.ok(obj) for obj in self.latest.values()), timeout)

    def forget(self, name: str) -> None:
        with self._cond:
            self.seen.pop(name, None)

    def stop(self) -> None:
        self._stop = True


def none_left(list_fn: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether a list is empty, asking for one item only."""
    result = list_fn(*args, limit=1, **kwargs)
    items = result["items"] if isinstance(result, dict) else result.items
    return not items


def wait_for_no_bench_namespaces(core: Any, timeout: float = 1200.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = [
            item.metadata.name
            for item in core.list_namespace().items
            if item.metadata.name.startswith("bench-")
        ]
        if not left:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"earlier runs' namespaces still terminating: {left}")
        log(f"waiting for {', '.join(left)} to be deleted")
        time.sleep(10)


def run_one(
    n: int, workers: int, kubeconfig: Path, logs: Path, rest_seconds: float
) -> dict[str, Any]:
    api = client.CustomObjectsApi()
    apps = client.AppsV1Api()
    core = client.CoreV1Api()
    # An earlier run's namespace (its DisaggDeployments and the floor's standalone pools)
    # must be gone first: a new operator would reconcile what is left of it.
    wait_for_no_bench_namespaces(core)
    ns = f"bench-{n}-{int(time.time()) % 100000}"
    core.create_namespace({"metadata": {"name": ns}})
    op = Operator(
        kubeconfig,
        logs / f"operator-{n}.log",
        ("--workers", str(workers), "--gateway-cluster-role", GATEWAY_ROLE),
    )
    op.start()
    result: dict[str, Any] = {
        "n": n,
        "workers": workers,
        "load_average_at_start": round(os.getloadavg()[0], 1),
    }
    watcher = Watcher(
        api.list_namespaced_custom_object,
        converged,
        group=GROUP,
        version=VERSION,
        namespace=ns,
        plural="disaggdeployments",
    )
    try:
        names = [f"dd-{i:04d}" for i in range(n)]
        created: dict[str, float] = {}
        requests_before, cpu_before = operator_requests(), op.cpu_seconds()
        started = time.monotonic()

        def create(name: str) -> None:
            api.create_namespaced_custom_object(
                GROUP, VERSION, ns, "disaggdeployments", a_disagg(name)
            )
            created[name] = time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(create, names))
        log(f"N={n}: created in {time.monotonic() - started:.1f} s")
        if not watcher.wait(names, 900):
            raise SystemExit(f"N={n}: only {len(watcher.seen)} converged")
        done = dict(watcher.seen)
        latencies = [done[k] - created[k] for k in names]
        settled = op.wait(
            lambda h: h and h.get("queued") == 0 and not h.get("processing"), 120, "queue empty"
        )
        requests_after = operator_requests()
        result["operator_requests_per_deployment"] = {
            verb: round(count / n, 2) for verb, count in sorted(settled["requests"].items())
        }
        result.update(
            reconciles_per_deployment=round(settled["reconciles"] / n, 2),
            converge_seconds=round(max(done.values()) - started, 2),
            per_object_p50_s=round(percentile(latencies, 0.5), 2),
            per_object_p99_s=round(percentile(latencies, 0.99), 2),
            requests_per_deployment=round((requests_after - requests_before) / n, 2),
            cpu_seconds_create=round(op.cpu_seconds() - cpu_before, 1),
        )
        per_dd = result["requests_per_deployment"]
        log(f"N={n}: converged {result['converge_seconds']} s, {per_dd} req/DD")

        at_rest_before = operator_requests()
        time.sleep(rest_seconds)  # the measurement window itself
        result["requests_per_second_at_rest"] = round(
            (operator_requests() - at_rest_before) / rest_seconds, 3
        )

        changes = []
        deployments = Watcher(
            apps.list_namespaced_deployment,
            lambda d: False,
            namespace=ns,
        )
        try:
            for i, name in enumerate(names[:: max(1, n // CHANGES)][:CHANGES]):
                marker = str(100 + i)
                child = f"{name}-decode"
                deployments.ok = lambda d, m=marker: (
                    m in (d["spec"]["template"]["spec"]["containers"][0].get("args") or [])
                )
                deployments.forget(child)
                t0 = time.monotonic()
                api.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    ns,
                    "disaggdeployments",
                    name,
                    {"spec": {"decode": {"extraArgs": ["--max-num-seqs", marker]}}},
                )
                if deployments.wait([child], 60):
                    changes.append(deployments.seen[child] - t0)
        finally:
            deployments.stop()
        result["spec_change_to_child_p50_s"] = round(percentile(changes, 0.5), 3)
        result["spec_change_to_child_p99_s"] = round(percentile(changes, 0.99), 3)
        result["rss_mib"], result["peak_rss_create_mib"] = (round(v, 1) for v in op.memory_mib())
        # Every change has reached its DisaggDeployment's status before the restart, so the
        # restart measures a resume of settled objects, not the tail of the changes.
        if not watcher.wait_all_ok(120):
            raise SystemExit(f"N={n}: the changed objects did not converge")
        op.wait(lambda h: h and h.get("queued") == 0 and not h.get("processing"), 60, "settled")

        op.stop()
        restart_requests = operator_requests()
        t0 = time.monotonic()
        op.start()
        health = op.wait(
            lambda h: (
                h
                and h.get("reconciles", 0) >= 3 * n
                and h.get("queued") == 0
                and not h.get("processing")
            ),
            300,
            "resume",
        )
        result["restart_resumed_seconds"] = round(time.monotonic() - t0, 2)
        writes = {k: v for k, v in health.get("requests", {}).items() if not k.startswith("event ")}
        result["restart_writes"] = sum(writes.values())
        result["restart_requests_per_deployment"] = round(
            (operator_requests() - restart_requests) / n, 2
        )

        t0 = time.monotonic()
        api.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, "disaggdeployments")
        managed = "app.kubernetes.io/managed-by=disagg-operator"
        while time.monotonic() - t0 < 300:
            if (
                none_left(apps.list_namespaced_deployment, ns)
                and none_left(core.list_namespaced_config_map, ns, label_selector=managed)
                and none_left(
                    api.list_namespaced_custom_object, GROUP, VERSION, ns, "inferencepools"
                )
            ):
                break
            time.sleep(1.0)
        result["delete_to_children_gone_seconds"] = round(time.monotonic() - t0, 2)
        op.wait(lambda h: h and h.get("queued") == 0, 60, "queue empty after delete")
        rss, peak = op.memory_mib()
        result["rss_after_delete_mib"] = round(rss, 1)
        # The restarted operator lists everything at once and then sees every object deleted:
        # its peak counts as much as the first one's.
        result["peak_rss_restart_mib"] = round(peak, 1)
        result["peak_rss_mib"] = max(result["peak_rss_create_mib"], result["peak_rss_restart_mib"])
        op.stop()  # the floor is measured without any operator
        log(json.dumps(result))
        result["floor_create_seconds"] = floor(ns, n)
    finally:
        watcher.stop()
        op.stop()
        with contextlib.suppress(ApiException):
            core.delete_namespace(ns)
    return result


def floor(ns: str, n: int) -> float:
    """The peer: the same children, created by this driver directly (no operator)."""
    from disagg.api.disaggdeployment import DisaggDeploymentSpec
    from disagg.api.inferencepool import InferencePoolSpec
    from disagg.render.disaggdeployment import render_disaggdeployment_children
    from disagg.render.pool import render_pool_children

    objects: list[dict[str, Any]] = []
    for i in range(n):
        name = f"floor-{i:04d}"
        spec = DisaggDeploymentSpec.model_validate(a_disagg(name)["spec"])
        for child in render_disaggdeployment_children(
            name, ns, spec, gateway_cluster_role=GATEWAY_ROLE
        ):
            objects.append(child)
            if child["kind"] == "InferencePool":
                pool = InferencePoolSpec.model_validate(child["spec"])
                objects += render_pool_children(
                    name=child["metadata"]["name"],
                    namespace=ns,
                    spec=pool,
                    replicas=0,
                    deployment=name,
                )
    from disagg.controller.kube import Kube

    kube = Kube.from_environment(str(KUBECONFIG))

    def create(obj: dict[str, Any]) -> None:
        obj["metadata"]["namespace"] = ns
        kube.create(obj)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, objects))
    return round(time.monotonic() - t0, 2)


BEGIN, END = "<!-- operator-scale:begin -->", "<!-- operator-scale:end -->"
TARGETS = {
    "load_average_at_start": ("machine load average at the start (2 cores)", ""),
    "converge_seconds": ("converged (s)", "< 60 at N=500"),
    "per_object_p50_s": ("per object p50 (s)", ""),
    "per_object_p99_s": ("per object p99 (s)", ""),
    "requests_per_deployment": ("API requests / DisaggDeployment", "<= 15"),
    "requests_per_second_at_rest": ("requests/s at rest", "< 1"),
    "spec_change_to_child_p50_s": ("spec change -> child p50 (s)", ""),
    "spec_change_to_child_p99_s": ("spec change -> child p99 (s)", "< 2"),
    "restart_resumed_seconds": ("restart -> all resumed (s)", "< 60"),
    "restart_writes": ("writes on restart", "0"),
    "delete_to_children_gone_seconds": ("delete -> children gone (s)", ""),
    "cpu_seconds_create": ("operator CPU s (create)", ""),
    "reconciles_per_deployment": ("reconciles / DisaggDeployment (from the cache)", ""),
    "peak_rss_mib": ("peak RSS of either operator process (MiB)", "< 286 (300 MB)"),
    "peak_rss_create_mib": ("peak RSS, create to spec changes (MiB)", ""),
    "peak_rss_restart_mib": ("peak RSS, restart to delete (MiB)", ""),
    "rss_after_delete_mib": ("RSS after delete (MiB)", ""),
    "floor_create_seconds": ("peer: the same objects created directly (s)", ""),
}


def report(results: list[dict[str, Any]], doc: Path, plot: Path) -> None:
    """The operator section of docs/benchmarks.md (between its markers) and its plot."""
    ns = [r["n"] for r in results]
    lines = [
        BEGIN,
        "## Operator at scale",
        "",
        "`python bench/operator_scale.py` on the local cluster (2 cores shared by the API",
        "server, etcd and the operator): N DisaggDeployments, pools and gateways at 0 replicas.",
        "Requests are the API server's own count for the operator's user (a FlowSchema).",
        "The peer is the floor: the same objects created directly by the driver, same",
        "concurrency, same run, no operator. On a machine shared with other work the absolute",
        "times move with its load (first row); the ratio to the floor is the operator's own cost.",
        "",
        "| | " + " | ".join(f"N={n}" for n in ns) + " | target |",
        "|---|" + "---|" * len(ns) + "---|",
    ]
    for key, (label, target) in TARGETS.items():
        values = " | ".join(str(r.get(key, "")) for r in results)
        lines.append(f"| {label} | {values} | {target} |")
    notes = [f"- N={r['n']}: {r['note']}" for r in results if r.get("note")]
    lines += ["", *notes, *([""] if notes else []), f"![operator at scale]({plot.name})", END]
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    section = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(ns, [r["converge_seconds"] for r in results], "o-", label="operator")
    left.plot(ns, [r["floor_create_seconds"] for r in results], "s--", label="floor (direct)")
    left.set_xlabel("DisaggDeployments")
    left.set_ylabel("seconds to converge")
    left.legend()
    right.plot(ns, [r["requests_per_deployment"] for r in results], "o-")
    right.axhline(15, color="grey", linestyle=":")
    right.set_xlabel("DisaggDeployments")
    right.set_ylabel("API requests per DisaggDeployment")
    fig.tight_layout()
    fig.savefig(plot, dpi=110)


def merge_runs(path: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs already in ``path`` with this invocation's replacing those of the same N, by N:
    ``--n 500`` after ``--n 100 300`` leaves one table of all three."""
    kept: dict[int, dict[str, Any]] = {}
    if path.exists():
        try:
            kept = {run["n"]: run for run in json.loads(path.read_text())["runs"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: not a results file of this benchmark ({exc})") from None
    kept.update({run["n"]: run for run in new})
    return [kept[n] for n in sorted(kept)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 300, 500])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rest-seconds", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks-operator.json")
    parser.add_argument(
        "--report", type=Path, help="only regenerate the docs from a results file (--out's)"
    )
    parser.add_argument(
        "--logs", type=Path, help="keep the operator's log of each run here (operator-N.log)"
    )
    args = parser.parse_args()
    if args.report:
        results = json.loads(args.report.read_text())["runs"]
        report(results, REPO / "docs" / "benchmarks.md", REPO / "docs" / "benchmarks-operator.png")
        return 0
    if not KUBECONFIG.exists():
        parser.error(f"no cluster: {KUBECONFIG} is missing (make cluster-up)")
    config.load_kube_config(str(KUBECONFIG))
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        identity = operator_identity(Path(tmp))
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for n in args.n:
            results.append(run_one(n, args.workers, identity, logs, args.rest_seconds))
            log(json.dumps(results[-1]))
            merged = merge_runs(args.out, results)  # written after each N: a crash keeps them
            args.out.write_text(json.dumps({"runs": merged}, indent=2) + "\n")
    report(merged, REPO / "docs" / "benchmarks.md", REPO / "docs" / "benchmarks-operator.png")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
