"""InferencePool: one pool of identical vLLM workers with one role.

A pool is usable on its own (a plain, autoscaled vLLM deployment) or as a child
of a DisaggDeployment.  Its ``/scale`` subresource is what an HPA (or KEDA)
targets: the autoscaler writes ``spec.replicas``, the operator carries it to the
Deployment.  The kind shares its name with the Gateway API Inference
Extension's ``inferencepools.inference.networking.k8s.io``; ours is
``inferencepools.disagg.dev`` with the short names ``dipool``/``dip``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from disagg.api.base import ApiModel, FreeForm, cel, validations
from disagg.api.common import (
    AutoscalingSpec,
    Condition,
    DrainSpec,
    EngineSpec,
    KVEventsSpec,
    KVTransferSpec,
    ModelSpec,
    ParallelismSpec,
    PlacementSpec,
    RDMASpec,
    ResourcesSpec,
    Role,
)
from disagg.api.overrides import ExtraArgs, spec_override_rules

#: Rules every pool-shaped object carries (a standalone pool and a DisaggDeployment's sections).
POOL_SECTION_RULES = (
    cel(
        "!has(self.resources.gpus) || self.resources.gpus == "
        "self.parallelism.tensor * self.parallelism.pipeline * self.parallelism.data",
        "resources.gpus must equal parallelism.tensor x parallelism.pipeline x parallelism.data "
        "(or be omitted to derive it)",
        ".resources.gpus",
    ),
    cel(
        "!has(self.replicas) || !self.autoscaling.enabled || "
        "(self.replicas >= self.autoscaling.minReplicas && "
        "self.replicas <= self.autoscaling.maxReplicas)",
        "replicas must lie within autoscaling.minReplicas..autoscaling.maxReplicas (omit it to "
        "start at minReplicas)",
        ".replicas",
    ),
)


def side_channel_rules(data_parallel: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    """The HTTP port against the KV side channel: NIXL listens on ``sideChannelPort`` plus
    the data-parallel rank (vLLM 0.33, ``VLLM_NIXL_SIDE_CHANNEL_PORT + data_parallel_index``),
    so a pod with ``data`` ranks takes that many ports; other connectors take one.  Without
    a connector there is no side channel and nothing to clash."""
    ports = "(self.kvTransfer.connector == 'NixlConnector' ? {} : 1)"
    clear = " && ".join(
        f"self.engine.port >= self.kvTransfer.sideChannelPort + {ports.format(d)}"
        for d in data_parallel
    )
    fits = " && ".join(
        f"self.kvTransfer.sideChannelPort + {ports.format(d)} - 1 <= 65535" for d in data_parallel
    )
    return (
        cel(
            "self.kvTransfer.connector == 'None' || "
            f"self.engine.port < self.kvTransfer.sideChannelPort || ({clear})",
            "engine.port must lie outside the KV side-channel ports: kvTransfer.sideChannelPort, "
            "and with NixlConnector one more port per data-parallel rank (parallelism.data)",
            ".kvTransfer.sideChannelPort",
        ),
        cel(
            f"self.kvTransfer.connector == 'None' || ({fits})",
            "kvTransfer.sideChannelPort + parallelism.data - 1 must not exceed 65535 (one NIXL "
            "side-channel port per data-parallel rank)",
            ".kvTransfer.sideChannelPort",
        ),
    )


def rdma_resource_rule(gpu_resource_names: tuple[str, ...]) -> dict[str, str]:
    """RDMA devices and GPUs are two resources: one name for both would count one twice."""
    distinct = " && ".join(f"self.rdma.resourceName != {g}" for g in gpu_resource_names)
    return cel(
        f"!self.rdma.enabled || !has(self.rdma.resourceName) || ({distinct})",
        "rdma.resourceName must differ from resources.gpuResourceName (a pod would request "
        "one resource for both GPUs and RDMA devices)",
        ".rdma.resourceName",
    )


#: NIXL in vLLM 0.33 refuses pipeline parallelism on the consumer (decode) side:
#: ``NotImplementedError`` in ``NixlBaseConnectorWorker.__init__`` for ``kv_consumer``.
#: Prefill may be pipelined: decode then reads every stage's layers.
NIXL_DECODE_PIPELINE_MESSAGE = (
    "decode parallelism.pipeline must be 1 with NixlConnector: vLLM's NIXL consumer does not "
    "support pipeline parallelism (prefill may use it)"
)


def _no_schema_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class PoolSection(ApiModel):
    """What differs between the prefill and decode sides: size, shape and placement."""

    model_config = ConfigDict(json_schema_extra=validations(*POOL_SECTION_RULES))

    # The CRD has no default here: a fixed one (1) would contradict autoscaling.minReplicas
    # above it and get the spec refused.  The model derives it instead (below).
    replicas: int = Field(default=1, ge=0, le=1000, json_schema_extra=_no_schema_default)
    """Desired workers; the autoscaler sets it through ``/scale`` when autoscaling is enabled.
    When omitted: ``autoscaling.minReplicas`` with autoscaling on, else 1."""
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    """GPUs per replica = tensor x pipeline x data."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """GPU, CPU, memory and /dev/shm per replica."""
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    """Autoscaling bounds, metrics and behavior."""
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    """Node selection, tolerations, affinity, spread, priority."""
    drain: DrainSpec = Field(default_factory=DrainSpec)
    """Scale-down and rollout draining."""
    extra_args: ExtraArgs = Field(default_factory=list)
    """vLLM flags for this side only, appended after ``engine.extraArgs`` (the same flags are
    refused)."""
    pod_template: FreeForm | None = None
    """Escape hatch: a core/v1 PodTemplateSpec merged over the rendered one (containers by name)."""

    @model_validator(mode="after")
    def _replicas_follow_autoscaling(self) -> PoolSection:
        """An omitted ``replicas`` starts at the autoscaler's minimum."""
        if "replicas" not in self.model_fields_set and self.autoscaling.enabled:
            self.replicas = self.autoscaling.min_replicas
        return self

    @property
    def gpus_per_replica(self) -> int:
        return self.resources.gpus or self.parallelism.gpus


class InferencePoolSpec(PoolSection):
    """Desired state of an InferencePool."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            *POOL_SECTION_RULES,
            *side_channel_rules(("self.parallelism.data",)),
            *spec_override_rules(("self.extraArgs",)),
            rdma_resource_rule(("self.resources.gpuResourceName",)),
            cel(
                "self.role == 'aggregated' || self.kvTransfer.connector != 'None'",
                "kvTransfer.connector must name a KV connector for a prefill or decode pool",
                ".kvTransfer.connector",
            ),
            cel(
                "self.role != 'decode' || self.kvTransfer.connector != 'NixlConnector' || "
                "self.parallelism.pipeline == 1",
                NIXL_DECODE_PIPELINE_MESSAGE,
                ".parallelism.pipeline",
            ),
            cel(
                "self.role != 'prefill' || self.kvTransfer.connector != 'NixlConnector' || "
                "self.drain.timeoutSeconds >= self.kvTransfer.leaseSeconds",
                "drain.timeoutSeconds must be at least kvTransfer.leaseSeconds: a leaving "
                "prefill worker waits until the KV it holds is read or its lease expires",
                ".drain.timeoutSeconds",
            ),
        )
    )

    role: Role
    """``prefill`` (computes prompts and hands KV over), ``decode`` (generates from transferred
    KV) or ``aggregated`` (both, the monolithic baseline)."""
    model: ModelSpec
    """The served model."""
    engine: EngineSpec = Field(default_factory=EngineSpec)
    """vLLM image and flags."""
    kv_transfer: KVTransferSpec = Field(default_factory=KVTransferSpec)
    """KV connector between prefill and decode."""
    rdma: RDMASpec = Field(default_factory=RDMASpec)
    """RDMA devices and fabric settings."""
    kv_events: KVEventsSpec = Field(default_factory=KVEventsSpec)
    """Prefix-cache events for a precise router (set by a DisaggDeployment whose gateway routes
    this pool with ``precisePrefix``)."""


class InferencePoolStatus(ApiModel):
    """Observed state of an InferencePool."""

    observed_generation: int | None = None
    """The spec generation this status describes."""
    replicas: int | None = None
    """Worker pods that exist (the ``/scale`` status replicas)."""
    ready_replicas: int | None = None
    """Worker pods that are Ready."""
    updated_replicas: int | None = None
    """Worker pods on the current template."""
    selector: str | None = None
    """Label selector of the pool's pods, as a string (the ``/scale`` selector)."""
    endpoints: int | None = None
    """Ready endpoints behind the pool's headless Service."""
    queue_depth: float | None = None
    """Last observed waiting requests summed over the pool (from Prometheus)."""
    kv_cache_usage: float | None = None
    """Last observed mean KV-cache usage of the pool, 0..1 (from Prometheus)."""
    conditions: list[Condition] = Field(default_factory=list)
    """``Ready``, ``Progressing``, ``Degraded``, ``RDMAReady``."""


class InferencePool(ApiModel):
    """A pool of identical vLLM workers with one role (prefill, decode or aggregated)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && "
                "size(self.metadata.name) <= 63",
                "metadata.name must be a DNS-1035 label of at most 63 characters "
                "(it names the pool's Service)",
                ".metadata.name",
            ),
        )
    )

    api_version: str = "disagg.dev/v1alpha1"
    kind: str = "InferencePool"
    metadata: FreeForm = Field(default_factory=dict)
    spec: InferencePoolSpec
    status: InferencePoolStatus = Field(default_factory=InferencePoolStatus)
