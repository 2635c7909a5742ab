"""``disagg sim``: vLLM's server command line in, a simulated vLLM server out.

The operator renders pods that run ``vllm serve <model> ...`` or
``python3 -m vllm.entrypoints.openai.api_server --model <model> ...``; the simulator image runs
the same argv through this parser.  So it accepts a leading ``serve``, the model as a positional
or ``--model``, models the engine flags that change behaviour, and accepts (and logs) every other
flag rather than failing the pod.  Its own knobs are ``--sim-*`` flags, each also settable as an
environment variable (``--sim-speedup`` <- ``DISAGG_SIM_SPEEDUP``) for pods whose argv is fixed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from disagg.blockhash import HASH_ALGOS
from disagg.planner.links import LINKS
from disagg.sim.config import ConfigError, FaultConfig, KVEventsConfig, KVTransferConfig, SimConfig

log = logging.getLogger("disagg.sim")


def _length(text: str) -> int:
    """vLLM accepts ``32768``, ``32k`` or ``1m`` for token counts."""
    t = text.strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a token count: {text!r}") from None


def _size(text: str) -> int:
    """Bytes as vLLM reads them: ``2000000000``, ``2g`` (10^9) or ``2G`` (2^30)."""
    t = text.strip()
    scale = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
             "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)  # fmt: skip
    try:
        return int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}") from None


def _sim_flag(
    parser: argparse.ArgumentParser, name: str, kind: Callable[[str], Any], default: Any, help_: str
) -> None:
    env = "DISAGG_SIM_" + name.upper().replace("-", "_")
    value = os.environ.get(env)
    parser.add_argument(
        f"--sim-{name}",
        type=kind,
        default=kind(value) if value is not None else default,
        help=f"{help_} (env {env}; default {default})",
    )


def _lease_s(kv: KVTransferConfig, flag: float | None) -> float:
    """How long a prefill keeps blocks nobody pulled: ``--sim-kv-lease``, else vLLM's own knob
    ``kv_connector_extra_config.kv_lease_duration`` (seconds), else vLLM's default of 30."""
    if flag is not None:
        return flag
    value = kv.extra.get("kv_lease_duration", 30.0)
    try:
        lease = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--kv-transfer-config: kv_lease_duration is not a number: {value!r}"
        ) from None
    if lease <= 0:
        raise ConfigError("--kv-transfer-config: kv_lease_duration must be positive")
    return lease


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="disagg sim",
        usage="disagg sim [serve] [MODEL] [--model MODEL] [vLLM flags] [--sim-* flags]",
        description="A vLLM-compatible engine simulator. Accepts vLLM's server flags; "
        "flags it does not model are accepted and logged.",
    )
    p.add_argument("--model", help="the model (as the api_server module takes it)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    p.add_argument("--kv-transfer-config", default=None, help="JSON, as vLLM takes it")
    p.add_argument("--kv-events-config", default=None, help="JSON, as vLLM takes it")
    p.add_argument("--prefix-caching-hash-algo", choices=HASH_ALGOS, default="sha256")
    p.add_argument("--tokenizer", default=None, help="directory with a tokenizer.json")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=_length, default=8192)
    p.add_argument("--max-model-len", type=_length, default=None)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    p.add_argument("--num-gpu-blocks-override", type=int, default=None)
    p.add_argument("--kv-cache-memory-bytes", type=_size, default=None)
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=False)
    _sim_flag(p, "gpu", str, "h100-sxm", "GPU preset of disagg.planner to time steps with")
    _sim_flag(p, "calibration", str, None, "calibration JSON of that GPU (docs/calibration-*.json)")
    _sim_flag(p, "model-spec", str, None, "model preset of disagg.planner (default: from MODEL)")
    _sim_flag(p, "speedup", float, 1.0, "simulated seconds per wall second")
    _sim_flag(p, "link-gbps", float, 100.0, "P->D KV link bandwidth, Gbit/s")
    _sim_flag(
        p,
        "link",
        str,
        "fabric",
        "KV link profile: fabric (line rate of --sim-link-gbps) or ucx-tcp-emulation (measured)",
    )
    _sim_flag(
        p,
        "kv-lease",
        float,
        None,
        "seconds a prefill holds un-pulled KV blocks; default: kv_connector_extra_config."
        "kv_lease_duration, else 30",
    )
    _sim_flag(
        p,
        "handshake-timeout",
        float,
        5.0,
        "seconds a NIXL handshake with an unreachable side channel takes to fail (ZMQ's 5 s)",
    )
    _sim_flag(p, "default-max-tokens", int, 16, "output tokens when a request sets no max_tokens")
    _sim_flag(p, "record", int, 1000, "recent requests kept for GET /sim/requests")
    _sim_flag(p, "failure-rate", float, 0.0, "fraction of requests answered with an error")
    _sim_flag(p, "failure-status", int, 500, "HTTP status of injected errors")
    _sim_flag(p, "slowdown", float, 1.0, "multiplier on every engine step (a slow GPU)")
    _sim_flag(p, "extra-latency", float, 0.0, "seconds added before each request starts")
    _sim_flag(p, "die-after-tokens", int, -1, "streams die after this many tokens (-1: never)")
    _sim_flag(p, "die-rate", float, 1.0, "fraction of streams --sim-die-after-tokens applies to")
    _sim_flag(
        p,
        "die-mode",
        str,
        "abort",
        "abort (drop the connection), exit (the process), error (SSE error frame)",
    )
    _sim_flag(p, "log-level", str, "info", "log level")
    return p


def parse_config(argv: list[str]) -> SimConfig:
    """A :class:`SimConfig` from a vLLM-style argv; raises ``ConfigError`` on bad values."""
    args = list(argv)
    if args and args[0] == "serve":
        args = args[1:]
    # The model positional comes first (``vllm serve MODEL ...``).  It is taken here, not by
    # argparse, so that the value of an unknown flag (``--revision abc``) is never mistaken for it.
    model_tag = args.pop(0) if args and not args[0].startswith("-") else None
    ns, unknown = build_parser().parse_known_args(args)
    model = ns.model or model_tag
    if not model:
        raise ConfigError("no model given: pass it as `disagg sim MODEL` or `--model MODEL`")
    if ns.model and model_tag and ns.model != model_tag:
        raise ConfigError(f"two different models given: {model_tag!r} and {ns.model!r}")
    for name in (
        "tensor_parallel_size",
        "data_parallel_size",
        "block_size",
        "max_num_seqs",
        "max_num_batched_tokens",
    ):
        if getattr(ns, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if ns.sim_speedup <= 0:
        raise ConfigError("--sim-speedup must be positive")
    if ns.sim_link not in LINKS:
        raise ConfigError(f"--sim-link: unknown link profile {ns.sim_link!r} ({', '.join(LINKS)})")
    if ns.sim_handshake_timeout < 0:
        raise ConfigError("--sim-handshake-timeout must be >= 0")
    if not 0 < ns.gpu_memory_utilization <= 1:
        raise ConfigError("--gpu-memory-utilization must be in (0, 1]")
    kv = (
        KVTransferConfig.parse(ns.kv_transfer_config)
        if ns.kv_transfer_config
        else KVTransferConfig()
    )
    events = KVEventsConfig.parse(ns.kv_events_config) if ns.kv_events_config else KVEventsConfig()
    port_env = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_PORT")
    try:
        side_port = int(port_env) if port_env else None
    except ValueError:
        raise ConfigError(f"VLLM_NIXL_SIDE_CHANNEL_PORT is not a port: {port_env!r}") from None
    faults = FaultConfig(
        error_rate=ns.sim_failure_rate,
        error_status=ns.sim_failure_status,
        slowdown=ns.sim_slowdown,
        extra_latency_s=ns.sim_extra_latency,
        die_after_tokens=ns.sim_die_after_tokens,
        die_rate=ns.sim_die_rate,
        die_mode=ns.sim_die_mode,
    ).validate()
    return SimConfig(
        model=model,
        served_model_names=tuple(ns.served_model_name or [model]),
        host=ns.host,
        port=ns.port,
        tensor_parallel_size=ns.tensor_parallel_size,
        data_parallel_size=ns.data_parallel_size,
        block_size=ns.block_size,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        max_model_len=ns.max_model_len,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        num_gpu_blocks_override=ns.num_gpu_blocks_override,
        kv_cache_memory_bytes=ns.kv_cache_memory_bytes,
        kv_transfer=kv,
        kv_events=events,
        prefix_caching_hash_algo=ns.prefix_caching_hash_algo,
        kv_events_int_hashes=os.environ.get("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "1") != "0",
        tokenizer=ns.tokenizer,
        side_channel_host=os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST") or "localhost",
        side_channel_port=side_port,
        side_channel_port_explicit=port_env is not None,
        gpu=ns.sim_gpu,
        calibration=ns.sim_calibration,
        model_spec=ns.sim_model_spec,
        speedup=ns.sim_speedup,
        link_gbps=ns.sim_link_gbps,
        link=ns.sim_link,
        enforce_eager=ns.enforce_eager,
        kv_lease_s=_lease_s(kv, ns.sim_kv_lease),
        handshake_timeout_s=ns.sim_handshake_timeout,
        exit_on_engine_death=os.environ.get("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH", "0")
        in ("", "0", "false", "False"),
        default_max_tokens=ns.sim_default_max_tokens,
        record_limit=ns.sim_record,
        faults=faults,
        ignored_args=tuple(unknown),
    )


def _keep_alive_s() -> int:
    """vLLM's ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE`` (seconds, default 5): idle HTTP connections close
    after it, and a client pool must expire its idle connections sooner."""
    try:
        return int(os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "5"))
    except ValueError:
        return 5


def main(argv: list[str]) -> int:
    try:
        config = parse_config(argv)
    except (ConfigError, KeyError) as exc:
        print(f"disagg sim: {exc}", file=sys.stderr)
        return 2
    level = os.environ.get("DISAGG_SIM_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.ignored_args:
        log.info("accepted vLLM arguments the simulator does not model: %s", config.ignored_args)

    import uvicorn

    from disagg.sim.app import Simulator

    try:
        simulator = Simulator(config)
    except (KeyError, ValueError) as exc:
        print(f"disagg sim: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        simulator.app(),
        host=config.host,
        port=config.port,
        log_level=level.lower() if level.lower() != "info" else "warning",
        timeout_keep_alive=_keep_alive_s(),
        access_log=False,
    )
    return 0
