"""Custom resources at the edge of admission: invalid ones with the field each must be
refused on, and valid edge cases that must get through.

Shared by the fast tier (tests/test_admission.py, cel-python) and the e2e tier
(e2e/test_admission.py, a real API server): each invalid case is a valid base object
with one thing broken, the path of the offending field, and a fragment of the message
a user must see.  ``ours`` says whether that message is one of our CEL rules' (the
same text in both tiers) or the API server's own wording of a schema bound or enum.
The cases are grouped by class; each class has more than one spelling of the mistake.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def pool(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": "bad-pool"},
        "spec": {"role": "prefill", "model": {"name": MODEL}},
    }
    base["spec"].update(spec)
    return base


def disagg(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggDeployment",
        "metadata": {"name": "bad-dd"},
        "spec": {"model": {"name": MODEL}},
    }
    base["spec"].update(spec)
    return base


@dataclass(frozen=True)
class Case:
    id: str
    obj: dict[str, Any]
    field: str
    """The path the API server reports (e.g. ``spec.role``)."""
    message: str
    """A fragment of the message."""
    ours: bool = True
    """The message is one of our CEL rules'; False: the API server's schema wording."""

    def object(self) -> dict[str, Any]:
        return copy.deepcopy(self.obj)


def schema(id: str, obj: dict[str, Any], field: str, message: str) -> Case:
    return Case(id, obj, field, message, ours=False)


def _named(obj: dict[str, Any], name: str) -> dict[str, Any]:
    obj["metadata"]["name"] = name
    return obj


RDMA = {"enabled": True, "resourceName": "rdma/ib"}
NOT_EXTENDED = "must be an extended resource name"
NOT_A_WORD = "must not be blank, contain whitespace or control characters"
HIDES = "must not hide a directory the worker needs"
NOT_ABSOLUTE = "must be an absolute path"
RENDERED_FLAG = "must not set a flag the operator renders"
AT_LEAST_64MI = "must be at least 64Mi"
ABOVE_0 = "must be above 0"


def _metric(name: str, target: float, **pool_spec: Any) -> dict[str, Any]:
    return pool(
        autoscaling={"enabled": True, "metrics": [{"name": name, "target": target}]}, **pool_spec
    )


def _env(*env: dict[str, Any], **pool_spec: Any) -> dict[str, Any]:
    engine = {"env": list(env), **pool_spec.pop("engine", {})}
    return pool(engine=engine, **pool_spec)


def _args(*args: str) -> dict[str, Any]:
    return pool(extraArgs=list(args))


INVALID: list[Case] = [
    # -- the basics: enums, required fields, bounds (the API server's own words) --------
    schema("unknown-role", pool(role="router"), "spec.role", "Unsupported value"),
    schema(
        "unknown-connector",
        pool(kvTransfer={"connector": "P2pNcclConnector"}),
        "spec.kvTransfer.connector",
        "Unsupported value",
    ),
    schema("missing-model", {**pool(), "spec": {"role": "decode"}}, "spec.model", "Required"),
    schema("empty-model-name", pool(model={"name": ""}), "spec.model.name", "at least 1"),
    schema("negative-replicas", pool(replicas=-1), "spec.replicas", "greater than or equal to 0"),
    schema(
        "zero-tensor-parallel",
        pool(parallelism={"tensor": 0}),
        "spec.parallelism.tensor",
        "greater than or equal to 1",
    ),
    schema(
        "zero-gpus",
        pool(resources={"gpus": 0}),
        "spec.resources.gpus",
        "greater than or equal to 1",
    ),
    schema(
        "unsupported-block-size",
        pool(engine={"blockSize": 24}),
        "spec.engine.blockSize",
        "Unsupported value",
    ),
    schema(
        "bad-shared-memory-quantity",
        pool(resources={"sharedMemory": "lots"}),
        "spec.resources.sharedMemory",
        "should match",
    ),
    schema(
        "selective-threshold-negative",
        disagg(gateway={"routing": {"selective": {"minUncachedPromptTokens": -1}}}),
        "spec.gateway.routing.selective.minUncachedPromptTokens",
        "greater than or equal to 0",
    ),
    schema(
        "unknown-scorer",
        disagg(gateway={"routing": {"prefillScorers": [{"type": "random"}]}}),
        "spec.gateway.routing.prefillScorers[0].type",
        "Unsupported value",
    ),
    schema(
        "decode-rdma-unknown-transport",
        disagg(rdma={**RDMA, "transport": "infiniband"}),
        "spec.rdma.transport",
        "Unsupported value",
    ),
    schema(
        "autoscaling-max-beyond-bound",
        pool(autoscaling={"enabled": True, "maxReplicas": 100000}),
        "spec.autoscaling.maxReplicas",
        "less than or equal to 1000",
    ),
    schema(
        "request-timeout-zero",
        disagg(gateway={"routing": {"requestTimeoutSeconds": 0}}),
        "spec.gateway.routing.requestTimeoutSeconds",
        "greater than or equal to 1",
    ),
    schema(
        "ratio-max-absurd",
        disagg(scaling={"prefillToDecodeRatio": {"max": 1e9}}),
        "spec.scaling.prefillToDecodeRatio.max",
        "less than or equal to 1000",
    ),
    schema(
        "extra-args-too-many",
        pool(extraArgs=["--enable-prefix-caching"] * 65),
        "spec.extraArgs",
        "must have at most 64 items",
    ),
    schema("model-name-too-long", pool(model={"name": "m" * 600}), "spec.model.name", "Too long"),
    schema(
        "max-model-len-beyond-int32",
        pool(engine={"maxModelLen": 2**31}),
        "spec.engine.maxModelLen",
        "less than or equal to 2147483647",
    ),
    # -- cross-field rules that predate this list ----------------------------------------
    Case(
        "slo-without-an-objective",
        disagg(slo={"promptTokens": 2000}),
        "spec.slo",
        "slo needs ttftP99Ms or itlP99Ms",
    ),
    schema(
        "slo-unknown-gpu",
        disagg(slo={"ttftP99Ms": 500, "gpu": "tpu"}),
        "spec.slo.gpu",
        "Unsupported value",
    ),
    Case(
        "autoscaling-min-above-max",
        pool(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas",
        "must not exceed autoscaling.maxReplicas",
    ),
    Case(
        "replicas-above-max",
        pool(replicas=9, autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 4}),
        "spec.replicas",
        "within autoscaling.minReplicas..autoscaling.maxReplicas",
    ),
    Case(
        "replicas-below-min",
        pool(replicas=1, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 4}),
        "spec.replicas",
        "within autoscaling.minReplicas..autoscaling.maxReplicas",
    ),
    Case(
        "rdma-without-resource-name",
        pool(rdma={"enabled": True}),
        "spec.rdma.resourceName",
        "rdma.resourceName is required",
    ),
    Case(
        "gpus-not-matching-parallelism",
        pool(parallelism={"tensor": 4}, resources={"gpus": 2}),
        "spec.resources.gpus",
        "must equal parallelism.tensor",
    ),
    Case(
        "prefill-pool-without-connector",
        pool(kvTransfer={"connector": "None"}),
        "spec.kvTransfer.connector",
        "must name a KV connector",
    ),
    Case(
        "disagg-without-connector",
        disagg(kvTransfer={"connector": "None"}),
        "spec.kvTransfer.connector",
        "must name a KV connector",
    ),
    Case(
        "gpu-budget-below-minimum",
        disagg(
            prefill={"replicas": 2, "parallelism": {"tensor": 4}},
            decode={"replicas": 2, "parallelism": {"tensor": 4}},
            scaling={"gpuBudget": 8},
        ),
        "spec.scaling.gpuBudget",
        "smaller than the GPUs",
    ),
    Case(
        "gpu-budget-below-autoscaling-minimum-without-replicas",
        disagg(
            prefill={"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 6}},
            scaling={"gpuBudget": 3},
        ),
        "spec.scaling.gpuBudget",
        "smaller than the GPUs",
    ),
    Case(
        "ratio-min-above-max",
        disagg(scaling={"prefillToDecodeRatio": {"min": 3, "max": 1}}),
        "spec.scaling.prefillToDecodeRatio.min",
        "must not exceed its max",
    ),
    # -- quantities: negative, zero, or a bare number of bytes ---------------------------
    Case(
        "memory-negative",
        pool(resources={"memory": "-1Gi"}),
        "spec.resources.memory",
        AT_LEAST_64MI,
    ),
    Case("memory-zero", pool(resources={"memory": 0}), "spec.resources.memory", AT_LEAST_64MI),
    Case(
        "memory-bare-number-is-bytes",
        pool(resources={"memory": 128}),
        "spec.resources.memory",
        AT_LEAST_64MI,
    ),
    Case("cpu-negative", pool(resources={"cpu": "-2"}), "spec.resources.cpu", ABOVE_0),
    Case("cpu-zero-milli", pool(resources={"cpu": "0m"}), "spec.resources.cpu", ABOVE_0),
    Case(
        "shared-memory-negative",
        pool(resources={"sharedMemory": "-16Gi"}),
        "spec.resources.sharedMemory",
        AT_LEAST_64MI,
    ),
    Case(
        "shared-memory-tiny",
        pool(resources={"sharedMemory": "1Mi"}),
        "spec.resources.sharedMemory",
        AT_LEAST_64MI,
    ),
    Case(
        "gateway-memory-negative",
        disagg(gateway={"memory": "-512Mi"}),
        "spec.gateway.memory",
        AT_LEAST_64MI,
    ),
    Case("gateway-cpu-zero", disagg(gateway={"cpu": 0}), "spec.gateway.cpu", ABOVE_0),
    Case(
        "prefill-memory-exponent-bytes",
        disagg(prefill={"resources": {"memory": "1e3"}}),
        "spec.prefill.resources.memory",
        AT_LEAST_64MI,
    ),
    Case(
        "decode-shared-memory-milli-bytes",
        disagg(decode={"resources": {"sharedMemory": "500m"}}),
        "spec.decode.resources.sharedMemory",
        AT_LEAST_64MI,
    ),
    # -- resource names that are not extended resource names ------------------------------
    Case(
        "gpu-resource-name-without-domain",
        pool(resources={"gpuResourceName": "gpu"}),
        "spec.resources.gpuResourceName",
        NOT_EXTENDED,
    ),
    Case(
        "gpu-resource-name-with-space",
        pool(resources={"gpuResourceName": "nvidia.com/ gpu"}),
        "spec.resources.gpuResourceName",
        NOT_EXTENDED,
    ),
    Case(
        "gpu-resource-name-native-memory",
        pool(resources={"gpuResourceName": "memory"}),
        "spec.resources.gpuResourceName",
        NOT_EXTENDED,
    ),
    Case(
        "gpu-resource-name-kubernetes-io",
        pool(resources={"gpuResourceName": "kubernetes.io/gpu"}),
        "spec.resources.gpuResourceName",
        "must not be in the kubernetes.io domain",
    ),
    Case(
        "rdma-resource-name-with-space",
        pool(rdma={"enabled": True, "resourceName": "rdma ib"}),
        "spec.rdma.resourceName",
        NOT_EXTENDED,
    ),
    Case(
        "rdma-resource-name-requests-prefix",
        pool(rdma={"enabled": True, "resourceName": "requests.rdma/ib"}),
        "spec.rdma.resourceName",
        "start with 'requests.'",
    ),
    Case(
        "rdma-resource-name-is-the-gpu",
        pool(rdma={"enabled": True, "resourceName": "nvidia.com/gpu"}),
        "spec.rdma.resourceName",
        "must differ from resources.gpuResourceName",
    ),
    Case(
        "disagg-rdma-resource-name-is-decode-gpu",
        disagg(rdma=RDMA, decode={"resources": {"gpuResourceName": "rdma/ib"}}),
        "spec.rdma.resourceName",
        "must differ from resources.gpuResourceName",
    ),
    # -- blank, whitespace and flag-shaped names -----------------------------------------
    Case("model-name-blank", pool(model={"name": "   "}), "spec.model.name", NOT_A_WORD),
    Case(
        "model-name-is-a-flag",
        pool(model={"name": "--trust-remote-code"}),
        "spec.model.name",
        NOT_A_WORD,
    ),
    Case(
        "model-name-trailing-newline",
        pool(model={"name": MODEL + "\n"}),
        "spec.model.name",
        NOT_A_WORD,
    ),
    Case(
        "model-name-parent-segment",
        pool(model={"name": "../../etc/passwd", "volume": {"claimName": "weights"}}),
        "spec.model.name",
        "must not contain '.' or '..' path segments",
    ),
    Case(
        "served-name-with-space",
        pool(model={"name": MODEL, "servedName": "my model"}),
        "spec.model.servedName",
        NOT_A_WORD,
    ),
    Case(
        "served-name-tab",
        disagg(model={"name": MODEL, "servedName": "\tllama"}),
        "spec.model.servedName",
        NOT_A_WORD,
    ),
    Case(
        "revision-blank",
        pool(model={"name": MODEL, "revision": " "}),
        "spec.model.revision",
        NOT_A_WORD,
    ),
    Case(
        "engine-image-with-space",
        disagg(engine={"image": "vllm/vllm-openai: v0.33.0"}),
        "spec.engine.image",
        NOT_A_WORD,
    ),
    Case("gateway-image-blank", disagg(gateway={"image": " "}), "spec.gateway.image", NOT_A_WORD),
    # -- autoscaling targets that render to nothing --------------------------------------
    Case(
        "kv-cache-usage-target-percent",
        _metric("kvCacheUsage", 80),
        "spec.autoscaling.metrics[0].target",
        "at most 1",
    ),
    Case(
        "kv-cache-usage-target-above-one",
        disagg(
            decode={
                "autoscaling": {
                    "enabled": True,
                    "metrics": [{"name": "kvCacheUsage", "target": 1.5}],
                }
            }
        ),
        "spec.decode.autoscaling.metrics[0].target",
        "at most 1",
    ),
    Case(
        "kv-cache-usage-target-rounds-to-zero",
        _metric("kvCacheUsage", 0.0004),
        "spec.autoscaling.metrics[0].target",
        "must be at least 0.001",
    ),
    Case(
        "waiting-target-rounds-to-zero",
        _metric("waitingRequests", 0.0001),
        "spec.autoscaling.metrics[0].target",
        "must be at least 0.001",
    ),
    Case(
        "metric-listed-twice",
        pool(
            autoscaling={
                "enabled": True,
                "metrics": [
                    {"name": "waitingRequests", "target": 2},
                    {"name": "waitingRequests", "target": 8},
                ],
            }
        ),
        "spec.autoscaling.metrics",
        "each metric may appear once",
    ),
    # -- scorer weights ------------------------------------------------------------------
    Case(
        "prefill-scorers-all-zero",
        disagg(
            gateway={
                "routing": {
                    "prefillScorers": [
                        {"type": "prefixAffinity", "weight": 0},
                        {"type": "leastLoaded", "weight": 0},
                    ]
                }
            }
        ),
        "spec.gateway.routing.prefillScorers",
        "at least one scorer with a weight above 0",
    ),
    Case(
        "decode-scorers-empty",
        disagg(gateway={"routing": {"decodeScorers": []}}),
        "spec.gateway.routing.decodeScorers",
        "at least one scorer with a weight above 0",
    ),
    Case(
        "decode-scorer-zero",
        disagg(gateway={"routing": {"decodeScorers": [{"type": "kvCacheUsage", "weight": 0}]}}),
        "spec.gateway.routing.decodeScorers",
        "at least one scorer with a weight above 0",
    ),
    Case(
        "scorer-listed-twice",
        disagg(
            gateway={
                "routing": {
                    "prefillScorers": [
                        {"type": "leastLoaded", "weight": 1},
                        {"type": "leastLoaded", "weight": 2},
                    ]
                }
            }
        ),
        "spec.gateway.routing.prefillScorers",
        "each scorer type once",
    ),
    # -- model volume mount paths ----------------------------------------------------------
    *(
        Case(
            f"model-volume-on-{label}",
            pool(model={"name": "llama", "volume": {"claimName": "weights", "mountPath": path}}),
            "spec.model.volume.mountPath",
            message,
        )
        for label, path, message in (
            ("dev-shm", "/dev/shm", HIDES),
            ("under-dev-shm", "/dev/shm/models", HIDES),
            ("etc", "/etc", HIDES),
            ("proc", "/proc/self", HIDES),
            ("service-account-token", "/var/run/secrets/kubernetes.io/serviceaccount", HIDES),
            ("root", "/", NOT_ABSOLUTE),
            ("relative", "models", NOT_ABSOLUTE),
            ("parent-segment", "/models/../dev/shm", NOT_ABSOLUTE),
            ("trailing-slash", "/models/", NOT_ABSOLUTE),
            ("double-slash", "/models//llama", NOT_ABSOLUTE),
        )
    ),
    # -- parallelism NIXL cannot pair (vLLM 0.33) -------------------------------------------
    Case(
        "nixl-decode-pipeline",
        disagg(decode={"parallelism": {"pipeline": 2}}),
        "spec.decode.parallelism.pipeline",
        "must be 1 with NixlConnector",
    ),
    Case(
        "nixl-decode-pool-pipeline",
        pool(role="decode", parallelism={"pipeline": 4}),
        "spec.parallelism.pipeline",
        "must be 1 with NixlConnector",
    ),
    Case(
        "nixl-tp-not-multiples-4-6",
        disagg(prefill={"parallelism": {"tensor": 4}}, decode={"parallelism": {"tensor": 6}}),
        "spec.decode.parallelism.tensor",
        "must be multiples of one another",
    ),
    Case(
        "nixl-tp-not-multiples-3-2",
        disagg(prefill={"parallelism": {"tensor": 3}}, decode={"parallelism": {"tensor": 2}}),
        "spec.decode.parallelism.tensor",
        "must be multiples of one another",
    ),
    Case(
        "parallelism-beyond-one-node",
        pool(parallelism={"tensor": 8, "pipeline": 8, "data": 2}),
        "spec.parallelism",
        "at most 64",
    ),
    # -- object names ----------------------------------------------------------------------
    Case(
        "pool-name-not-dns-label",
        _named(pool(), "prefill.pool"),
        "metadata.name",
        "DNS-1035 label",
    ),
    Case("pool-name-starts-with-digit", _named(pool(), "8b-pool"), "metadata.name", "DNS-1035"),
    Case(
        "disagg-name-too-long", _named(disagg(), "a" * 60), "metadata.name", "at most 52 characters"
    ),
    Case("disagg-name-with-dot", _named(disagg(), "llama.8b"), "metadata.name", "DNS-1035"),
    # -- ports -----------------------------------------------------------------------------
    Case(
        "side-channel-port-equals-http-port",
        pool(engine={"port": 5600}),
        "spec.kvTransfer.sideChannelPort",
        "must lie outside the KV side-channel ports",
    ),
    Case(
        "http-port-on-a-data-parallel-side-channel",
        pool(engine={"port": 5602}, parallelism={"data": 4}),
        "spec.kvTransfer.sideChannelPort",
        "must lie outside the KV side-channel ports",
    ),
    Case(
        "disagg-http-port-on-decode-data-parallel-side-channel",
        disagg(engine={"port": 5601}, decode={"parallelism": {"data": 2}}),
        "spec.kvTransfer.sideChannelPort",
        "must lie outside the KV side-channel ports",
    ),
    Case(
        "side-channel-ports-past-65535",
        pool(kvTransfer={"sideChannelPort": 65534}, parallelism={"data": 4}),
        "spec.kvTransfer.sideChannelPort",
        "must not exceed 65535",
    ),
    # -- extraArgs that override what the operator renders ---------------------------------
    *(
        Case(f"extra-args-{label}", _args(*args), "spec.extraArgs", RENDERED_FLAG)
        for label, args in (
            ("port", ("--port", "9000")),
            ("port-equals", ("--port=9000",)),
            ("port-abbreviated", ("--por", "9000")),
            ("host", ("--host=127.0.0.1",)),
            ("tensor-parallel-underscores", ("--tensor_parallel_size", "2")),
            ("tensor-parallel-prefix", ("--tensor-par", "2")),
            ("tp-short", ("-tp", "2")),
            ("t-short", ("-t", "2")),
            ("served-model-name", ("--served-model-name", "other")),
            ("block-size", ("--block-size=32",)),
            ("model", ("--model", "other/model")),
            ("api-key", ("--api-key", "secret")),
            ("uds", ("--uds", "/tmp/vllm.sock")),
        )
    ),
    Case(
        "engine-extra-args-data-parallel",
        disagg(engine={"extraArgs": ["--enable-prefix-caching", "--data-parallel-size", "2"]}),
        "spec.engine.extraArgs",
        RENDERED_FLAG,
    ),
    Case(
        "decode-extra-args-pipeline-short",
        disagg(decode={"extraArgs": ["-pp=2"]}),
        "spec.decode.extraArgs",
        RENDERED_FLAG,
    ),
    Case(
        "engine-extra-args-kv-transfer-config",
        pool(engine={"extraArgs": ["--kv-transfer-config", '{"kv_connector":"NixlConnector"}']}),
        "spec.engine.extraArgs",
        "must not set --kv-transfer-config",
    ),
    Case(
        "prefill-extra-args-kv-transfer-dotted",
        disagg(prefill={"extraArgs": ["--kv_transfer_config.kv_role=kv_both"]}),
        "spec.prefill.extraArgs",
        "must not set --kv-transfer-config",
    ),
    # -- env names the operator sets ---------------------------------------------------------
    Case(
        "env-nixl-side-channel-host",
        _env({"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "value": "localhost"}),
        "spec.engine.env",
        "must not set VLLM_NIXL_SIDE_CHANNEL_HOST",
    ),
    Case(
        "env-keep-alive",
        _env({"name": "VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "value": "2"}),
        "spec.engine.env",
        "VLLM_HTTP_TIMEOUT_KEEP_ALIVE",
    ),
    Case(
        "env-api-key",
        _env({"name": "VLLM_API_KEY", "value": "x"}),
        "spec.engine.env",
        "VLLM_API_KEY",
    ),
    Case(
        "env-named-twice",
        _env({"name": "FOO", "value": "1"}, {"name": "FOO", "value": "2"}),
        "spec.engine.env",
        "must not name a variable twice",
    ),
    Case(
        "env-hf-token-with-token-secret-ref",
        _env(
            {"name": "HF_TOKEN", "value": "hf_x"},
            model={"name": MODEL, "tokenSecretRef": {"name": "hf", "key": "token"}},
        ),
        "spec.engine.env",
        "must not set HF_TOKEN when model.tokenSecretRef",
    ),
    Case(
        "env-ucx-tls-with-rdma",
        _env({"name": "UCX_TLS", "value": "tcp"}, rdma=RDMA),
        "spec.engine.env",
        "must not set the UCX_*/NCCL_* variables rdma renders",
    ),
    Case(
        "disagg-env-nccl-hca-with-rdma-hcas",
        disagg(
            rdma={**RDMA, "hcas": ["mlx5_0:1"]},
            engine={"env": [{"name": "NCCL_IB_HCA", "value": "mlx5_1"}]},
        ),
        "spec.engine.env",
        "must not set the UCX_*/NCCL_* variables rdma renders",
    ),
    Case(
        "env-value-and-value-from",
        _env({"name": "TOKEN", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s"}}}),
        "spec.engine.env[0].valueFrom",
        "either value or valueFrom",
    ),
    Case(
        "env-value-from-two-sources",
        _env(
            {
                "name": "X",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "status.podIP"},
                    "configMapKeyRef": {"name": "c", "key": "k"},
                },
            }
        ),
        "spec.engine.env[0].valueFrom",
        "must hold exactly one of",
    ),
    # -- Secret, claim and class names ----------------------------------------------------
    Case(
        "token-secret-key-dot-dot",
        pool(model={"name": MODEL, "tokenSecretRef": {"name": "hf", "key": "..data"}}),
        "spec.model.tokenSecretRef.key",
        "must be a Secret key",
    ),
    Case(
        "api-key-secret-key-with-slash",
        disagg(gateway={"apiKeySecretRef": {"name": "gw", "key": "../key"}}),
        "spec.gateway.apiKeySecretRef.key",
        "must be a Secret key",
    ),
    Case(
        "api-key-secret-name-upper-case",
        disagg(gateway={"apiKeySecretRef": {"name": "MySecret", "key": "key"}}),
        "spec.gateway.apiKeySecretRef.name",
        "must be a DNS-1123 subdomain",
    ),
    Case(
        "claim-name-underscore",
        pool(model={"name": "llama", "volume": {"claimName": "my_pvc"}}),
        "spec.model.volume.claimName",
        "must be a DNS-1123 subdomain",
    ),
    Case(
        "priority-class-with-space",
        pool(placement={"priorityClassName": "high priority"}),
        "spec.placement.priorityClassName",
        "must be a DNS-1123 subdomain",
    ),
    # -- placement and RDMA lists joined into one string ---------------------------------
    Case(
        "node-selector-key-with-space",
        pool(placement={"nodeSelector": {"gpu type": "h100"}}),
        "spec.placement.nodeSelector",
        "must be label keys",
    ),
    Case(
        "node-selector-value-with-space",
        pool(placement={"nodeSelector": {"nvidia.com/gpu.product": "H100 SXM"}}),
        "spec.placement.nodeSelector",
        "must be label keys",
    ),
    Case(
        "multus-network-comma-smuggles-another",
        pool(rdma={**RDMA, "networks": ["rdma/ib-net,kube-system/host"]}),
        "spec.rdma.networks[0]",
        "must be a network attachment",
    ),
    Case(
        "hca-comma-smuggles-another",
        pool(rdma={**RDMA, "hcas": ["mlx5_0:1,mlx5_1:1"]}),
        "spec.rdma.hcas[0]",
        "must be an HCA device",
    ),
    Case(
        "vllm-version-below-supported-range",
        pool(engine={"vllmVersion": "0.25.2"}),
        "spec.engine.vllmVersion",
        "0.26.0 to 0.33.x",
    ),
    Case(
        "vllm-version-above-supported-range",
        disagg(engine={"vllmVersion": "0.34.0"}),
        "spec.engine.vllmVersion",
        "0.26.0 to 0.33.x",
    ),
    Case(
        "vllm-version-not-a-release",
        pool(engine={"vllmVersion": "latest"}),
        "spec.engine.vllmVersion",
        "0.26.0 to 0.33.x",
    ),
    Case(
        "vllm-image-tag-outside-supported-range",
        disagg(engine={"image": "vllm/vllm-openai:v0.20.1"}),
        "spec.engine.image",
        "outside 0.26.0 to 0.33.x",
    ),
    # -- the KV lease and the drains that must cover it ----------------------------------
    Case(
        "prefill-drain-shorter-than-kv-lease",
        disagg(kvTransfer={"leaseSeconds": 60}, prefill={"drain": {"timeoutSeconds": 30}}),
        "spec.prefill.drain.timeoutSeconds",
        "at least kvTransfer.leaseSeconds",
    ),
    Case(
        "prefill-pool-drain-shorter-than-kv-lease",
        pool(drain={"timeoutSeconds": 5}),
        "spec.drain.timeoutSeconds",
        "at least kvTransfer.leaseSeconds",
    ),
]


@dataclass(frozen=True)
class Edge:
    """A valid object at an edge of the rules: admission must take it as it is."""

    id: str
    obj: dict[str, Any]
    why: str

    def object(self) -> dict[str, Any]:
        return copy.deepcopy(self.obj)


AUTOSCALED = {"enabled": True, "minReplicas": 2, "maxReplicas": 8}

VALID: list[Edge] = [
    Edge(
        "pool-autoscaling-min-2-without-replicas",
        pool(autoscaling=AUTOSCALED),
        "replicas is omitted: it starts at minReplicas, no default of 1 contradicts it",
    ),
    Edge(
        "disagg-autoscaling-min-2-without-replicas",
        disagg(prefill={"autoscaling": AUTOSCALED}, decode={"autoscaling": AUTOSCALED}),
        "the same for both sections of a DisaggDeployment",
    ),
    Edge(
        "aggregated-pool-without-connector-on-5600",
        pool(role="aggregated", kvTransfer={"connector": "None"}, engine={"port": 5600}),
        "no connector, no side channel: the HTTP port may be 5600",
    ),
    Edge(
        "nixl-prefill-tp-above-decode",
        disagg(prefill={"parallelism": {"tensor": 8}}, decode={"parallelism": {"tensor": 4}}),
        "vLLM 0.33's NIXL reads KV from a larger prefill TP in whole multiples",
    ),
    Edge(
        "nixl-prefill-pipelined",
        disagg(prefill={"parallelism": {"pipeline": 2}}, decode={"parallelism": {"tensor": 2}}),
        "the NIXL producer may be pipelined; only decode may not",
    ),
    Edge(
        "smallest-quantities",
        pool(resources={"cpu": "1m", "memory": "64Mi", "sharedMemory": 67108864}),
        "the floors themselves, one as a plain number of bytes",
    ),
    Edge(
        "amd-gpus-roce-rdma",
        pool(
            resources={"gpuResourceName": "amd.com/gpu"},
            rdma={
                "enabled": True,
                "resourceName": "rdma/roce_gdr",
                "transport": "roce",
                "gidIndex": 3,
                "networks": ["gpu-net/roce-a@net1", "roce-b"],
                "hcas": ["mlx5_0:1", "mlx5_1"],
            },
        ),
        "other vendors' resource names, namespaced networks with an interface, HCA ports",
    ),
    Edge(
        "extra-args-near-rendered-flags",
        pool(
            extraArgs=[
                "--max-num-seqs",
                "64",
                "--data-parallel-size-local",
                "1",
                "--model-impl",
                "vllm",
                "--kv-events-config",
                '{"enable_kv_cache_events":true}',
                "--enable-prefix-caching",
            ]
        ),
        "flags that start like rendered ones but are not their prefixes",
    ),
    Edge(
        "aggregated-pool-own-kv-transfer-config",
        pool(
            role="aggregated",
            kvTransfer={"connector": "None"},
            engine={
                "extraArgs": ["--kv-transfer-config", '{"kv_connector":"OffloadingConnector"}']
            },
        ),
        "without a rendered connector, the user's own --kv-transfer-config is theirs to pass",
    ),
    Edge(
        "env-near-reserved-names",
        pool(
            engine={
                "env": [
                    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}},
                    {"name": "UCX_TLS", "value": "tcp"},
                    {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"},
                    {
                        "name": "POD_IP",
                        "value": "",
                        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                    },
                ]
            }
        ),
        "HF_TOKEN without tokenSecretRef, UCX_TLS without rdma, an empty value beside valueFrom",
    ),
    Edge(
        "targets-at-their-bounds",
        pool(
            autoscaling={
                "enabled": True,
                "metrics": [
                    {"name": "kvCacheUsage", "target": 1},
                    {"name": "waitingRequests", "target": 0.001},
                ],
            }
        ),
        "a kvCacheUsage target of exactly 1, a queue target of exactly 0.001",
    ),
    Edge(
        "one-zero-weight-scorer",
        disagg(
            gateway={
                "routing": {
                    "prefillScorers": [
                        {"type": "prefixAffinity", "weight": 0},
                        {"type": "leastLoaded", "weight": 0.5},
                    ]
                }
            }
        ),
        "a zero weight switches one scorer off while another still counts",
    ),
    Edge(
        "model-volume-own-directories",
        pool(
            model={
                "name": "llama-3.1-8b",
                "volume": {"claimName": "weights.v1", "mountPath": "/opt/models/..v1"},
                "tokenSecretRef": {"name": "hf.token", "key": ".token"},
            }
        ),
        "a directory under /opt, a '..'-prefixed name, dotted claim and Secret names and keys",
    ),
    Edge(
        "data-parallel-clear-of-http-port",
        disagg(engine={"port": 5604}, decode={"parallelism": {"data": 4}}),
        "decode's four side-channel ports are 5600-5603; 5604 is free",
    ),
    Edge(
        "name-of-52-characters",
        _named(disagg(), "a" + "b" * 50 + "c"),
        "the longest DisaggDeployment name",
    ),
    Edge(
        "node-selector-and-priority",
        pool(
            placement={
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": ""},
                "priorityClassName": "gpu.high",
            }
        ),
        "prefixed label keys, an empty label value, a dotted PriorityClass",
    ),
    Edge(
        "vllm-version-explicit-over-an-older-image-tag",
        pool(engine={"image": "vllm/vllm-openai:v0.20.1", "vllmVersion": "0.26.0"}),
        "the spec names the release the image really runs: the tag is not read then",
    ),
    Edge(
        "vllm-image-tag-in-range-or-no-release-in-the-tag",
        disagg(engine={"image": "registry.local:5000/vllm/vllm-openai:v0.26.0-cu130"}),
        "a supported release in a vLLM image's tag (a suffix after it is fine)",
    ),
]
