"""The simulator's settings: vLLM's engine arguments it models, plus its own ``--sim-*`` knobs.

One frozen value object, built by :mod:`disagg.sim.cli` from a vLLM command line and handed to the
engine and the HTTP app; nothing else reads argv or the environment.  The vLLM-named fields keep
vLLM's defaults so a pod spec rendered for vLLM means the same thing here.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from typing import Any

KNOWN_CONNECTORS = frozenset(
    {
        "NixlConnector",
        "NixlPushConnector",
        "MooncakeConnector",
        "LMCacheConnectorV1",
        "MultiConnector",
        "OffloadingConnector",
        "ExampleConnector",
    }
)
KV_ROLES = frozenset({"kv_producer", "kv_consumer", "kv_both"})
KV_PARAM_CORRUPTIONS = frozenset(
    {"no_remote_host", "fewer_blocks", "blocks_as_string", "empty_blocks", "wrong_host",
     "wrong_port"}
)  # fmt: skip


class ConfigError(ValueError):
    """A command-line value the simulator cannot run with (the message says which and why)."""


@dataclass(frozen=True)
class KVTransferConfig:
    """The parsed ``--kv-transfer-config`` JSON (only the fields the simulator acts on)."""

    connector: str = "NixlConnector"
    """``kv_connector``; the simulator speaks the NIXL pull protocol whatever is named here."""
    role: str = "kv_both"
    """``kv_role``; like NIXL, the simulator lets the request decide who prefills."""
    engine_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    """``engine_id``; vLLM makes a random one when absent, so do we."""
    load_failure_policy: str = "fail"
    """``kv_load_failure_policy`` (vLLM's default ``fail``): a failed pull fails the request --
    HTTP 500, or a stream that ends silently with no token; ``recompute`` prefills locally."""
    extra: dict[str, Any] = field(default_factory=dict)
    """``kv_connector_extra_config``, kept for the record."""

    @classmethod
    def parse(cls, text: str) -> KVTransferConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--kv-transfer-config is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError("--kv-transfer-config must be a JSON object")
        connector = raw.get("kv_connector")
        if not isinstance(connector, str) or connector not in KNOWN_CONNECTORS:
            known = ", ".join(sorted(KNOWN_CONNECTORS))
            raise ConfigError(f"--kv-transfer-config: unknown kv_connector {connector!r} ({known})")
        role = raw.get("kv_role", "kv_both")
        if role not in KV_ROLES:
            raise ConfigError(f"--kv-transfer-config: kv_role must be one of {sorted(KV_ROLES)}")
        policy = raw.get("kv_load_failure_policy", "fail")
        if policy not in ("recompute", "fail"):
            raise ConfigError("--kv-transfer-config: kv_load_failure_policy is recompute or fail")
        extra = raw.get("kv_connector_extra_config") or {}
        engine_id = raw.get("engine_id") or str(uuid.uuid4())
        return cls(
            connector=connector,
            role=role,
            engine_id=str(engine_id),
            load_failure_policy=policy,
            extra=dict(extra),
        )


@dataclass(frozen=True)
class KVEventsConfig:
    """``--kv-events-config`` (vLLM's ``KVEventsConfig``, same fields and defaults)."""

    enable_kv_cache_events: bool = False
    publisher: str | None = None
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @property
    def publishing(self) -> bool:
        return self.enable_kv_cache_events and (self.publisher or "zmq") == "zmq"

    @classmethod
    def parse(cls, text: str) -> KVEventsConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--kv-events-config is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError("--kv-events-config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"--kv-events-config: unexpected keys {unknown} (known: {sorted(known)})"
            )
        config = cls(**raw)
        if config.publisher not in (None, "null", "zmq"):
            raise ConfigError(f"--kv-events-config: unknown publisher {config.publisher!r}")
        for name in ("buffer_steps", "hwm", "max_queue_size"):
            if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
                raise ConfigError(f"--kv-events-config: {name} must be a positive integer")
        return config


@dataclass(frozen=True)
class FaultConfig:
    """Injected failures; the same fields are read and written by ``POST /sim/faults``."""

    error_rate: float = 0.0
    """Fraction (0..1) of completion requests answered at once with ``error_status``."""
    error_status: int = 500
    """HTTP status of an injected error (500, 503, 429, ...)."""
    slowdown: float = 1.0
    """Multiplier (>= 1) on every engine step: a slow, overloaded or throttled GPU."""
    extra_latency_s: float = 0.0
    """Wall seconds added before a request enters the engine (a slow front end)."""
    die_after_tokens: int = -1
    """After this many generated tokens a stream dies (-1: never).  Applies to ``die_rate`` of
    streams."""
    die_rate: float = 1.0
    """Fraction (0..1) of streams ``die_after_tokens`` applies to."""
    die_mode: str = "abort"
    """``abort``: cut the HTTP connection without ``[DONE]``; ``exit``: the whole process exits
    (a crashed pod); ``error``: the engine fails the request in-band, as vLLM does when its
    engine dies (an SSE ``error`` frame then ``[DONE]``, or a 500 body when not streaming)."""
    unhealthy: bool = False
    """``/health`` answers 503 (a dead engine) while set."""
    corrupt_kv_params: str = ""
    """A prefill leg answers with broken ``kv_transfer_params`` (to test what a gateway
    forwards): ``no_remote_host``, ``fewer_blocks``, ``blocks_as_string``, ``empty_blocks``
    (the shapes that kill vLLM's decode engine, FAULTS.md), ``wrong_host``, ``wrong_port``."""

    def validate(self) -> FaultConfig:
        if not 0.0 <= self.error_rate <= 1.0 or not 0.0 <= self.die_rate <= 1.0:
            raise ConfigError("error_rate and die_rate are fractions in [0, 1]")
        if not 400 <= self.error_status <= 599:
            raise ConfigError("error_status must be an HTTP error status (400..599)")
        if self.slowdown < 1.0 or self.extra_latency_s < 0.0:
            raise ConfigError("slowdown must be >= 1 and extra_latency_s >= 0")
        if self.die_mode not in ("abort", "exit", "error"):
            raise ConfigError("die_mode is abort, exit or error")
        if self.corrupt_kv_params not in ("", *KV_PARAM_CORRUPTIONS):
            raise ConfigError(f"corrupt_kv_params is one of {sorted(KV_PARAM_CORRUPTIONS)}")
        return self


@dataclass(frozen=True)
class SimConfig:
    """Everything one simulator process runs with."""

    model: str
    """The model argument as vLLM got it (HF id or path)."""
    served_model_names: tuple[str, ...]
    """Names clients may use in ``model``; defaults to ``(model,)`` like vLLM."""
    host: str = "0.0.0.0"
    port: int = 8000
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    """Engines in this process (vLLM ``--data-parallel-size``), each with its own KV cache,
    side-channel port (base + rank) and ``engine`` metric label."""
    block_size: int = 16
    """Tokens per KV block (vLLM ``--block-size``)."""
    max_num_seqs: int = 256
    """Most requests in the running batch; the rest wait (vLLM ``--max-num-seqs``)."""
    max_num_batched_tokens: int = 8192
    """Token budget of one engine step; longer prompts are prefilled in chunks."""
    max_model_len: int | None = None
    """Context limit; ``None`` means the model's own."""
    gpu_memory_utilization: float = 0.92
    num_gpu_blocks_override: int | None = None
    """KV capacity in blocks; ``None`` derives it from GPU memory minus the weights."""
    kv_cache_memory_bytes: int | None = None
    """KV-cache bytes per GPU (vLLM ``--kv-cache-memory-bytes``); overrides the memory budget."""
    kv_transfer: KVTransferConfig = field(default_factory=KVTransferConfig)
    kv_events: KVEventsConfig = field(default_factory=KVEventsConfig)
    """``--kv-events-config``: publish prefix-cache events over ZMQ (off by default, as in vLLM)."""
    prefix_caching_hash_algo: str = "sha256"
    kv_events_int_hashes: bool = True
    """``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`` (default 1): events carry the low 64 bits of each
    hash; 0: the whole digest as bytes."""
    """``--prefix-caching-hash-algo``: how block hashes are computed (``disagg.blockhash``)."""
    tokenizer: str | None = None
    """``--tokenizer``: a directory with a Hugging Face ``tokenizer.json`` to tokenize prompts
    with (and its chat template); ``None``: the model directory if it has one, else the
    simulator's own rule (``disagg.sim.tokenizer``)."""
    side_channel_host: str = "localhost"
    """``VLLM_NIXL_SIDE_CHANNEL_HOST``: what we advertise as ``remote_host``."""
    side_channel_port: int | None = 5600
    """``VLLM_NIXL_SIDE_CHANNEL_PORT``; ``None`` (env unset) tries 5600, then any free port;
    0 always picks a free port."""
    side_channel_port_explicit: bool = False
    gpu: str = "h100-sxm"
    """``--sim-gpu``: the planner's GPU preset to time steps with."""
    calibration: str | None = None
    """``--sim-calibration``: a calibration file of that GPU (measured efficiencies)."""
    model_spec: str | None = None
    """``--sim-model-spec``: the planner's model preset; ``None`` guesses from ``model``."""
    speedup: float = 1.0
    """``--sim-speedup``: simulated seconds per wall second (tests use 50-1000)."""
    link_gbps: float = 100.0
    """``--sim-link-gbps``: the P->D KV link, Gbit/s (100 ~ one 100G RDMA NIC)."""
    link: str = "fabric"
    """``--sim-link``: the link profile KV transfers are timed with (``disagg.planner.links``):
    ``fabric`` (line rate of ``link_gbps``) or a measured one such as ``ucx-tcp-emulation``."""
    enforce_eager: bool = False
    """``--enforce-eager``: steps run without CUDA graphs (and pay their kernel launches)."""
    kv_lease_s: float = 30.0
    """``--sim-kv-lease``: wall seconds a prefill holds blocks nobody pulled."""
    handshake_timeout_s: float = 5.0
    """``--sim-handshake-timeout``: wall seconds a NIXL handshake with an unreachable side channel
    costs before it fails (vLLM's ZMQ timeout, 5 s); handshakes are serialised."""
    exit_on_engine_death: bool = True
    """The server exits when its engine dies, as vLLM's does; ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH``
    keeps it up (``/health`` then answers 503)."""
    default_max_tokens: int = 16
    """``--sim-default-max-tokens``: output length when a request sets no ``max_tokens``."""
    record_limit: int = 1000
    """``--sim-record``: how many recent requests ``GET /sim/requests`` keeps."""
    faults: FaultConfig = field(default_factory=FaultConfig)
    ignored_args: tuple[str, ...] = ()
    """vLLM flags the simulator accepted without modelling them."""
