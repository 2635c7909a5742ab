"""vLLM's KV-cache events on the wire: the frames a publisher sends and how to read them back.

vLLM (``--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq", ...}'``) sends
one ZMQ PUB message per engine step that changed its prefix cache, three frames:
``[topic, sequence number (8 bytes, big-endian), payload]``.  The payload is msgpack of a
``KVEventBatch``, an *array* ``[ts, events, data_parallel_rank]``; each event is a *map* tagged by
``"type"`` (msgspec's tagged structs), fields in declaration order, fields whose value equals their
default left out:

* ``BlockStored``: ``block_hashes``, ``parent_block_hash``, ``token_ids`` (of all stored blocks),
  ``block_size``, ``lora_id``, ``medium`` (``"GPU"``), ``lora_name`` (always present), then
  ``group_idx`` (KV cache group, 0) and, only when set, ``extra_keys``, ``session_id``, ...
* ``BlockRemoved``: ``block_hashes``, ``medium``, ``group_idx``.
* ``AllBlocksCleared``: nothing but its tag.

Hashes are 64-bit ints by default or whole digests (bytes); see ``disagg.blockhash``.  Older vLLM
releases sent events as positional arrays (``["BlockStored", hashes, parent, ...]``); the decoder
accepts both shapes.  A replay socket (ZMQ ROUTER) answers a request ``[b"", start seq]`` with every
buffered message from that sequence number on, each as ``[b"", topic, seq, payload]``, then an end
marker whose sequence number is -1.

The simulator encodes with :func:`encode_batch`, the gateway decodes with :func:`decode_batch`;
the conformance tier decodes the simulator's bytes with vLLM's own msgspec classes.  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

try:
    import msgpack
except ImportError:  # vLLM's own environment has msgspec instead (it encodes with it)
    msgpack = None
try:
    import msgspec
except ImportError:  # a dependency of ours (the gateway parses JSON with it); optional here
    msgspec = None  # type: ignore[assignment]


def _packb(value: Any) -> bytes:
    if msgpack is not None:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
        return packed
    if msgspec is not None:
        encoded: bytes = msgspec.msgpack.encode(value)  # the same bytes for these values
        return encoded
    raise RuntimeError("KV events need the msgpack package (pip install msgpack)")


def _unpackb(payload: bytes) -> Any:
    """Decoded msgpack; ValueError for anything that is not exactly one msgpack value."""
    if msgpack is not None:
        try:
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise ValueError(str(exc)) from None
    if msgspec is not None:
        try:
            return msgspec.msgpack.decode(payload)
        except msgspec.DecodeError as exc:
            raise ValueError(str(exc)) from None
    raise RuntimeError("KV events need the msgpack package (pip install msgpack)")


END_SEQ = (-1).to_bytes(8, "big", signed=True)
"""Sequence number of the replay socket's end-of-replay marker."""
MEDIUM_GPU = "GPU"

BlockHash = int | bytes


@dataclass(frozen=True)
class BlockStored:
    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = MEDIUM_GPU
    lora_name: str | None = None
    group_idx: int | None = 0
    extra_keys: list[Any] | None = None


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: list[BlockHash]
    medium: str | None = MEDIUM_GPU
    group_idx: int | None = 0


@dataclass(frozen=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True)
class EventBatch:
    ts: float
    events: list[KVEvent] = field(default_factory=list)
    data_parallel_rank: int | None = None


class EventDecodeError(ValueError):
    """A payload that is not a KV event batch (the message says what was wrong)."""


# -- encoding (what vLLM 0.33 sends) ---------------------------------------------------------------


def _event_map(event: KVEvent) -> dict[str, Any]:
    if isinstance(event, BlockStored):
        out: dict[str, Any] = {
            "type": "BlockStored",
            "block_hashes": list(event.block_hashes),
            "parent_block_hash": event.parent_block_hash,
            "token_ids": list(event.token_ids),
            "block_size": event.block_size,
            "lora_id": event.lora_id,
            "medium": event.medium,
            "lora_name": event.lora_name,
        }
        if event.extra_keys is not None:
            out["extra_keys"] = [None if k is None else list(k) for k in event.extra_keys]
        if event.group_idx is not None:
            out["group_idx"] = event.group_idx
        return out
    if isinstance(event, BlockRemoved):
        out = {"type": "BlockRemoved", "block_hashes": list(event.block_hashes)}
        out["medium"] = event.medium
        if event.group_idx is not None:
            out["group_idx"] = event.group_idx
        return out
    return {"type": "AllBlocksCleared"}


#: Fields (tag included) each struct *could* write.  msgspec sizes a struct's map header by
#: that maximum, not by what it keeps after leaving defaults out: ``BlockStored`` (17) always
#: gets a 16-bit header, the others a one-byte fixmap.
_MAX_FIELDS = {"BlockStored": 17, "BlockRemoved": 6, "AllBlocksCleared": 1}


def _struct_map(fields: dict[str, Any]) -> bytes:
    body = b"".join(_pack(k) + _pack(v) for k, v in fields.items())
    if _MAX_FIELDS[fields["type"]] < 16:
        return bytes([0x80 | len(fields)]) + body
    return b"\xde" + len(fields).to_bytes(2, "big") + body


def _pack(value: Any) -> bytes:
    return _packb(value)


def encode_batch(batch: EventBatch) -> bytes:
    """msgpack of a batch, laid out byte for byte as vLLM's msgspec encoder lays out a
    ``KVEventBatch`` (an array; each event a tagged map)."""
    count = 3 if batch.data_parallel_rank is not None else 2
    events = [_struct_map(_event_map(e)) for e in batch.events]
    out = bytes([0x90 | count]) + _pack(float(batch.ts))
    out += _array_head(len(events)) + b"".join(events)
    if batch.data_parallel_rank is not None:
        out += _pack(batch.data_parallel_rank)
    return out


def _array_head(length: int) -> bytes:
    if length < 16:
        return bytes([0x90 | length])
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


# -- decoding (what any vLLM version sends) --------------------------------------------------------

_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
)
_REMOVED_FIELDS = ("block_hashes", "medium")


def _hashes(value: Any, what: str) -> list[BlockHash]:
    if not isinstance(value, list) or not all(
        isinstance(h, bytes) or (isinstance(h, int) and not isinstance(h, bool)) for h in value
    ):
        raise EventDecodeError(f"{what}: block_hashes must be a list of ints or bytes")
    return value


def _event(raw: Any) -> KVEvent:
    if isinstance(raw, list) and raw and isinstance(raw[0], str):  # positional (older vLLM)
        names = _STORED_FIELDS if raw[0] == "BlockStored" else _REMOVED_FIELDS
        raw = {"type": raw[0], **dict(zip(names, raw[1:], strict=False))}
    if not isinstance(raw, dict):
        raise EventDecodeError(
            f"an event must be a map or a tagged array, got {type(raw).__name__}"
        )
    tag = raw.get("type")
    if tag == "BlockStored":
        tokens = raw.get("token_ids")
        size = raw.get("block_size")
        parent = raw.get("parent_block_hash")
        if not isinstance(tokens, list) or not isinstance(size, int) or size < 1:
            raise EventDecodeError("BlockStored: token_ids must be a list and block_size >= 1")
        if parent is not None and not isinstance(parent, int | bytes):
            raise EventDecodeError("BlockStored: parent_block_hash must be an int, bytes or nil")
        return BlockStored(
            _hashes(raw.get("block_hashes"), tag),
            parent,
            tokens,
            size,
            raw.get("lora_id"),
            raw.get("medium"),
            raw.get("lora_name"),
            raw.get("group_idx"),
            raw.get("extra_keys"),
        )
    if tag == "BlockRemoved":
        return BlockRemoved(
            _hashes(raw.get("block_hashes"), tag), raw.get("medium"), raw.get("group_idx")
        )
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    raise EventDecodeError(f"unknown KV event type {tag!r}")


def decode_batch(payload: bytes) -> EventBatch:
    """A batch from a publisher's payload frame; raises :class:`EventDecodeError`."""
    try:
        raw = _unpackb(payload)
    except ValueError as exc:
        raise EventDecodeError(f"not msgpack: {exc}") from None
    if isinstance(raw, dict):  # a map-shaped batch (not what vLLM sends, but unambiguous)
        raw = [raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")]
    if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[1], list):
        raise EventDecodeError("a KV event batch is [ts, events, data_parallel_rank]")
    ts = raw[0]
    if not isinstance(ts, int | float):
        raise EventDecodeError("a KV event batch's ts must be a number")
    rank = raw[2] if len(raw) > 2 else None
    return EventBatch(
        float(ts), [_event(e) for e in raw[1]], rank if isinstance(rank, int) else None
    )


def parse_seq(frame: bytes) -> int:
    """A frame's sequence number (signed: the replay end marker is -1)."""
    if len(frame) != 8:
        raise EventDecodeError(f"a sequence number is 8 bytes, got {len(frame)}")
    return int.from_bytes(frame, "big", signed=True)
