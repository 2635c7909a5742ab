"""The gateway's configuration: the schema of the routing ConfigMap, as pydantic models.

The operator renders this (JSON or YAML) from a DisaggDeployment into a ConfigMap mounted at
``--config``; for local use the command line builds the same object (``--prefill``/``--decode``
become static discovery).  Field names are camelCase on the wire, like every Kubernetes object,
and every field has a default, so ``{}`` is a valid (static, empty) configuration.  Unknown keys
are rejected: a typo in a ConfigMap should stop the gateway, not silently change routing.
docs/gateway.md documents each field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from disagg.api.scorers import DEFAULT_DECODE_SCORERS, DEFAULT_PREFILL_SCORERS, plugin_name
from disagg.blockhash import HashAlgo


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class PluginConfig(_Model):
    type: str
    """Registered plugin name (``disagg.gateway.routing.registry``; docs/gateway.md lists them)."""
    weight: float = Field(default=1.0, gt=0)
    """Scorers only: multiplier of the scorer's [0, 1] score in the profile's sum."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Plugin parameters (see each plugin's docstring)."""


def _default_prefill_scorers() -> list[PluginConfig]:
    return [PluginConfig(type=plugin_name(n), weight=w) for n, w in DEFAULT_PREFILL_SCORERS]


def _default_decode_scorers() -> list[PluginConfig]:
    return [PluginConfig(type=plugin_name(n), weight=w) for n, w in DEFAULT_DECODE_SCORERS]


class ProfileConfig(_Model):
    scorers: list[PluginConfig]
    filters: list[PluginConfig] = Field(default_factory=lambda: [PluginConfig(type="healthy")])
    picker: PluginConfig = Field(default_factory=lambda: PluginConfig(type="max-score"))


class KVEventsEndpoint(_Model):
    publisher: str
    """The worker's PUB address, e.g. ``tcp://127.0.0.1:5557``."""
    replay: str | None = None
    """Its replay (ROUTER) address; without one a gap clears the worker's entries instead."""


class DataParallelSizes(_Model):
    prefill: int = Field(default=1, ge=1, le=64)
    decode: int = Field(default=1, ge=1, le=64)


class KVEventsConfig(_Model):
    """Follow the workers' vLLM KV-cache events (``--kv-events-config``) for ``precise-prefix``."""

    port: int = Field(default=5557, ge=1, le=65535)
    """The workers' publisher port (``endpoint`` tcp://*:PORT); rank r of a data-parallel worker
    publishes on PORT + r, as vLLM does."""
    replay_port: int | None = Field(default=5558, ge=1, le=65535)
    """The workers' replay port (``replay_endpoint``); null: none (gaps then clear)."""
    data_parallel_size: DataParallelSizes = Field(default_factory=lambda: DataParallelSizes())
    """Engines per worker pod of each pool (vLLM ``--data-parallel-size``): a stream each."""
    topic: str = ""
    """Subscribe to topics starting with this ("" = all)."""
    hash_algo: HashAlgo = "sha256"
    """The workers' ``--prefix-caching-hash-algo``."""
    hash_seed: str | None = None
    """The workers' ``PYTHONHASHSEED`` if they set one (vLLM's NONE_HASH seed); required to match
    the xxhash algorithms, whose default seed is random per engine."""
    max_index_blocks: int = Field(default=262_144, ge=1)
    """Most block keys the index holds (measured: ~150 bytes per key held by one worker, ~110
    more per extra holder); past it the least recently stored are dropped."""
    replay_timeout_seconds: float = Field(default=5.0, gt=0)
    """How long to wait for a replay answer before giving up on filling a gap."""
    endpoints: dict[str, KVEventsEndpoint] = Field(default_factory=dict)
    """Explicit addresses per worker url (local use: several workers on one host); workers not
    listed use ``tcp://<worker host>:port`` and ``replayPort``."""


class RoutingConfig(_Model):
    prefill: ProfileConfig = Field(
        default_factory=lambda: ProfileConfig(scorers=_default_prefill_scorers())
    )
    decode: ProfileConfig = Field(
        default_factory=lambda: ProfileConfig(scorers=_default_decode_scorers())
    )
    block_size: int = Field(default=16, ge=1, le=1024)
    """Tokens per KV block; match the workers' ``--block-size`` (vLLM's default 16)."""
    prefix_index_blocks: int = Field(default=16384, ge=1)
    """Blocks remembered per worker by the approximate prefix index (about the worker's cache)."""
    kv_events: KVEventsConfig | None = None
    """Follow the workers' KV events (needed by ``precise-prefix``); null: off."""
    tokenizer_path: str | None = None
    """Directory with the model's ``tokenizer.json`` (and ``tokenizer_config.json`` with its
    chat template): the gateway then hashes prompts from the engine's exact token ids."""


class SelectiveConfig(_Model):
    enabled: bool = True
    """False: every request is disaggregated while a prefill worker exists."""
    min_uncached_prompt_tokens: int = Field(default=256, ge=0)
    """Decode-only below this many prompt tokens not already cached on the decode worker."""


class RetryConfig(_Model):
    prefill_attempts: int = Field(default=2, ge=1, le=10)
    """Prefill workers tried (each a different one) before falling back to decode-local prefill."""
    decode_attempts: int = Field(default=2, ge=1, le=10)
    """Decode workers tried when one fails before sending its first byte."""
    decode_local_fallback: bool = True
    """After the prefill attempts fail, send the original body to a decode worker (it prefills)."""


class TimeoutConfig(_Model):
    connect_seconds: float = Field(default=5.0, gt=0)
    """Connecting to a worker; a decode leg must be able to connect well inside the KV lease."""
    prefill_seconds: float = Field(default=600.0, gt=0)
    """Whole prefill leg (long prompts under load take a while)."""
    first_byte_seconds: float = Field(default=600.0, gt=0)
    """Decode leg until response headers arrive."""
    stream_idle_seconds: float = Field(default=300.0, gt=0)
    """Longest silence between two chunks of a stream; there is no total limit."""
    keep_alive_expiry_seconds: float = Field(default=4.0, gt=0, lt=5.0)
    """Idle upstream connections are closed after this; must stay below vLLM's 5 s keep-alive."""
    body_read_seconds: float = Field(default=30.0, gt=0)
    """A client must deliver its whole request body within this (else 408)."""
    header_read_seconds: float = Field(default=30.0, gt=0)
    """A client must deliver its request line and headers within this (else the connection is
    closed)."""


class KVTransferConfig(_Model):
    """What the gateway must know of the prefill workers' KV handoff (rendered by the operator
    from the DisaggDeployment's ``kvTransfer``)."""

    lease_seconds: float = Field(default=30.0, gt=0)
    """The prefill workers' lease on a prompt's blocks (``kv_lease_duration``)."""
    handoff_budget_seconds: float | None = Field(default=None, gt=0)
    """The latest a decode leg may start after its prefill answered (default: a third of the
    lease); later, the decode worker prefills locally instead of risking blocks already reused."""
    side_channel_port: int | None = Field(default=None, ge=1, le=65535)
    """The prefill workers' NIXL side-channel port, when discovery does not report it per
    worker; ``kv_transfer_params`` naming another port are refused."""
    data_parallel_size: int = Field(default=1, ge=1, le=64)
    """Prefill engines per worker: ports ``sideChannelPort`` .. ``+ size - 1`` are theirs."""

    @property
    def handoff_budget(self) -> float:
        return self.handoff_budget_seconds or self.lease_seconds / 3


class ModelConfig(_Model):
    vocab_size: int | None = Field(default=None, ge=1)
    """Token ids in a prompt must be below this (400 otherwise); None: only non-negative."""


class LimitsConfig(_Model):
    max_header_bytes: int = Field(default=16384, ge=1024)
    """Request line plus headers larger than this get 431 and a closed connection."""
    max_headers: int = Field(default=100, ge=8)
    """More header fields than this get 431."""


class ShutdownConfig(_Model):
    delay_seconds: float = Field(default=5.0, ge=0)
    """After SIGTERM, keep serving (with ``/ready`` failing) this long so that load balancers
    stop sending before the listener closes."""
    timeout_seconds: float = Field(default=300.0, ge=0)
    """Then stop accepting and wait this long for in-flight requests (streams included)."""


class PoolQueueConfig(_Model):
    max_inflight_per_worker: int = Field(default=64, ge=1)
    """Requests the gateway lets run at once per ready worker; the rest wait in the queue (the
    operator renders the engine's ``--max-num-seqs`` for prefill)."""
    max_inflight_tokens_per_worker: int | None = Field(default=None, ge=1)
    """Tokens the gateway lets run at once per ready worker (prefill: prompt tokens; decode:
    prompt plus ``max_tokens``); None: no token bound.  The operator renders the prefill
    engine's ``--max-num-batched-tokens``.  A pool with nothing in flight admits any request."""
    max_queued: int = Field(default=512, ge=0)
    """Waiting requests beyond which the gateway answers 429."""
    max_queued_per_client: int | None = Field(default=None, ge=1)
    """Waiting requests of one client (and priority) beyond which it gets 429; None: only
    ``max_queued`` bounds it."""


class QueueConfig(_Model):
    prefill: PoolQueueConfig = Field(
        default_factory=lambda: PoolQueueConfig(max_inflight_per_worker=16, max_queued=512)
    )
    decode: PoolQueueConfig = Field(
        default_factory=lambda: PoolQueueConfig(max_inflight_per_worker=256, max_queued=1024)
    )
    max_wait_seconds: float = Field(default=30.0, gt=0)
    """A queued request waiting longer gets 429."""
    gateway_replicas: int = Field(default=1, ge=1)
    """Gateway replicas sharing the workers (each admits its share of the limits above, as the
    operator renders them); ``disagg_gateway_busy_workers`` is divided by it so that its sum
    over the replicas is in workers."""
    retry_after_seconds: int = Field(default=1, ge=1)
    """Smallest ``Retry-After`` on 429; the gateway answers more when the queue ahead will take
    longer to drain (waiters times the measured hold time of a slot, up to 60 s)."""


class StaticWorker(_Model):
    """A static worker with what pod discovery would read from its pod."""

    url: str
    kv_layout: str | None = None
    tensor_parallel: int | None = Field(default=None, ge=1)
    side_channel_port: int | None = Field(default=None, ge=1, le=65535)


class StaticDiscovery(_Model):
    prefill: list[str | StaticWorker] = Field(default_factory=list)
    decode: list[str | StaticWorker] = Field(default_factory=list)


class KubernetesDiscovery(_Model):
    namespace: str
    prefill_selector: str | None = None
    """Label selector of the prefill pool's Pods, e.g. ``disagg.dev/pool=llama-prefill``; unset:
    no prefill pool (aggregated workers)."""
    decode_selector: str
    port: int = Field(default=8000, ge=1, le=65535)
    """Worker HTTP port (used when the pod declares no container port of ``portName``)."""
    port_name: str | None = None
    """Prefer the container port with this name (e.g. ``http``)."""
    resync_seconds: float = Field(default=30.0, gt=0)
    """Watches are restarted (and the list re-read) at least this often."""


class DiscoveryConfig(_Model):
    static: StaticDiscovery | None = None
    kubernetes: KubernetesDiscovery | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DiscoveryConfig:
        if self.static is not None and self.kubernetes is not None:
            raise ValueError("discovery: set either static or kubernetes, not both")
        return self


class PoolNames(_Model):
    prefill: str = "prefill"
    decode: str = "decode"
    """Values of the ``pool`` label on the gateway's metrics (the InferencePool names)."""


class GatewayConfig(_Model):
    pools: PoolNames = Field(default_factory=PoolNames)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    selective: SelectiveConfig = Field(default_factory=SelectiveConfig)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    kv_transfer: KVTransferConfig = Field(default_factory=KVTransferConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    scrape_interval_seconds: float = Field(default=1.0, gt=0)
    """How often each worker's /metrics is read for the load scorers."""
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Larger request bodies get 400."""
    api_key_file: str | None = None
    """File holding the API key (a mounted Secret); env ``DISAGG_API_KEY`` also works."""

    @model_validator(mode="after")
    def _handoff_fits_the_lease(self) -> GatewayConfig:
        budget = self.kv_transfer.handoff_budget + self.timeouts.connect_seconds
        if budget >= self.kv_transfer.lease_seconds:
            raise ValueError(
                f"kvTransfer: the hand-off budget ({self.kv_transfer.handoff_budget:g}s) plus "
                f"timeouts.connectSeconds ({self.timeouts.connect_seconds:g}s) must stay below "
                f"the lease ({self.kv_transfer.lease_seconds:g}s): a decode leg could start after "
                "the prefill worker reused the blocks"
            )
        return self


def load_config(path: str | Path) -> GatewayConfig:
    """Read a JSON or YAML file (YAML is a superset of JSON) into a validated config."""
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) if text.strip() else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the gateway config must be a mapping, got {type(data).__name__}")
    return GatewayConfig.model_validate(data)
