"""The gateway's children: routing ConfigMap, Deployment, Service, PodDisruptionBudget, RBAC.

The ConfigMap holds the gateway's configuration (``disagg.gateway.config``
schema, checked by a test so the two cannot drift) rendered from the
DisaggDeployment's ``gateway`` section.  Workers are discovered from the pools'
Pods (their labels carry the KV layout the gateway pairs by), so the gateway
gets a ServiceAccount allowed to read Pods and nothing else.  A hash of the
configuration is a pod-template annotation: a routing change rolls the gateway
pods, nothing else does.  The pod passes Pod Security "restricted".

Timing is rendered so that the pieces agree: the gateway's hand-off budget is a
third of the prefill workers' KV lease and its connect timeout at most another
third (so a decode leg starts well inside the lease or goes decode-only); the
pod's grace period covers the gateway's shutdown delay plus its drain.  Two
replicas by default, spread over nodes, with a PodDisruptionBudget, and a
rolling update that adds the new pod before removing an old one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from disagg.api.common import KVEventsSpec
from disagg.api.disaggdeployment import DisaggDeploymentSpec, Scorer
from disagg.api.scorers import needs_kv_events, plugin_name
from disagg.planner.models import MODELS, preset_for_model_name
from disagg.render import names
from disagg.render.capacity import decode_admission, prefill_admission
from disagg.render.metadata import object_meta
from disagg.render.vllm import engine_hash_seed, kv_hash_seed

CONFIG_DIR = "/etc/disagg-gateway"
CONFIG_FILE = "config.json"
API_KEY_DIR = f"{CONFIG_DIR}/api-key"
#: What the gateway may do: follow the pods of its namespace (worker discovery).
GATEWAY_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
]
TOKENIZER_DIR = "/var/lib/disagg-gateway/tokenizer"


def _tokenizer_mount(spec: DisaggDeploymentSpec) -> tuple[dict[str, Any], str] | None:
    """The gateway's tokenizer volume and the directory holding the files, if configured."""
    source = spec.gateway.routing.tokenizer
    if source is None:
        return None
    if source.config_map_name is not None:
        return {"name": "tokenizer", "configMap": {"name": source.config_map_name}}, TOKENIZER_DIR
    if source.claim_name is not None:
        claim, path = source.claim_name, source.path
    else:  # fromModelVolume: the model's own directory, as the workers load it
        assert spec.model.volume is not None  # CEL: fromModelVolume needs model.volume
        claim, path = spec.model.volume.claim_name, spec.model.name.strip("/")
    volume = {"name": "tokenizer", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    return volume, f"{TOKENIZER_DIR}/{path}".rstrip("/")


def _kv_events(spec: DisaggDeploymentSpec) -> dict[str, Any] | None:
    """The gateway's ``routing.kvEvents`` when a pool is routed with a KV-event scorer."""
    routing = spec.gateway.routing
    if not any(
        needs_kv_events([s.type for s in scorers if s.weight])
        for scorers in (routing.prefill_scorers, routing.decode_scorers)
    ):
        return None
    ports = KVEventsSpec()  # the pools publish on the API's default ports
    return {
        "port": ports.port,
        "replayPort": ports.replay_port,
        "dataParallelSize": {
            "prefill": spec.prefill.parallelism.data,
            "decode": spec.decode.parallelism.data,
        },
    }


#: Seconds a stopping gateway keeps serving before it closes its listener (endpoint removal
#: reaches load balancers and kube-proxy in that time).
SHUTDOWN_DELAY_SECONDS = 5


def _vocab_size(spec: DisaggDeploymentSpec) -> int | None:
    """The model's vocabulary size, when the planner knows the model (token ids are checked)."""
    preset = spec.model.architecture or preset_for_model_name(spec.model.name)
    model = MODELS.get(preset) if preset else None
    return model.vocab_size if model is not None and model.vocab_size > 0 else None


def render_gateway_config(
    name: str, namespace: str, spec: DisaggDeploymentSpec, owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The gateway configuration (the ConfigMap's ``config.json``)."""
    routing = spec.gateway.routing
    prefill, decode = names.pool_name(name, "prefill"), names.pool_name(name, "decode")
    lease = spec.kv_transfer.lease_seconds

    def scorers(items: list[Scorer]) -> list[dict[str, Any]]:
        return [{"type": plugin_name(s.type), "weight": s.weight} for s in items if s.weight]

    config: dict[str, Any] = {
        "pools": {"prefill": prefill, "decode": decode},
        "discovery": {
            "kubernetes": {
                "namespace": namespace,
                "prefillSelector": names.selector_string(names.pool_selector(prefill)),
                "decodeSelector": names.selector_string(names.pool_selector(decode)),
                "port": spec.engine.port,
                "portName": "http",
            }
        },
        "routing": {
            "prefill": {"scorers": scorers(routing.prefill_scorers)},
            "decode": {"scorers": scorers(routing.decode_scorers)},
            "blockSize": spec.engine.block_size,
        },
        "selective": {"minUncachedPromptTokens": routing.selective.min_uncached_prompt_tokens},
        "retries": {
            "prefillAttempts": 1 + routing.prefill_retries,
            "decodeLocalFallback": routing.fallback_to_local_prefill,
        },
        "timeouts": {
            "prefillSeconds": routing.request_timeout_seconds,
            "firstByteSeconds": routing.request_timeout_seconds,
            "connectSeconds": min(5.0, lease / 3),
        },
        "kvTransfer": {
            "leaseSeconds": lease,
            "handoffBudgetSeconds": lease / 3,
            "sideChannelPort": spec.kv_transfer.side_channel_port,
            "dataParallelSize": spec.prefill.parallelism.data,
        },
        "shutdown": {
            "delaySeconds": SHUTDOWN_DELAY_SECONDS,
            "timeoutSeconds": spec.gateway.drain.timeout_seconds,
        },
        "queue": {
            # prefill admits what its workers batch, so the backlog waits here (capacity.py)
            "prefill": {**prefill_admission(spec), "maxQueued": routing.max_queued_per_pool},
            "decode": {**decode_admission(spec), "maxQueued": routing.max_queued_per_pool},
            "gatewayReplicas": max(1, spec.gateway.replicas),
        },
    }
    vocab = _vocab_size(spec)
    if vocab is not None:
        config["model"] = {"vocabSize": vocab}
    if spec.gateway.api_key_secret_ref is not None:
        config["apiKeyFile"] = f"{API_KEY_DIR}/{spec.gateway.api_key_secret_ref.key}"
    events = _kv_events(spec)
    if events is not None:
        # the seed the workers' block hashes start from (see render.vllm.kv_hash_seed)
        events["hashSeed"] = engine_hash_seed(spec.engine) or kv_hash_seed(name, namespace, owner)
        config["routing"]["kvEvents"] = events
    tokenizer = _tokenizer_mount(spec)
    if tokenizer is not None:
        config["routing"]["tokenizerPath"] = tokenizer[1]
    return config


def render_gateway_children(
    name: str,
    namespace: str,
    spec: DisaggDeploymentSpec,
    owner: dict[str, Any] | None = None,
    *,
    cluster_role: str | None = None,
) -> list[dict[str, Any]]:
    """ConfigMap, ServiceAccount, Role, RoleBinding, Deployment, Service and PDB of the
    gateway.

    The gateway may only read pods in its own namespace.  That right comes from a Role of
    its own, or — with ``cluster_role``, the ClusterRole the chart installs with exactly
    :data:`GATEWAY_RULES` — from binding that ClusterRole in the namespace: the same right,
    one object fewer per DisaggDeployment for the API server to store and watch."""
    gw = spec.gateway
    gw_name = names.gateway_name(name)
    labels = names.gateway_labels(name)
    selector = names.gateway_selector(name)
    config = render_gateway_config(name, namespace, spec, owner)
    config_json = json.dumps(config, indent=2, sort_keys=True)
    config_hash = hashlib.sha256(config_json.encode()).hexdigest()[:16]

    def meta() -> dict[str, Any]:
        return object_meta(gw_name, namespace, labels, owner)

    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(),
        "data": {CONFIG_FILE: config_json},
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(),
        "automountServiceAccountToken": True,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(),
        "rules": GATEWAY_RULES,
    }
    role_ref = (
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role}
        if cluster_role
        else {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": gw_name}
    )
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(),
        "roleRef": role_ref,
        "subjects": [{"kind": "ServiceAccount", "name": gw_name, "namespace": namespace}],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": gw_name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    tokenizer = _tokenizer_mount(spec)
    if tokenizer is not None:
        volumes.append(tokenizer[0])
        mounts.append({"name": "tokenizer", "mountPath": TOKENIZER_DIR, "readOnly": True})
    if gw.api_key_secret_ref is not None:
        volumes.append(
            {
                "name": "api-key",
                "secret": {
                    "secretName": gw.api_key_secret_ref.name,
                    "items": [
                        {"key": gw.api_key_secret_ref.key, "path": gw.api_key_secret_ref.key}
                    ],
                },
            }
        )
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    container = {
        "name": "gateway",
        "image": gw.image,
        "command": ["disagg", "gateway"],
        "args": [
            "--config",
            f"{CONFIG_DIR}/{CONFIG_FILE}",
            "--host",
            "0.0.0.0",
            "--port",
            str(gw.port),
            *(["--workers", str(gw.workers)] if gw.workers > 1 else []),
        ],
        "ports": [{"name": "http", "containerPort": gw.port, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": gw.cpu, "memory": gw.memory},
            "limits": {"memory": gw.memory},
        },
        # /ready answers 503 until discovery knows a decode worker; /health only says "alive".
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(),
        "spec": {
            "replicas": gw.replicas,
            "selector": {"matchLabels": selector},
            # Cheap pods: add the new one before an old one leaves, so capacity never dips.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {
                        "disagg.dev/config-hash": config_hash,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(gw.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": gw_name,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": SHUTDOWN_DELAY_SECONDS
                    + gw.drain.timeout_seconds
                    + 10,
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": dict(selector)},
                        }
                    ],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(),
        "spec": {
            "type": gw.service_type,
            "selector": selector,
            "ports": [{"name": "http", "port": gw.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    rbac = [binding] if cluster_role else [role, binding]
    children: list[dict[str, Any]] = [configmap, account, *rbac, deployment, service]
    if gw.replicas >= 2:  # a budget of one pod with maxUnavailable 1 protects nothing
        children.append(pdb)
    return children
