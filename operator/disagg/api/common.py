"""Building blocks shared by InferencePool and DisaggDeployment.

Each block is one concern a platform engineer configures on its own: the model,
the engine (vLLM), parallelism, resources, KV transfer, RDMA, autoscaling and
placement.  Defaults are what a first deployment of Llama-3.1-8B with NIXL on a
GPU node should get; anything an upstream Kubernetes type already describes
(tolerations, affinity, HPA behavior) is passed through verbatim rather than
re-declared, and validated when the rendered object is.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from disagg.api.base import ApiModel, DNSLabel, FreeForm, Quantity, cel, validations
from disagg.api.versions import DEFAULT_VLLM_IMAGE

Role = Literal["prefill", "decode", "aggregated"]
Connector = Literal["NixlConnector", "MooncakeConnector", "LMCacheConnectorV1", "None"]
Transport = Literal["ib", "roce", "efa", "tcp"]
AutoscalingEngine = Literal["hpa", "keda"]
ScalingMetricName = Literal[
    "gatewayQueueDepth", "waitingRequests", "runningRequests", "kvCacheUsage"
]


class SecretKeyRef(ApiModel):
    """A key of a Secret in the object's namespace."""

    name: DNSLabel
    """Name of the Secret."""
    key: str = Field(min_length=1)
    """Key inside the Secret."""


class ModelVolume(ApiModel):
    """Weights on a PersistentVolumeClaim instead of a download from a model hub."""

    claim_name: DNSLabel
    """The PersistentVolumeClaim holding the weights (mounted read-only)."""
    mount_path: str = Field(default="/models", pattern=r"^/.*")
    """Where the claim is mounted in the worker; ``model.name`` is then a path under it."""


class ModelSpec(ApiModel):
    """The model every worker serves."""

    name: str = Field(min_length=1, max_length=512)
    """Hugging Face repository id (``meta-llama/Llama-3.1-8B-Instruct``) or a path in the worker."""
    served_name: str | None = Field(default=None, min_length=1, max_length=256)
    """The model name clients send (``--served-model-name``); defaults to ``name``."""
    revision: str | None = Field(default=None, min_length=1, max_length=128)
    """A branch, tag or commit of the Hugging Face repository (``--revision``)."""
    architecture: str | None = Field(default=None, min_length=1, max_length=128)
    """Planner preset for KV arithmetic in status (``llama-3.1-8b``, ``llama-3.1-70b``, ...);
    guessed from ``name`` when omitted."""
    volume: ModelVolume | None = None
    """Read the weights from a PersistentVolumeClaim."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret key holding a Hugging Face token, exposed to vLLM as ``HF_TOKEN``."""


class EnvVar(ApiModel):
    """An environment variable: a literal value or a ``valueFrom`` source (core/v1 EnvVarSource)."""

    name: str = Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name."""
    value: str | None = None
    """Literal value."""
    value_from: FreeForm | None = None
    """A core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef)."""


class EngineSpec(ApiModel):
    """The vLLM engine: image, entrypoint and the flags that matter for P/D."""

    image: str = Field(default=DEFAULT_VLLM_IMAGE, min_length=1)
    """Worker image: vLLM's OpenAI server, or the disagg simulator (it takes the same flags)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy; Kubernetes' default when omitted."""
    entrypoint: Literal["serve", "apiServer"] = "serve"
    """``serve`` runs ``vllm serve <model>``; ``apiServer`` runs
    ``python3 -m vllm.entrypoints.openai.api_server --model <model>`` (older images)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port of the OpenAI server (``--port``)."""
    block_size: Literal[1, 8, 16, 32, 64, 128] = 16
    """KV-cache block size in tokens (``--block-size``); the gateway hashes prefixes by it."""
    max_model_len: int | None = Field(default=None, ge=1)
    """Maximum context length (``--max-model-len``); the model's own when omitted."""
    max_num_seqs: int | None = Field(default=None, ge=1)
    """Maximum concurrent sequences per engine (``--max-num-seqs``)."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """Fraction of GPU memory vLLM may use (``--gpu-memory-utilization``)."""
    extra_args: list[str] = Field(default_factory=list)
    """More vLLM flags, appended verbatim after the rendered ones."""
    env: list[EnvVar] = Field(default_factory=list)
    """More environment variables for the worker container."""


class ParallelismSpec(ApiModel):
    """How one replica spreads over GPUs; their product is the GPU count per replica."""

    tensor: int = Field(default=1, ge=1, le=64)
    """Tensor-parallel size (``--tensor-parallel-size``)."""
    pipeline: int = Field(default=1, ge=1, le=64)
    """Pipeline-parallel size (``--pipeline-parallel-size``)."""
    data: int = Field(default=1, ge=1, le=64)
    """Data-parallel engines inside one pod (``--data-parallel-size``)."""

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline * self.data


class ResourcesSpec(ApiModel):
    """Compute resources of one worker replica."""

    gpu_resource_name: str = Field(default="nvidia.com/gpu", min_length=1)
    """Extended resource name of the GPUs (``nvidia.com/gpu``, ``amd.com/gpu``)."""
    gpus: int | None = Field(default=None, ge=1)
    """GPUs per replica. Derived from parallelism when omitted; when set it must equal
    tensor x pipeline x data."""
    cpu: Quantity | None = None
    """CPU request and limit, e.g. ``16``."""
    memory: Quantity | None = None
    """Memory request and limit, e.g. ``128Gi``."""
    shared_memory: Quantity = "16Gi"
    """Size of the memory-backed ``/dev/shm`` (NCCL and RDMA need far more than Docker's 64Mi)."""


class KVTransferSpec(ApiModel):
    """vLLM's KV connector between prefill and decode (``--kv-transfer-config``)."""

    connector: Connector = "NixlConnector"
    """``NixlConnector`` (the main path), ``MooncakeConnector``, ``LMCacheConnectorV1``, or
    ``None`` for a plain aggregated pool."""
    side_channel_port: int = Field(default=5600, ge=1, le=65535)
    """NIXL handshake port (``VLLM_NIXL_SIDE_CHANNEL_PORT``), exposed as a named container port."""
    buffer_device: Literal["cuda", "cpu"] = "cuda"
    """Where KV buffers live (``kv_buffer_device``)."""
    load_failure_policy: Literal["fail", "recompute"] | None = None
    """What a decode worker does when it cannot load remote KV (``kv_load_failure_policy``)."""
    extra_config: FreeForm | None = None
    """Passed as ``kv_connector_extra_config`` (e.g. ``{"backends": ["UCX"]}``)."""


class RDMASpec(ApiModel):
    """RDMA for KV transfer; without it NIXL falls back to TCP and TTFT gets 10-40x worse."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!self.enabled || (has(self.resourceName) && self.resourceName != '')",
                "rdma.resourceName is required when rdma.enabled is true (e.g. rdma/ib)",
                ".resourceName",
            ),
        )
    )

    enabled: bool = False
    """Request RDMA devices and configure UCX for them."""
    resource_name: str | None = Field(default=None, max_length=253)
    """Device-plugin resource, e.g. ``rdma/ib`` or ``rdma/roce_gdr``."""
    count: int = Field(default=1, ge=1, le=64)
    """RDMA devices per replica."""
    transport: Transport = "ib"
    """Fabric: ``ib`` (InfiniBand), ``roce`` (RoCE v2), ``efa`` (AWS), ``tcp`` (no RDMA verbs)."""
    networks: list[str] = Field(default_factory=list)
    """Multus secondary networks (``k8s.v1.cni.cncf.io/networks``), ``[namespace/]name``."""
    gid_index: int | None = Field(default=None, ge=0, le=255)
    """RoCE GID index (``UCX_IB_GID_INDEX``/``NCCL_IB_GID_INDEX``), often 3 for RoCE v2."""
    hcas: list[str] = Field(default_factory=list)
    """HCA ports for UCX/NCCL (``mlx5_0:1``); all devices when empty."""
    link_gbps: float = Field(default=200.0, gt=0)
    """Per-replica KV link speed in Gb/s, used for the transfer-time estimate in status."""


class ScalingMetric(ApiModel):
    """One metric the autoscaler follows, with its per-replica target."""

    name: ScalingMetricName
    """``gatewayQueueDepth`` (External, from the gateway), ``waitingRequests`` /
    ``runningRequests`` (Pods, vLLM's ``num_requests_*``), ``kvCacheUsage`` (Pods, 0..1)."""
    target: float = Field(gt=0)
    """Target average per replica (a fraction for ``kvCacheUsage``)."""


class AutoscalingSpec(ApiModel):
    """Autoscaling of one pool through its ``/scale`` subresource."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
                ".minReplicas",
            ),
        )
    )

    enabled: bool = False
    """Create an autoscaler for the pool."""
    engine: AutoscalingEngine = "hpa"
    """``hpa`` renders an autoscaling/v2 HorizontalPodAutoscaler; ``keda`` a KEDA ScaledObject."""
    min_replicas: int = Field(default=1, ge=1)
    """Lower bound."""
    max_replicas: int = Field(default=4, ge=1)
    """Upper bound."""
    metrics: list[ScalingMetric] = Field(default_factory=list, max_length=8)
    """Metrics and targets; role defaults when empty (prefill: gatewayQueueDepth and
    waitingRequests, the larger wins; decode: waitingRequests and kvCacheUsage)."""
    behavior: FreeForm | None = None
    """An autoscaling/v2 HorizontalPodAutoscalerBehavior (stabilization windows, policies)."""


class PlacementSpec(ApiModel):
    """Where worker pods may run."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods require."""
    tolerations: list[FreeForm] = Field(default_factory=list)
    """core/v1 Tolerations (GPU nodes are usually tainted)."""
    affinity: FreeForm | None = None
    """A core/v1 Affinity."""
    topology_spread_constraints: list[FreeForm] = Field(default_factory=list)
    """core/v1 TopologySpreadConstraints."""
    priority_class_name: str | None = None
    """PriorityClass of the pods."""


class DrainSpec(ApiModel):
    """How a worker leaves: stop taking requests, let running streams finish, then exit."""

    timeout_seconds: int = Field(default=300, ge=0, le=86400)
    """Longest wait for in-flight requests in preStop; the grace period adds 30 s to it."""


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None
