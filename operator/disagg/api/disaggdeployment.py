"""DisaggDeployment: the whole disaggregated serving system for one model.

It owns two InferencePools (``<name>-prefill`` and ``<name>-decode``) that share
the model, engine, KV-transfer and RDMA settings declared once here, and the
gateway (Deployment, Service, routing ConfigMap) in front of them.  Cross-pool
rules that cannot be checked on one pool alone live here: NIXL pairs tensor-parallel
sizes only where one divides the other and cannot pipeline the decode side, and
the P:D ratio and GPU budget guard what the two autoscalers may do together.  A
child pool must pass its own CRD's rules too, so every pool rule is restated here
over the shared settings: a DisaggDeployment that is admitted never renders a pool
that the API server would refuse.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from disagg.api.base import ApiModel, FreeForm, cel, validations
from disagg.api.common import (
    INT32_MAX,
    Condition,
    DrainSpec,
    EngineSpec,
    KVTransferSpec,
    ModelSpec,
    RDMASpec,
    SecretKeyRef,
)
from disagg.api.formats import ContainerMemory, CPURequest, DNSSubdomain, Word
from disagg.api.inferencepool import (
    NIXL_DECODE_PIPELINE_MESSAGE,
    PoolSection,
    rdma_resource_rule,
    side_channel_rules,
)
from disagg.api.overrides import spec_override_rules
from disagg.api.scorers import (
    DEFAULT_DECODE_SCORERS,
    DEFAULT_PREFILL_SCORERS,
    ScorerType,
    type_description,
)
from disagg.api.slo import SLOSpec
from disagg.api.versions import DEFAULT_GATEWAY_IMAGE


class Scorer(ApiModel):
    """One routing scorer and its weight; scores are in [0,1], the gateway sums them weighted."""

    type: ScorerType = Field(description=type_description())
    weight: float = Field(default=1.0, ge=0, le=100)
    """Relative weight of this scorer."""


def _prefill_scorers() -> list[Scorer]:
    return [Scorer(type=name, weight=weight) for name, weight in DEFAULT_PREFILL_SCORERS]


def _decode_scorers() -> list[Scorer]:
    return [Scorer(type=name, weight=weight) for name, weight in DEFAULT_DECODE_SCORERS]


class SelectiveSpec(ApiModel):
    """Selective disaggregation: short prompts skip the prefill pool."""

    min_uncached_prompt_tokens: int = Field(default=256, ge=0, le=INT32_MAX)
    """Prompts whose uncached part is shorter than this many tokens are served by a decode
    worker alone (0 disaggregates everything)."""


def _scorer_rules(field: str, side: str) -> tuple[dict[str, str], ...]:
    return (
        cel(
            f"!has(self.{field}) || self.{field}.exists(s, s.weight > 0.0)",
            f"{field} needs at least one scorer with a weight above 0: the gateway drops "
            f"zero-weight scorers, and without any it cannot tell {side} workers apart",
            f".{field}",
        ),
        cel(
            f"!has(self.{field}) || "
            f"self.{field}.all(s, self.{field}.exists_one(t, t.type == s.type))",
            f"{field} may list each scorer type once (give it one weight)",
            f".{field}",
        ),
    )


class TokenizerSource(ApiModel):
    """Where the gateway reads the model's tokenizer files (``tokenizer.json``, and
    ``tokenizer_config.json`` with the chat template); nothing is downloaded at run time."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.configMapName) ? 1 : 0) + (has(self.claimName) ? 1 : 0) + "
                "(self.fromModelVolume ? 1 : 0) == 1",
                "gateway.routing.tokenizer: set exactly one of configMapName, claimName, "
                "fromModelVolume",
            ),
        )
    )

    config_map_name: DNSSubdomain | None = None
    """A ConfigMap whose keys are the files (fits small tokenizers: a ConfigMap holds 1 MiB)."""
    claim_name: DNSSubdomain | None = None
    """A PersistentVolumeClaim holding the files (mounted read-only), under ``path``."""
    path: str = Field(default="", pattern=r"^[^/].*$|^$")
    """Directory of the files inside ``claimName``'s volume ("" = its root)."""
    from_model_volume: bool = False
    """Read them from the model's own directory on ``model.volume`` (the model cache)."""


class RoutingSpec(ApiModel):
    """How the gateway picks workers and when it falls back."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            *_scorer_rules("prefillScorers", "prefill"),
            *_scorer_rules("decodeScorers", "decode"),
        )
    )

    prefill_scorers: list[Scorer] = Field(default_factory=_prefill_scorers, max_length=8)
    """Scorers for picking a prefill worker; at least one weighs more than 0."""
    decode_scorers: list[Scorer] = Field(default_factory=_decode_scorers, max_length=8)
    """Scorers for picking a decode worker; at least one weighs more than 0."""
    selective: SelectiveSpec = Field(default_factory=SelectiveSpec)
    """When to skip the prefill pool."""
    prefill_retries: int = Field(default=1, ge=0, le=5)
    """Prefill attempts on other workers after a failure, before decode-local prefill."""
    fallback_to_local_prefill: bool = True
    """After prefill failures, send the request to a decode worker to prefill itself."""
    request_timeout_seconds: float = Field(default=600.0, ge=1, le=86400)
    """Upper bound for one whole request, long generations included (1 s to a day)."""
    max_queued_per_pool: int = Field(default=256, ge=1, le=100000)
    """Requests waiting for a worker per pool before the gateway answers 429."""
    tokenizer: TokenizerSource | None = None
    """The model's tokenizer for ``precisePrefix``: the gateway hashes prompts from the exact
    token ids the engines see (without it only token-id prompts route precisely)."""


class GatewaySpec(ApiModel):
    """The OpenAI-compatible KV-routing gateway in front of both pools."""

    replicas: int = Field(default=2, ge=0, le=100)
    """Gateway pods (two by default: a PodDisruptionBudget keeps one serving while the other is
    evicted or rolled; each keeps its own routing state, see docs/gateway.md; 0 stops serving,
    e.g. for maintenance)."""
    image: Word = DEFAULT_GATEWAY_IMAGE
    """Gateway image."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port of the gateway Service (and container)."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Type of the gateway Service."""
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    """Routing policy."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret key holding the API key clients must send as ``Authorization: Bearer``."""
    workers: int = Field(default=1, ge=1, le=64)
    """Gateway processes per pod, sharing its port (``disagg gateway --workers``): about one per
    core of ``cpu``.  One by default (measured with ``bench/gateway_bench.py --gateway-workers``,
    docs/gateway.md): a second process on shared cores only competes for them; raise it together
    with ``cpu`` where the pod has cores to itself."""
    cpu: CPURequest = "1"
    """CPU request of a gateway pod; above 0."""
    memory: ContainerMemory = "512Mi"
    """Memory request and limit of a gateway pod; at least ``64Mi`` (a bare number is bytes)."""
    drain: DrainSpec = Field(default_factory=DrainSpec)
    """How a gateway pod stops: it leaves the Service, stops accepting after a few seconds, and
    waits up to ``timeoutSeconds`` for its in-flight requests (streams included)."""


class RatioBounds(ApiModel):
    """Bounds on prefill replicas divided by decode replicas."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.min <= self.max",
                "scaling.prefillToDecodeRatio.min must not exceed its max",
                ".min",
            ),
        )
    )

    min: float = Field(default=0.0, ge=0, le=1000)
    """Smallest allowed P:D ratio."""
    max: float = Field(default=1000.0, gt=0, le=1000)
    """Largest allowed P:D ratio."""


class ScalingSpec(ApiModel):
    """Guards applied to what the two autoscalers ask for, before the Deployments change."""

    prefill_to_decode_ratio: RatioBounds | None = None
    """Keep prefill/decode replicas within these bounds."""
    gpu_budget: int | None = Field(default=None, ge=1, le=100000)
    """Most GPUs both pools may use together."""


class DisaggDeploymentSpec(ApiModel):
    """Desired state of a DisaggDeployment."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            *side_channel_rules(("self.prefill.parallelism.data", "self.decode.parallelism.data")),
            *spec_override_rules(("self.prefill.extraArgs", "self.decode.extraArgs")),
            rdma_resource_rule(
                (
                    "self.prefill.resources.gpuResourceName",
                    "self.decode.resources.gpuResourceName",
                )
            ),
            cel(
                "!has(self.gateway.routing.tokenizer) || "
                "!self.gateway.routing.tokenizer.fromModelVolume || has(self.model.volume)",
                "gateway.routing.tokenizer.fromModelVolume needs model.volume",
                ".gateway.routing.tokenizer.fromModelVolume",
            ),
            cel(
                "self.kvTransfer.connector != 'None'",
                "kvTransfer.connector must name a KV connector: a DisaggDeployment moves KV "
                "from prefill to decode",
                ".kvTransfer.connector",
            ),
            # vLLM 0.33 (TransferTopology.tp_ratio): either side's TP may be larger, as long
            # as it is a whole multiple of the other's.
            cel(
                "self.kvTransfer.connector != 'NixlConnector' || "
                "self.decode.parallelism.tensor % self.prefill.parallelism.tensor == 0 || "
                "self.prefill.parallelism.tensor % self.decode.parallelism.tensor == 0",
                "prefill.parallelism.tensor and decode.parallelism.tensor must be multiples of "
                "one another with NixlConnector (it splits or joins KV heads only in whole "
                "ratios)",
                ".decode.parallelism.tensor",
            ),
            cel(
                "self.kvTransfer.connector != 'NixlConnector' || "
                "self.decode.parallelism.pipeline == 1",
                NIXL_DECODE_PIPELINE_MESSAGE,
                ".decode.parallelism.pipeline",
            ),
            cel(
                "self.kvTransfer.connector != 'NixlConnector' || "
                "self.prefill.drain.timeoutSeconds >= self.kvTransfer.leaseSeconds",
                "prefill.drain.timeoutSeconds must be at least kvTransfer.leaseSeconds: a leaving "
                "prefill worker waits until the KV it holds is read or its lease expires",
                ".prefill.drain.timeoutSeconds",
            ),
            cel(
                "!has(self.scaling.gpuBudget) || self.scaling.gpuBudget >= "
                "(self.prefill.autoscaling.enabled ? self.prefill.autoscaling.minReplicas : "
                "has(self.prefill.replicas) ? self.prefill.replicas : 1) * "
                "(has(self.prefill.resources.gpus) ? "
                "self.prefill.resources.gpus : self.prefill.parallelism.tensor * "
                "self.prefill.parallelism.pipeline * self.prefill.parallelism.data) + "
                "(self.decode.autoscaling.enabled ? self.decode.autoscaling.minReplicas : "
                "has(self.decode.replicas) ? self.decode.replicas : 1) * "
                "(has(self.decode.resources.gpus) ? "
                "self.decode.resources.gpus : self.decode.parallelism.tensor * "
                "self.decode.parallelism.pipeline * self.decode.parallelism.data)",
                "scaling.gpuBudget is smaller than the GPUs the minimum prefill and decode "
                "replicas need",
                ".scaling.gpuBudget",
            ),
        )
    )

    model: ModelSpec
    """The served model (shared by both pools)."""
    engine: EngineSpec = Field(default_factory=EngineSpec)
    """vLLM image and flags (shared)."""
    kv_transfer: KVTransferSpec = Field(default_factory=KVTransferSpec)
    """KV connector (shared; roles are set per pool)."""
    rdma: RDMASpec = Field(default_factory=RDMASpec)
    """RDMA devices and fabric settings (shared)."""
    prefill: PoolSection = Field(default_factory=PoolSection)
    """The prefill pool."""
    decode: PoolSection = Field(default_factory=PoolSection)
    """The decode pool."""
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    """The routing gateway."""
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    """Cross-pool scaling guards."""
    slo: SLOSpec | None = None
    """Latency objectives: pools whose ``autoscaling.metrics`` are empty get targets derived
    from them (TTFT -> the prefill gateway-queue target, ITL -> decode's running requests per
    worker; docs/autoscaling.md has the arithmetic)."""


class PoolSummary(ApiModel):
    """Replica counts of one child pool."""

    desired: int | None = None
    """Replicas the pool's Deployment is set to (after guards)."""
    requested: int | None = None
    """Replicas the pool asked for (its spec.replicas, possibly set by its autoscaler)."""
    ready: int | None = None
    """Ready workers."""


class GatewaySummary(ApiModel):
    """Observed gateway state."""

    endpoint: str | None = None
    """In-cluster URL of the gateway Service."""
    ready: int | None = None
    """Ready gateway pods."""


class DisaggDeploymentStatus(ApiModel):
    """Observed state of a DisaggDeployment."""

    observed_generation: int | None = None
    """The spec generation this status describes."""
    prefill: PoolSummary = Field(default_factory=PoolSummary)
    """Prefill pool."""
    decode: PoolSummary = Field(default_factory=PoolSummary)
    """Decode pool."""
    gateway: GatewaySummary = Field(default_factory=GatewaySummary)
    """Gateway."""
    kv_bytes_per_token: int | None = None
    """KV-cache bytes per token of the model (all layers, K and V), from the planner."""
    estimated_transfer_ms: float | None = None
    """Estimated KV transfer time of a typical (4,096-token) prompt at ``rdma.linkGbps``."""
    disaggregated_share: float | None = None
    """Share of recent requests that went through prefill then decode (from the gateway)."""
    conditions: list[Condition] = Field(default_factory=list)
    """``Ready``, ``PrefillReady``, ``DecodeReady``, ``GatewayReady``,
    ``DisaggregationEffective``, ``RDMAReady``, ``Progressing``, ``Degraded``."""


class DisaggDeployment(ApiModel):
    """A disaggregated prefill/decode deployment of one model with its routing gateway."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && "
                "size(self.metadata.name) <= 52",
                "metadata.name must be a DNS-1035 label of at most 52 characters "
                "(children are named <name>-prefill, <name>-decode, <name>-gateway)",
                ".metadata.name",
            ),
        )
    )

    api_version: str = "disagg.dev/v1alpha1"
    kind: str = "DisaggDeployment"
    metadata: FreeForm = Field(default_factory=dict)
    spec: DisaggDeploymentSpec
    status: DisaggDeploymentStatus = Field(default_factory=DisaggDeploymentStatus)
