"""The check a prefill answer's ``kv_transfer_params`` must pass before a decode worker sees them.

vLLM's decode side trusts these params: malformed ones kill its engine, a wrong host or port costs
a 5 s handshake, blocks that no longer hold this prompt give a wrong answer
(shared/real-vllm/FAULTS.md).  So the gateway never forwards params it has not validated; when
the check fails the request is served decode-only (the decode worker prefills locally) and the
problem is counted and logged.  The check is on:

* shape and types -- ``do_remote_prefill``, a non-empty list of block ids per KV group,
  ``remote_engine_id``, ``remote_request_id``, ``remote_host``, ``remote_port`` (and ``tp_size``,
  ``remote_num_tokens`` when present);
* the block count for the prompt -- the prefill answer's ``usage.prompt_tokens`` over the block
  size, rounded down (older vLLM sends only full blocks) or up (0.26 sends the partial one too);
* provenance -- the host is the prefill worker that answered, the port is its side-channel port
  (from discovery, or the configured one plus data-parallel ranks), the tensor-parallel size is
  its own, and the engine id is not one another prefill worker answered with.

The params are then forwarded verbatim (VLLM.md: newer versions add fields).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from disagg.gateway.routing.frozen import fast_init

MAX_ID = 2**31
_INT_ONLY = {int}
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class HandoffRules:
    block_size: int
    side_channel_port: int | None = None
    """The configured side-channel port, used when discovery reports none per worker."""
    data_parallel_size: int = 1


@fast_init
@dataclass(frozen=True)
class PrefillSource:
    """The prefill worker that answered, as discovery knows it."""

    url: str
    host: str
    side_channel_port: int | None = None
    tensor_parallel: int | None = None


class InvalidParams(ValueError):
    """``kv_transfer_params`` the gateway refuses to forward (the message says why)."""


def _int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _same_host(given: str, expected: str) -> bool:
    if given == expected:  # the usual answer, without normalising either
        return True
    given, expected = given.strip("[]").lower(), expected.strip("[]").lower()
    if given == expected:
        return True
    if given in LOOPBACK and expected in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(given) == ipaddress.ip_address(expected)
    except ValueError:
        return False


def _block_groups(value: Any) -> list[list[int]]:
    if not isinstance(value, list) or not value:
        raise InvalidParams("remote_block_ids must be a non-empty list (of lists) of block ids")
    groups = value if isinstance(value[0], list) else [value]
    if len(groups) > 16:
        raise InvalidParams("remote_block_ids must be a non-empty list (of lists) of block ids")
    for group in groups:
        if not isinstance(group, list) or not group:
            raise InvalidParams("remote_block_ids has an empty or non-list group")
        # Checked in C (a long prompt has hundreds of blocks): plain ints only (not bools).
        if set(map(type, group)) != _INT_ONLY or min(group) < 0 or max(group) >= MAX_ID:
            raise InvalidParams("remote_block_ids must hold non-negative integer block ids")
    return groups


def _prompt_tokens(answer: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    usage = answer.get("usage")
    # ``dict`` first: it is what JSON gives, and the check against the ABC costs a call into
    # ``ABCMeta.__instancecheck__`` (a quarter of a per cent of the gateway's CPU).
    counted = usage.get("prompt_tokens") if isinstance(usage, (dict, Mapping)) else None
    claimed = params.get("remote_num_tokens")
    if claimed is not None and (not _int(claimed) or claimed < 1):
        raise InvalidParams("remote_num_tokens must be a positive integer")
    if _int(counted) and counted >= 1:
        if claimed is not None and claimed != counted:
            raise InvalidParams(
                f"remote_num_tokens {claimed} differs from the answer's {counted} prompt tokens"
            )
        return int(counted)
    if claimed is None:
        raise InvalidParams("no prompt token count (usage) to check the block ids against")
    return int(claimed)


def check_kv_params(
    answer: Mapping[str, Any],
    source: PrefillSource,
    rules: HandoffRules,
    engine_owner: Callable[[str], str | None],
) -> dict[str, Any]:
    """The answer's params if they pass every check; raises ``InvalidParams`` otherwise."""
    params = answer.get("kv_transfer_params")
    if not isinstance(params, dict):
        raise InvalidParams("kv_transfer_params is not an object")
    if params.get("do_remote_prefill") is not True or params.get("do_remote_decode"):
        raise InvalidParams("kv_transfer_params must say do_remote_prefill (and not decode)")
    groups = _block_groups(params.get("remote_block_ids"))
    tokens = _prompt_tokens(answer, params)
    low, high = tokens // rules.block_size, -(-tokens // rules.block_size)
    if not max(1, low) <= len(groups[0]) <= high:
        raise InvalidParams(
            f"{len(groups[0])} block ids for a prompt of {tokens} tokens "
            f"(block size {rules.block_size}: {low}..{high})"
        )
    engine_id, request_id = params.get("remote_engine_id"), params.get("remote_request_id")
    for name, value in (("remote_engine_id", engine_id), ("remote_request_id", request_id)):
        if not isinstance(value, str) or not 0 < len(value) <= 512 or not value.isprintable():
            raise InvalidParams(f"{name} must be a non-empty printable string")
    owner = engine_owner(str(engine_id))
    if owner is not None and owner != source.url:
        raise InvalidParams(f"engine id {engine_id!r} belongs to another prefill worker ({owner})")
    host, port = params.get("remote_host"), params.get("remote_port")
    if not isinstance(host, str) or not _same_host(host, source.host):
        raise InvalidParams(f"remote_host {host!r:.80} is not the prefill worker {source.host}")
    if not _int(port) or not 1 <= port <= 65535:
        raise InvalidParams("remote_port must be a port number")
    base = source.side_channel_port or rules.side_channel_port
    if base is not None and not base <= port < base + rules.data_parallel_size:
        raise InvalidParams(f"remote_port {port} is not the worker's side-channel port {base}")
    tp = params.get("tp_size")
    if tp is not None and (not _int(tp) or tp < 1):
        raise InvalidParams("tp_size must be a positive integer")
    if tp is not None and source.tensor_parallel is not None and tp != source.tensor_parallel:
        raise InvalidParams(f"tp_size {tp} is not the worker's {source.tensor_parallel}")
    return params
