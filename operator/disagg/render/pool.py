"""A pool's children: Deployment, headless Service, PodDisruptionBudget, autoscaler.

The worker pod is shaped for vLLM on GPU nodes: GPUs from parallelism, a
memory-backed ``/dev/shm``, the NIXL side channel on the pod IP as a named port,
probes that respect a model load of many minutes, a preStop hook that waits
for in-flight requests and a prefill worker's held KV blocks (bounded by
``drain.timeoutSeconds``) so scale-down neither cuts streams nor strands a
hand-off, and the KV-layout labels the gateway pairs workers by (``kvlayout``).
The rollout never surges: GPU nodes rarely have room for an extra worker, and a
surge pod stuck Pending would stall the rollout.
"""

from __future__ import annotations

from typing import Any

from disagg.api.inferencepool import InferencePoolSpec, PoolSection
from disagg.render import names
from disagg.render.autoscaling import render_hpa, render_scaled_object
from disagg.render.kvlayout import kv_layout_labels
from disagg.render.metadata import object_meta
from disagg.render.overlay import merge
from disagg.render.rdma import rdma_annotations, rdma_capabilities, rdma_env, rdma_resources
from disagg.render.vllm import vllm_args, vllm_command, vllm_env

WORKER_CONTAINER = "vllm"
HTTP_PORT_NAME = "http"
SIDE_CHANNEL_PORT_NAME = "kv-side-channel"
KV_EVENTS_PORT_NAME = "kv-events"
KV_REPLAY_PORT_NAME = "kv-replay"
DEFAULT_PROMETHEUS_URL = "http://prometheus.monitoring.svc:9090"

#: preStop: wait until vLLM reports no running or waiting request -- and, on a prefill worker,
#: no KV blocks in use: finished prompts' blocks held for a decode worker's read count in
#: ``vllm:kv_cache_usage_perc`` until they are read or their lease expires -- at most the drain
#: timeout.  The gateway stops sending to the pod as soon as it is terminating, so this only
#: waits for work already handed to it.  Only the standard library: it runs in the vLLM image.
_DRAIN_SCRIPT = """\
import sys, time, urllib.request
port, limit = sys.argv[1], time.monotonic() + float(sys.argv[2])
held_counts = sys.argv[3] == "1"
busy_names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
while time.monotonic() < limit:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        break
    busy = held = 0.0
    for line in text.decode().splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in busy_names:
            busy += float(line.rsplit(" ", 1)[1])
        elif name == "vllm:kv_cache_usage_perc" and held_counts:
            held = max(held, float(line.rsplit(" ", 1)[1]))
    if busy == 0 and held == 0:
        break
    time.sleep(1)
"""


def requested_replicas(section: PoolSection) -> int:
    """The workers a pool asks for: ``replicas``, else the autoscaling minimum (else 1)."""
    replicas = getattr(section, "replicas", None)
    if replicas is not None:
        return int(replicas)
    return section.autoscaling.min_replicas if section.autoscaling.enabled else 1


def may_run_several(section: PoolSection) -> bool:
    """Whether the pool can ever have two workers: only then can a disruption budget protect
    anything (``maxUnavailable: 1`` of one worker allows evicting it)."""
    if section.autoscaling.enabled:
        return section.autoscaling.max_replicas >= 2
    return requested_replicas(section) >= 2


def _worker_container(spec: InferencePoolSpec) -> dict[str, Any]:
    gpus = spec.gpus_per_replica
    limits: dict[str, Any] = {spec.resources.gpu_resource_name: gpus, **rdma_resources(spec.rdma)}
    if spec.resources.memory is not None:
        limits["memory"] = spec.resources.memory
    requests: dict[str, Any] = dict(limits)
    if spec.resources.cpu is not None:
        requests["cpu"] = spec.resources.cpu
    ports = [{"name": HTTP_PORT_NAME, "containerPort": spec.engine.port, "protocol": "TCP"}]
    if spec.kv_transfer.connector != "None":
        ports.append(
            {
                "name": SIDE_CHANNEL_PORT_NAME,
                "containerPort": spec.kv_transfer.side_channel_port,
                "protocol": "TCP",
            }
        )
    if spec.kv_events.enabled:
        for name, port in (
            (KV_EVENTS_PORT_NAME, spec.kv_events.port),
            (KV_REPLAY_PORT_NAME, spec.kv_events.replay_port),
        ):
            ports.append({"name": name, "containerPort": port, "protocol": "TCP"})
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if spec.model.volume is not None:
        mounts.append(
            {"name": "model", "mountPath": spec.model.volume.mount_path, "readOnly": True}
        )
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if rdma_capabilities(spec.rdma):
        capabilities["add"] = rdma_capabilities(spec.rdma)
    http = {"port": HTTP_PORT_NAME}
    return {
        "name": WORKER_CONTAINER,
        "image": spec.engine.image,
        **(
            {"imagePullPolicy": spec.engine.image_pull_policy}
            if spec.engine.image_pull_policy
            else {}
        ),
        "command": vllm_command(spec.engine, spec.model),
        "args": vllm_args(
            model=spec.model,
            engine=spec.engine,
            parallelism=spec.parallelism,
            kv=spec.kv_transfer,
            role=spec.role,
            extra_args=spec.extra_args,
            kv_events=spec.kv_events,
        ),
        "env": vllm_env(
            model=spec.model, engine=spec.engine, kv=spec.kv_transfer, kv_events=spec.kv_events
        )
        + rdma_env(spec.rdma),
        "ports": ports,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        # Loading weights can take many minutes: startup allows 30, then liveness takes over.
        "startupProbe": {
            "httpGet": {"path": "/health", **http},
            "periodSeconds": 10,
            "failureThreshold": 180,
        },
        "readinessProbe": {
            "httpGet": {"path": "/v1/models", **http},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health", **http},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {
            "preStop": {
                "exec": {
                    "command": [
                        "python3",
                        "-c",
                        _DRAIN_SCRIPT,
                        str(spec.engine.port),
                        str(spec.drain.timeout_seconds),
                        "1" if spec.role == "prefill" else "0",
                    ]
                }
            }
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": capabilities,
        },
    }


def render_pod_template(spec: InferencePoolSpec, labels: dict[str, str]) -> dict[str, Any]:
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.engine.port),
        "prometheus.io/path": "/metrics",
        **rdma_annotations(spec.rdma),
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shared_memory},
        }
    ]
    if spec.model.volume is not None:
        volumes.append(
            {
                "name": "model",
                "persistentVolumeClaim": {
                    "claimName": spec.model.volume.claim_name,
                    "readOnly": True,
                },
            }
        )
    pod: dict[str, Any] = {
        # VLLM_PORT and friends from service links collide with vLLM's own variables.
        "enableServiceLinks": False,
        # vLLM never talks to the Kubernetes API: no credentials in the worker.
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": spec.drain.timeout_seconds + 30,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_worker_container(spec)],
        "volumes": volumes,
    }
    placement = spec.placement
    if placement.node_selector:
        pod["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod["tolerations"] = list(placement.tolerations)
    if placement.affinity:
        pod["affinity"] = placement.affinity
    if placement.topology_spread_constraints:
        pod["topologySpreadConstraints"] = list(placement.topology_spread_constraints)
    if placement.priority_class_name:
        pod["priorityClassName"] = placement.priority_class_name
    template = {"metadata": {"labels": dict(labels), "annotations": annotations}, "spec": pod}
    if spec.pod_template:
        template = merge(template, spec.pod_template)
        template["metadata"]["labels"].update(labels)  # the selector must keep matching
    return template


def render_pool_children(
    *,
    name: str,
    namespace: str,
    spec: InferencePoolSpec,
    replicas: int,
    deployment: str | None = None,
    owner: dict[str, Any] | None = None,
    prometheus_url: str = DEFAULT_PROMETHEUS_URL,
) -> list[dict[str, Any]]:
    """Every object an InferencePool owns, given the replicas the operator settled on."""
    labels = names.pool_labels(name, spec.role, deployment)
    selector = names.pool_selector(name)
    deployment_obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(name, namespace, labels, owner),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": render_pod_template(spec, {**labels, **kv_layout_labels(spec)}),
        },
    }
    service_ports = [
        {"name": HTTP_PORT_NAME, "port": spec.engine.port, "targetPort": HTTP_PORT_NAME}
    ]
    if spec.kv_transfer.connector != "None":
        service_ports.append(
            {
                "name": SIDE_CHANNEL_PORT_NAME,
                "port": spec.kv_transfer.side_channel_port,
                "targetPort": SIDE_CHANNEL_PORT_NAME,
            }
        )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name, namespace, labels, owner),
        "spec": {"clusterIP": "None", "selector": selector, "ports": service_ports},
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(name, namespace, labels, owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    children = [deployment_obj, service]
    if may_run_several(spec):
        children.append(pdb)
    if spec.autoscaling.enabled:
        if spec.autoscaling.engine == "keda":
            scaler = render_scaled_object(
                pool=name,
                namespace=namespace,
                role=spec.role,
                spec=spec.autoscaling,
                labels=labels,
                prometheus_url=prometheus_url,
                owner=owner,
            )
        else:
            scaler = render_hpa(
                pool=name,
                namespace=namespace,
                role=spec.role,
                spec=spec.autoscaling,
                labels=labels,
                owner=owner,
            )
        children.append(scaler)
    return children
