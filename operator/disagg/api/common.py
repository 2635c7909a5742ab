"""Building blocks shared by InferencePool and DisaggDeployment.

Each block is one concern a platform engineer configures on its own: the model,
the engine (vLLM), parallelism, resources, KV transfer, RDMA, autoscaling and
placement.  Defaults are what a first deployment of Llama-3.1-8B with NIXL on a
GPU node should get; anything an upstream Kubernetes type already describes
(tolerations, affinity, HPA behavior) is passed through verbatim rather than
re-declared, and validated when the rendered object is.

Everything else the operator would have to refuse later is refused at admission:
strings vLLM reads as one token, quantities that cannot work, targets that round to
nothing.  Every list and string is bounded, so the API server can price the CEL rules.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from disagg.api.base import ApiModel, FreeForm, cel, validations
from disagg.api.formats import (
    LABEL_VALUE,
    QUALIFIED_NAME,
    ConfigKey,
    ContainerMemory,
    CPURequest,
    DNSSubdomain,
    ExtendedResourceName,
    HCAPort,
    MountPath,
    MultusNetwork,
    SharedMemorySize,
    Word,
    cel_string,
)
from disagg.api.overrides import ExtraArgs, env_names_rule
from disagg.api.versions import (
    DEFAULT_VLLM_IMAGE,
    SUPPORTED_VLLM_PATTERN,
    SUPPORTED_VLLM_RANGE_TEXT,
    VLLM_IMAGE_TAG,
    is_supported_vllm_version,
    resolve_vllm_version,
    vllm_version_of_image,
)

#: A vLLM image whose tag names a supported release (the CEL twin of ``VLLM_IMAGE_TAG``).
_SUPPORTED_VLLM_IMAGE = (
    r"^(.*/)?vllm[^/:@]*:v?" + SUPPORTED_VLLM_PATTERN.strip("^$") + r"([^0-9].*)?$"
)


_VERSION_MESSAGE = (
    f"engine.vllmVersion must be a vLLM release the operator renders for: "
    f"{SUPPORTED_VLLM_RANGE_TEXT}"
)
_IMAGE_MESSAGE = (
    f"engine.image's tag names a vLLM release outside {SUPPORTED_VLLM_RANGE_TEXT}; use a "
    f"supported image or set engine.vllmVersion to the release the image runs"
)

#: The largest 32-bit integer: bounds for counts that end up in int32 Kubernetes fields.
INT32_MAX = 2**31 - 1

Role = Literal["prefill", "decode", "aggregated"]
Connector = Literal["NixlConnector", "MooncakeConnector", "LMCacheConnectorV1", "None"]
Transport = Literal["ib", "roce", "efa", "tcp"]
AutoscalingEngine = Literal["hpa", "keda"]
ScalingMetricName = Literal[
    "gatewayQueueDepth", "waitingRequests", "runningRequests", "kvCacheUsage"
]


class SecretKeyRef(ApiModel):
    """A key of a Secret in the object's namespace."""

    name: DNSSubdomain
    """Name of the Secret."""
    key: ConfigKey
    """Key inside the Secret."""


class ModelVolume(ApiModel):
    """Weights on a PersistentVolumeClaim instead of a download from a model hub."""

    claim_name: DNSSubdomain
    """The PersistentVolumeClaim holding the weights (mounted read-only)."""
    mount_path: MountPath = "/models"
    """Where the claim is mounted in the worker; ``model.name`` is then a path under it.  An
    absolute, normalised path of its own: not ``/dev/shm`` (the worker's shared memory) nor
    any other directory the worker or its image needs (``/dev``, ``/proc``, ``/etc``, ``/tmp``,
    ...)."""


class ModelSpec(ApiModel):
    """The model every worker serves.  Names are single words: no whitespace, and no leading
    ``-`` (vLLM would read it as a flag)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"!self.name.matches({cel_string(r'(^|/)[.][.]?(/|$)')})",
                "model.name must not contain '.' or '..' path segments (with a volume it is a "
                "path under the mount)",
                ".name",
            ),
        )
    )

    name: Word
    """Hugging Face repository id (``meta-llama/Llama-3.1-8B-Instruct``) or a path in the worker."""
    served_name: Word | None = None
    """The model name clients send (``--served-model-name``); defaults to ``name``."""
    revision: Word | None = None
    """A branch, tag or commit of the Hugging Face repository (``--revision``)."""
    architecture: Word | None = None
    """Planner preset for KV arithmetic in status (``llama-3.1-8b``, ``llama-3.1-70b``, ...);
    guessed from ``name`` when omitted."""
    volume: ModelVolume | None = None
    """Read the weights from a PersistentVolumeClaim."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret key holding a Hugging Face token, exposed to vLLM as ``HF_TOKEN``."""


class EnvVarSource(ApiModel):
    """Where a variable's value comes from (core/v1 EnvVarSource): exactly one source, each
    passed through verbatim and validated with the Deployment."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) + "
                "(has(self.fieldRef) ? 1 : 0) + (has(self.resourceFieldRef) ? 1 : 0) + "
                "(has(self.fileKeyRef) ? 1 : 0) == 1",
                "valueFrom must hold exactly one of secretKeyRef, configMapKeyRef, fieldRef, "
                "resourceFieldRef, fileKeyRef",
            ),
        )
    )

    secret_key_ref: FreeForm | None = None
    """A key of a Secret (``name``, ``key``, ``optional``)."""
    config_map_key_ref: FreeForm | None = None
    """A key of a ConfigMap (``name``, ``key``, ``optional``)."""
    field_ref: FreeForm | None = None
    """A field of the pod (``fieldPath``, e.g. ``status.podIP``)."""
    resource_field_ref: FreeForm | None = None
    """A resource of the container (``resource``, e.g. ``limits.memory``)."""
    file_key_ref: FreeForm | None = None
    """A key of an env file in a volume (Kubernetes 1.34+, alpha)."""


class EnvVar(ApiModel):
    """An environment variable: a literal value or a ``valueFrom`` source."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.valueFrom) || !has(self.value) || self.value == ''",
                "set either value or valueFrom, not both",
                ".valueFrom",
            ),
        )
    )

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name."""
    value: str | None = Field(default=None, max_length=32768)
    """Literal value."""
    value_from: EnvVarSource | None = None
    """A core/v1 EnvVarSource: exactly one of secretKeyRef, configMapKeyRef, fieldRef,
    resourceFieldRef, fileKeyRef."""


class EngineSpec(ApiModel):
    """The vLLM engine: image, version, entrypoint and the flags that matter for P/D."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.vllmVersion) || "
                f"self.vllmVersion.matches({cel_string(SUPPORTED_VLLM_PATTERN)})",
                _VERSION_MESSAGE,
                ".vllmVersion",
            ),
            cel(
                f"has(self.vllmVersion) || !has(self.image) || "
                f"!self.image.matches({cel_string(VLLM_IMAGE_TAG)}) || "
                f"self.image.matches({cel_string(_SUPPORTED_VLLM_IMAGE)})",
                _IMAGE_MESSAGE,
                ".image",
            ),
        )
    )

    image: Word = DEFAULT_VLLM_IMAGE
    """Worker image: vLLM's OpenAI server, or the disagg simulator (it takes the same flags)."""
    vllm_version: str | None = Field(default=None, max_length=32)
    """The vLLM release the workers run (``0.26.0``): the command line, KV-transfer config and
    environment are rendered for it.  Defaults to the release a vLLM image's tag names (tag
    ``v0.26.0`` of an image whose name starts with ``vllm``), else to the version this operator
    pins.  Supported: 0.26.0 to 0.33.x."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Image pull policy; Kubernetes' default when omitted."""
    entrypoint: Literal["serve", "apiServer"] = "serve"
    """``serve`` runs ``vllm serve <model>``; ``apiServer`` runs
    ``python3 -m vllm.entrypoints.openai.api_server --model <model>`` (older images)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port of the OpenAI server (``--port``)."""
    block_size: Literal[1, 8, 16, 32, 64, 128] = 16
    """KV-cache block size in tokens (``--block-size``); the gateway hashes prefixes by it."""
    max_model_len: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Maximum context length (``--max-model-len``); the model's own when omitted."""
    max_num_seqs: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Maximum concurrent sequences per engine (``--max-num-seqs``)."""
    max_num_batched_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Token budget of one engine step (``--max-num-batched-tokens``): longer prompts are
    prefilled in chunks of it, so a smaller budget shortens the stall a long prompt causes to
    running streams and lengthens that prompt's own prefill.  vLLM's default when omitted."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    """Fraction of GPU memory vLLM may use (``--gpu-memory-utilization``)."""
    prefix_caching: bool | None = None
    """Reuse the KV of prompt prefixes already computed (vLLM's automatic prefix caching;
    ``--enable-prefix-caching`` or its negative in the release's spelling).  vLLM's default (on)
    when omitted."""
    enforce_eager: bool | None = None
    """``true`` runs without CUDA graphs (``--enforce-eager``): starts faster and uses less
    memory, decodes slower at small batches.  vLLM's default (graphs on) when omitted."""
    extra_args: ExtraArgs = Field(default_factory=list)
    """More vLLM flags, appended verbatim after the rendered ones.  Flags the operator renders
    from fields (``--port``, ``--tensor-parallel-size``, ``--block-size``, ...) are refused in
    every spelling: set the field instead."""
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, json_schema_extra=env_names_rule()
    )
    """More environment variables for the worker container.  Names are unique, and those the
    operator sets (``VLLM_NIXL_SIDE_CHANNEL_*``, ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``, the RDMA
    variables, ``HF_TOKEN`` with ``model.tokenSecretRef``) are refused."""

    @field_validator("vllm_version")
    @classmethod
    def _supported_version(cls, value: str | None) -> str | None:
        if value is not None and not is_supported_vllm_version(value):
            raise ValueError(f"{_VERSION_MESSAGE} (got {value!r})")
        return value

    @model_validator(mode="after")
    def _supported_image(self) -> EngineSpec:
        tagged = vllm_version_of_image(self.image)
        if self.vllm_version is None and tagged and not is_supported_vllm_version(tagged):
            raise ValueError(f"{_IMAGE_MESSAGE} (image {self.image!r} is vLLM {tagged})")
        return self

    @property
    def resolved_vllm_version(self) -> str:
        """The release the rendering is for (see ``vllm_version``)."""
        return resolve_vllm_version(self.vllm_version, self.image)


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
    """``gatewayQueueDepth`` (External, from the gateway), ``waitingRequests`` /
    ``runningRequests`` (Pods, vLLM's ``num_requests_*``), ``kvCacheUsage`` (Pods, 0..1)."""
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
    """Metrics and targets; role defaults when empty (prefill: gatewayQueueDepth and
    waitingRequests, the larger wins; decode: waitingRequests and kvCacheUsage)."""
    behavior: FreeForm | None = None
    """An autoscaling/v2 HorizontalPodAutoscalerBehavior (stabilization windows, policies)."""


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
