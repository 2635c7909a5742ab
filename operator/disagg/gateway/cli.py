"""``disagg gateway``: run the KV-routing gateway.

Local use names the workers on the command line (static discovery)::

    disagg gateway --prefill http://127.0.0.1:8100 --decode http://127.0.0.1:8200 --port 8000

In the cluster the operator mounts the routing ConfigMap and passes ``--config``; its
``discovery.kubernetes`` section makes the gateway follow the pools' Pods.  Flags given
on the command line override the file.  The API key comes from ``--api-key-file`` (or the file's
``apiKeyFile``) or the ``DISAGG_API_KEY`` environment variable; it is never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from disagg.gateway.config import GatewayConfig, StaticDiscovery, load_config
from disagg.gateway.discovery import Discovery, PodDiscovery
from disagg.gateway.discovery import StaticDiscovery as StaticSource
from disagg.gateway.upstream import KubeApiClient, UpstreamError
from disagg.gateway.workers import WORKER_SHARE_ENV

API_KEY_ENV = "DISAGG_API_KEY"


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disagg gateway", description="OpenAI-compatible KV-routing gateway for P/D pools."
    )
    parser.add_argument(
        "--prefill",
        action="append",
        type=_url,
        default=[],
        metavar="URL",
        help="a prefill worker (repeatable)",
    )
    parser.add_argument(
        "--decode",
        action="append",
        type=_url,
        default=[],
        metavar="URL",
        help="a decode worker (repeatable)",
    )
    parser.add_argument("--config", type=Path, help="routing config (JSON or YAML; the ConfigMap)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key-file", type=Path, help=f"file with the API key (or ${API_KEY_ENV})"
    )
    parser.add_argument(
        "--min-uncached-prompt-tokens",
        type=int,
        metavar="N",
        help="selective disaggregation threshold (overrides the config)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="gateway processes sharing the port (SO_REUSEPORT), about one per core",
    )
    return parser


def _read_api_key(config: GatewayConfig, flag: Path | None) -> str | None:
    path = flag or (Path(config.api_key_file) if config.api_key_file else None)
    if path is not None:
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise ValueError(f"API key file {path} is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def resolve(args: argparse.Namespace) -> tuple[GatewayConfig, Discovery]:
    """Merge the file and the flags into a config and pick the discovery source."""
    config = load_config(args.config) if args.config else GatewayConfig()
    if args.prefill or args.decode:
        config.discovery.static = StaticDiscovery(prefill=args.prefill, decode=args.decode)
        config.discovery.kubernetes = None
    share = int(os.environ.get(WORKER_SHARE_ENV, "1") or 1)
    if share > 1:  # one of several processes of one pod: admit this process's share
        for pool in (config.queue.prefill, config.queue.decode):
            pool.max_inflight_per_worker = -(-pool.max_inflight_per_worker // share)
            pool.max_queued = -(-pool.max_queued // share)
            if pool.max_inflight_tokens_per_worker is not None:
                pool.max_inflight_tokens_per_worker = -(
                    -pool.max_inflight_tokens_per_worker // share
                )
            if pool.max_queued_per_client is not None:
                pool.max_queued_per_client = -(-pool.max_queued_per_client // share)
        config.queue.gateway_replicas *= share  # busy workers: each process is a replica
    if args.min_uncached_prompt_tokens is not None:
        if args.min_uncached_prompt_tokens < 0:
            raise ValueError("--min-uncached-prompt-tokens must be >= 0")
        config.selective.min_uncached_prompt_tokens = args.min_uncached_prompt_tokens
    if config.discovery.kubernetes is not None:
        discovery: Discovery = PodDiscovery(config.discovery.kubernetes, KubeApiClient.in_cluster())
    elif config.discovery.static is not None and config.discovery.static.decode:
        static = config.discovery.static
        discovery = StaticSource(static.prefill, static.decode)
    else:
        raise ValueError("no decode workers: pass --decode URL or a --config with discovery")
    return config, discovery


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("disagg gateway: --workers must be >= 1", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from disagg.gateway.app import Gateway

    try:
        config, discovery = resolve(args)
        api_key = _read_api_key(config, args.api_key_file)
        gateway = Gateway(config, discovery, api_key)  # builds the plugins: bad types fail here
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        print(f"disagg gateway: bad config: {problems}", file=sys.stderr)
        return 2
    except (ValueError, OSError, UpstreamError) as exc:
        print(f"disagg gateway: {exc}", file=sys.stderr)
        return 2

    if args.workers > 1:  # checked above in this process; now the N that serve
        from disagg.gateway.workers import supervise

        return supervise(argv, args.workers)
    from disagg.gateway.server import serve

    logging.getLogger(__name__).info(
        "gateway on %s:%d (API key %s)", args.host, args.port, "required" if api_key else "off"
    )
    serve(gateway, args.host, args.port, args.log_level)
    return 0
