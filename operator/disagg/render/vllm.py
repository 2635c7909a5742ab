"""The vLLM worker's command line and environment.

The rendered argv is exactly what ``vllm serve`` accepts (checked against vLLM's
own parser in the conformance tier); the simulator accepts the same argv, which
is how the local cluster runs these pods without GPUs.  ``--kv-transfer-config``
is compact JSON with sorted keys so that the rendered Deployment is byte-stable
and a re-render never triggers a rollout.

Rendering is per vLLM release (``engine.vllmVersion``, see ``api/versions.py``).  What differs
between the supported releases is collected in :class:`VllmDialect`: today the spelling of a
switched-off boolean flag -- 0.26 declares ``--no-enable-prefix-caching``, 0.33
``--disable-prefix-caching`` (and still accepts the old spelling, hidden from its help).  So a
release below 0.33 gets the old spelling, which every supported release parses, and 0.33 the one
it declares; the conformance tier parses each rendering with that release's own parser.  The KV
role is the same in both: ``kv_both`` is deprecated for NIXL (a warning in 0.26 and 0.33), so
prefill and decode pools render ``kv_producer`` and ``kv_consumer``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from disagg.api.common import (
    EngineSpec,
    KVEventsSpec,
    KVTransferSpec,
    ModelSpec,
    ParallelismSpec,
)
from disagg.api.versions import parse_vllm_version

#: Pool role -> vLLM ``kv_role``.  With NIXL the role is a placeholder (the proxy decides
#: who prefills), but producer/consumer documents intent and is what other connectors need.
KV_ROLE = {"prefill": "kv_producer", "decode": "kv_consumer", "aggregated": "kv_both"}

#: vLLM closes idle HTTP connections after 5 s by default; we keep them for this long so the
#: gateway's pool (which expires idle connections after 4 s) never races the server's close.
HTTP_KEEP_ALIVE_SECONDS = 30


@dataclass(frozen=True)
class VllmDialect:
    """How one vLLM release spells the flags that changed between supported releases."""

    release: tuple[int, int, int]
    negative_prefix: str
    """Prefix that turns an ``--enable-x`` flag off: ``--no-enable-`` (0.26) or ``--disable-``."""

    def switch(self, flag: str, on: bool) -> str:
        """``--enable-x`` itself, or its negative in this release's spelling."""
        return flag if on else self.negative_prefix + flag.removeprefix("--enable-")


#: From this release on vLLM declares ``--disable-x`` as the negative of ``--enable-x``.
DISABLE_SPELLING_FROM = (0, 33, 0)


def dialect(version: str) -> VllmDialect:
    """The spelling rules of vLLM ``version`` (``X.Y.Z``)."""
    release = parse_vllm_version(version)
    prefix = "--disable-" if release >= DISABLE_SPELLING_FROM else "--no-enable-"
    return VllmDialect(release=release, negative_prefix=prefix)


def kv_transfer_config(kv: KVTransferSpec, role: str) -> dict[str, Any] | None:
    """The ``--kv-transfer-config`` object for a pool's role, or None without a connector."""
    if kv.connector == "None":
        return None
    config: dict[str, Any] = {
        "kv_connector": kv.connector,
        "kv_role": KV_ROLE[role],
        "kv_buffer_device": kv.buffer_device,
        # Always explicit: vLLM's default (fail) differs from ours (recompute).
        "kv_load_failure_policy": kv.load_failure_policy,
    }
    extra = dict(kv.extra_config or {})
    if kv.connector == "NixlConnector":
        # The lease the gateway's hand-off budget and the prefill drain are derived from; it
        # replaces one given in extraConfig, so that the three cannot disagree.
        extra["kv_lease_duration"] = kv.lease_seconds
    if extra:
        config["kv_connector_extra_config"] = extra
    return config


def kv_events_config(events: KVEventsSpec, model: ModelSpec) -> dict[str, Any] | None:
    """The ``--kv-events-config`` object, or None when the pool publishes no events.

    ``tcp://*:PORT`` binds every address of the pod, its pod IP included.  vLLM binds only an
    endpoint with ``*`` or ``::`` in it and *connects* to any other, so writing the pod IP there
    would make each worker dial out instead of listening for the gateway's subscriptions.
    """
    if not events.enabled:
        return None
    return {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{events.port}",
        "replay_endpoint": f"tcp://*:{events.replay_port}",
        "topic": f"kv@{served_model_name(model)}",
    }


def model_path(model: ModelSpec) -> str:
    """What vLLM loads: a path under the volume mount, or the hub id."""
    if model.volume is not None:
        return f"{model.volume.mount_path.rstrip('/')}/{model.name.lstrip('/')}"
    return model.name


def served_model_name(model: ModelSpec) -> str:
    return model.served_name or model.name


def vllm_command(engine: EngineSpec, model: ModelSpec) -> list[str]:
    """The container command: ``vllm serve`` or the api_server module of older images."""
    if engine.entrypoint == "apiServer":
        return ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", model_path(model)]
    return ["vllm", "serve", model_path(model)]


def vllm_args(
    *,
    model: ModelSpec,
    engine: EngineSpec,
    parallelism: ParallelismSpec,
    kv: KVTransferSpec,
    role: str,
    extra_args: list[str],
    kv_events: KVEventsSpec | None = None,
) -> list[str]:
    """The container args (flags after the model), spelled for the engine's vLLM release."""
    spelling = dialect(engine.resolved_vllm_version)
    args = [
        "--served-model-name",
        served_model_name(model),
        "--host",
        "0.0.0.0",
        "--port",
        str(engine.port),
        "--tensor-parallel-size",
        str(parallelism.tensor),
    ]
    if parallelism.pipeline > 1:
        args += ["--pipeline-parallel-size", str(parallelism.pipeline)]
    if parallelism.data > 1:
        args += ["--data-parallel-size", str(parallelism.data)]
    args += ["--block-size", str(engine.block_size)]
    if model.revision:
        args += ["--revision", model.revision]
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    if engine.max_num_seqs is not None:
        args += ["--max-num-seqs", str(engine.max_num_seqs)]
    if engine.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(engine.max_num_batched_tokens)]
    if engine.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    if engine.prefix_caching is not None:
        args.append(spelling.switch("--enable-prefix-caching", engine.prefix_caching))
    if engine.enforce_eager:
        args.append("--enforce-eager")
    config = kv_transfer_config(kv, role)
    if config is not None:
        args += ["--kv-transfer-config", json.dumps(config, sort_keys=True, separators=(",", ":"))]
    events = kv_events_config(kv_events, model) if kv_events is not None else None
    if events is not None:
        args += ["--kv-events-config", json.dumps(events, sort_keys=True, separators=(",", ":"))]
    return args + list(engine.extra_args) + list(extra_args)


def kv_hash_seed(name: str, namespace: str, owner: dict[str, Any] | None) -> str:
    """The ``PYTHONHASHSEED`` a DisaggDeployment's workers and gateway share: derived from the
    owner's uid (not public, so the engines' Python hash randomization keeps an unknown seed),
    else from the name (renders without an owner: tests, ``disagg plan --emit``)."""
    identity = (owner or {}).get("uid") or f"{namespace}/{name}"
    return str(int(hashlib.sha256(identity.encode()).hexdigest()[:7], 16))


def engine_hash_seed(engine: EngineSpec) -> str | None:
    """A ``PYTHONHASHSEED`` the user set as a literal in ``engine.env`` (it wins over ours)."""
    for var in engine.env:
        if var.name == "PYTHONHASHSEED" and var.value is not None:
            return str(var.value)
    return None


def vllm_env(
    *,
    model: ModelSpec,
    engine: EngineSpec,
    kv: KVTransferSpec,
    kv_events: KVEventsSpec | None = None,
) -> list[dict[str, Any]]:
    """Environment of the worker container (RDMA/UCX variables are added by ``rdma``)."""
    env: list[dict[str, Any]] = []
    user_set = any(var.name == "PYTHONHASHSEED" for var in engine.env)
    if kv_events is not None and kv_events.enabled and kv_events.hash_seed and not user_set:
        # vLLM seeds block hashes with it: the gateway, given the same seed, computes them too.
        env.append({"name": "PYTHONHASHSEED", "value": kv_events.hash_seed})
    if kv.connector == "NixlConnector":
        # Decode workers dial this address: it must be the pod IP, not vLLM's "localhost".
        env.append(
            {
                "name": "VLLM_NIXL_SIDE_CHANNEL_HOST",
                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
            }
        )
        env.append({"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(kv.side_channel_port)})
    env.append({"name": "VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "value": str(HTTP_KEEP_ALIVE_SECONDS)})
    if model.token_secret_ref is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": model.token_secret_ref.name,
                        "key": model.token_secret_ref.key,
                    }
                },
            }
        )
    env += [e.to_wire() for e in engine.env]
    return env
