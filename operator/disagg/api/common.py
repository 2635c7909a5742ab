"""Building blocks shared by InferencePool and DisaggDeployment.

Each block is one concern a platform engineer configures on its own: parallelism,
resources, KV transfer, RDMA, autoscaling and placement (the model and the engine are in
``disagg.api.engine``).  Defaults are what a first deployment of Llama-3.1-8B with NIXL on a
GPU node should get; anything an upstream Kubernetes type already describes
(tolerations, affinity, HPA behavior) is passed through verbatim rather than
re-declared, and validated when the rendered object is.

Everything else the operator would have to refuse later is refused at admission:
strings vLLM reads as one token, quantities that cannot work, targets that round to
nothing.  Every list and string is bounded, so the API server can price the CEL rules.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from disagg.api.base import ApiModel, FreeForm, cel, validations

# Re-exported: these moved to disagg.api.engine.
from disagg.api.engine import EngineSpec as EngineSpec
from disagg.api.engine import EnvVar as EnvVar
from disagg.api.engine import EnvVarSource as EnvVarSource
from disagg.api.engine import ModelSpec as ModelSpec
from disagg.api.engine import ModelVolume as ModelVolume
from disagg.api.engine import SecretKeyRef as SecretKeyRef
from disagg.api.formats import INT32_MAX as INT32_MAX
from disagg.api.formats import (
    LABEL_VALUE,
    QUALIFIED_NAME,
    ContainerMemory,
    CPURequest,
    DNSSubdomain,
    ExtendedResourceName,
    HCAPort,
    MultusNetwork,
    SharedMemorySize,
    cel_string,
)

Role = Literal["prefill", "decode", "aggregated"]
Connector = Literal["NixlConnector", "MooncakeConnector", "LMCacheConnectorV1", "None"]
Transport = Literal["ib", "roce", "efa", "tcp"]
AutoscalingEngine = Literal["hpa", "keda"]
ScalingMetricName = Literal[
    "gatewayQueueDepth", "busyWorkers", "waitingRequests", "runningRequests", "kvCacheUsage"
]


class ParallelismSpec(ApiModel):
    """How one replica spreads over GPUs; their product is the GPU count per replica."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.tensor * self.pipeline * self.data <= 64",
                "tensor x pipeline x data must be at most 64: one replica is one pod on one node",
            ),
        )
    )

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

    gpu_resource_name: ExtendedResourceName = "nvidia.com/gpu"
    """Extended resource name of the GPUs (``nvidia.com/gpu``, ``amd.com/gpu``)."""
    gpus: int | None = Field(default=None, ge=1, le=64)
    """GPUs per replica. Derived from parallelism when omitted; when set it must equal
    tensor x pipeline x data."""
    cpu: CPURequest | None = None
    """CPU request, e.g. ``16``; above 0 (omit it to request none)."""
    memory: ContainerMemory | None = None
    """Memory request and limit, e.g. ``128Gi``; at least ``64Mi`` (a bare number is bytes)."""
    shared_memory: SharedMemorySize = "16Gi"
    """Size of the memory-backed ``/dev/shm`` (NCCL and RDMA need far more than Docker's 64Mi);
    at least ``64Mi``."""


class KVTransferSpec(ApiModel):
    """vLLM's KV connector between prefill and decode (``--kv-transfer-config``)."""

    connector: Connector = "NixlConnector"
    """``NixlConnector`` (the main path), ``MooncakeConnector``, ``LMCacheConnectorV1``, or
    ``None`` for a plain aggregated pool."""
    side_channel_port: int = Field(default=5600, ge=1, le=65535)
    """NIXL handshake port (``VLLM_NIXL_SIDE_CHANNEL_PORT``), exposed as a named container port."""
    buffer_device: Literal["cuda", "cpu"] = "cuda"
    """Where KV buffers live (``kv_buffer_device``)."""
    load_failure_policy: Literal["fail", "recompute"] = "recompute"
    """What a decode worker does when it cannot load the prefilled KV (``kv_load_failure_policy``,
    always rendered): ``recompute`` prefills locally; ``fail`` (vLLM's own default) fails the
    request -- a streamed answer then ends silently empty, which the gateway retries with a local
    prefill."""
    lease_seconds: int = Field(default=30, ge=1, le=3600)
    """How long a prefill worker keeps a finished prompt's KV blocks for the decode worker's read
    (NIXL's ``kv_connector_extra_config.kv_lease_duration``, vLLM's default 30); a decode worker
    holding the request extends it.  The gateway starts every decode leg within a third of it
    (or serves the request decode-only), and a leaving prefill worker waits up to it.  It
    replaces a ``kv_lease_duration`` in ``extraConfig``, so the three always agree."""
    extra_config: FreeForm | None = None
    """Passed as ``kv_connector_extra_config`` (e.g. ``{"backends": ["UCX"]}``)."""


class KVEventsSpec(ApiModel):
    """vLLM's KV-cache events (``--kv-events-config``): what a precise prefix router follows.

    A DisaggDeployment turns them on for each pool its gateway routes with ``precisePrefix``."""

    enabled: bool = False
    """Publish prefix-cache events (ZMQ PUB, bound on every pod address)."""
    port: int = Field(default=5557, ge=1, le=65535)
    """Publisher port (container port ``kv-events``); data-parallel rank r uses port + r."""
    replay_port: int = Field(default=5558, ge=1, le=65535)
    """Replay port (container port ``kv-replay``): subscribers fetch messages they missed."""
    hash_seed: str | None = Field(default=None, pattern=r"^[0-9]{1,9}$")
    """``PYTHONHASHSEED`` for the workers: vLLM seeds its block hashes with it (before 0.33 only
    with it: unset, they are random per engine), so a router can compute the same hashes.  A
    DisaggDeployment sets one derived from its uid; ``engine.env`` may set its own instead."""


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
    resource_name: ExtendedResourceName | None = None
    """Device-plugin resource, e.g. ``rdma/ib`` or ``rdma/roce_gdr``."""
    count: int = Field(default=1, ge=1, le=64)
    """RDMA devices per replica."""
    transport: Transport = "ib"
    """Fabric: ``ib`` (InfiniBand), ``roce`` (RoCE v2), ``efa`` (AWS), ``tcp`` (no RDMA verbs)."""
    networks: list[MultusNetwork] = Field(default_factory=list, max_length=16)
    """Multus secondary networks (``k8s.v1.cni.cncf.io/networks``),
    ``[namespace/]name[@interface]``."""
    gid_index: int | None = Field(default=None, ge=0, le=255)
    """RoCE GID index (``UCX_IB_GID_INDEX``/``NCCL_IB_GID_INDEX``), often 3 for RoCE v2."""
    hcas: list[HCAPort] = Field(default_factory=list, max_length=64)
    """HCA ports for UCX/NCCL (``mlx5_0:1``); all devices when empty."""
    link_gbps: float = Field(default=200.0, gt=0, le=100000)
    """Per-replica KV link speed in Gb/s, used for the transfer-time estimate in status."""


class ScalingMetric(ApiModel):
    """One metric the autoscaler follows, with its per-replica target."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.target >= 0.001",
                "target must be at least 0.001: the HPA target is a quantity in milli-units, "
                "and a smaller one rounds to 0",
                ".target",
            ),
            cel(
                "self.name != 'kvCacheUsage' || self.target <= 1.0",
                "a kvCacheUsage target is a fraction of the KV cache: at most 1 (0.8 is 80%)",
                ".target",
            ),
        )
    )

    name: ScalingMetricName
    """``gatewayQueueDepth`` and ``busyWorkers`` (External, from the gateway: requests waiting
    for the pool, and admitted work in workers), ``waitingRequests`` / ``runningRequests``
    (Pods, vLLM's ``num_requests_*``), ``kvCacheUsage`` (Pods, 0..1)."""
    target: float = Field(gt=0, le=1000000)
    """Target average per replica: at least 0.001 (the HPA's precision); a fraction in (0, 1]
    for ``kvCacheUsage``."""


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
    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Lower bound; also the pool's starting replicas when ``replicas`` is omitted."""
    max_replicas: int = Field(default=4, ge=1, le=1000)
    """Upper bound."""
    metrics: list[ScalingMetric] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra=validations(
            cel(
                "self.all(m, self.exists_one(n, n.name == m.name))",
                "each metric may appear once (the autoscaler follows the largest answer)",
            )
        ),
    )
    """Metrics and targets; when empty, derived from the DisaggDeployment's ``slo`` if it has
    one, else the role defaults (prefill: gatewayQueueDepth 4, busyWorkers 1, waitingRequests
    2; decode: waitingRequests 2, kvCacheUsage 0.8).  The largest answer wins."""
    behavior: FreeForm | None = None
    """An autoscaling/v2 HorizontalPodAutoscalerBehavior (stabilization windows, policies).  A
    direction left out (``scaleUp``, ``scaleDown``) keeps the role's default: scale up at once
    by at most 2 prefill / 1 decode worker a minute; scale down after 5 min (prefill) / 10 min
    (decode) of lower desire, one worker a minute (decode: every 2 min)."""


class PlacementSpec(ApiModel):
    """Where worker pods may run."""

    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        max_length=32,
        json_schema_extra=validations(
            cel(
                f"self.all(k, k.matches({cel_string(QUALIFIED_NAME)}) && "
                f"self[k].matches({cel_string(LABEL_VALUE)}))",
                "keys must be label keys ([prefix/]name) and values label values (at most 63 "
                "letters, digits, '-', '_' or '.')",
            )
        ),
    )
    """Node labels the pods require."""
    tolerations: list[FreeForm] = Field(default_factory=list, max_length=32)
    """core/v1 Tolerations (GPU nodes are usually tainted)."""
    affinity: FreeForm | None = None
    """A core/v1 Affinity."""
    topology_spread_constraints: list[FreeForm] = Field(default_factory=list, max_length=16)
    """core/v1 TopologySpreadConstraints."""
    priority_class_name: DNSSubdomain | None = None
    """PriorityClass of the pods."""


class DrainSpec(ApiModel):
    """How a pod leaves: stop taking requests, let running streams finish, then exit."""

    timeout_seconds: int = Field(default=300, ge=0, le=86400)
    """Longest wait for in-flight work when a pod leaves (a worker's preStop: running requests
    and, on a prefill worker, KV blocks still held for a decode worker; the gateway: in-flight
    requests); the pod's grace period adds a margin to it."""


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None
