"""InferencePool: one pool of identical vLLM workers with one role.

A pool is usable on its own (a plain, autoscaled vLLM deployment) or as a child
of a DisaggDeployment.  Its ``/scale`` subresource is what an HPA (or KEDA)
targets: the autoscaler writes ``spec.replicas``, the operator carries it to the
Deployment.  The kind shares its name with the Gateway API Inference
Extension's ``inferencepools.inference.networking.k8s.io``; ours is
``inferencepools.disagg.dev`` with the short names ``dipool``/``dip``.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from disagg.api.base import ApiModel, FreeForm, cel, validations
from disagg.api.common import (
    AutoscalingSpec,
    Condition,
    DrainSpec,
    EngineSpec,
    KVTransferSpec,
    ModelSpec,
    ParallelismSpec,
    PlacementSpec,
    RDMASpec,
    ResourcesSpec,
    Role,
)

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
        "!self.autoscaling.enabled || (self.replicas >= self.autoscaling.minReplicas && "
        "self.replicas <= self.autoscaling.maxReplicas)",
        "replicas must lie within autoscaling.minReplicas..autoscaling.maxReplicas",
        ".replicas",
    ),
)

#: Rules that tie the engine to the KV connector (pool, and DisaggDeployment's shared settings).
ENGINE_KV_RULES = (
    cel(
        "self.engine.port != self.kvTransfer.sideChannelPort",
        "engine.port and kvTransfer.sideChannelPort must differ",
        ".kvTransfer.sideChannelPort",
    ),
)


class PoolSection(ApiModel):
    """What differs between the prefill and decode sides: size, shape and placement."""

    model_config = ConfigDict(json_schema_extra=validations(*POOL_SECTION_RULES))

    replicas: int = Field(default=1, ge=0, le=1000)
    """Desired workers; the autoscaler sets it through ``/scale`` when autoscaling is enabled."""
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
    extra_args: list[str] = Field(default_factory=list)
    """vLLM flags for this side only, appended after ``engine.extraArgs``."""
    pod_template: FreeForm | None = None
    """Escape hatch: a core/v1 PodTemplateSpec merged over the rendered one (containers by name)."""

    @property
    def gpus_per_replica(self) -> int:
        return self.resources.gpus or self.parallelism.gpus


class InferencePoolSpec(PoolSection):
    """Desired state of an InferencePool."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            *POOL_SECTION_RULES,
            *ENGINE_KV_RULES,
            cel(
                "self.role == 'aggregated' || self.kvTransfer.connector != 'None'",
                "kvTransfer.connector must name a KV connector for a prefill or decode pool",
                ".kvTransfer.connector",
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
            ),
        )
    )

    api_version: str = "disagg.dev/v1alpha1"
    kind: str = "InferencePool"
    metadata: FreeForm = Field(default_factory=dict)
    spec: InferencePoolSpec
    status: InferencePoolStatus = Field(default_factory=InferencePoolStatus)
