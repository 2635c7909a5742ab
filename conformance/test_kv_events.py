"""KV-cache events: the simulator publishes what vLLM 0.33 publishes, hashed as vLLM hashes.

Precise prefix routing rests on two facts this file checks with vLLM's own code:

* ``disagg.blockhash`` computes vLLM's block hashes: for >= 100 random token sequences per
  algorithm, every chained digest equals ``vllm.v1.core.kv_cache_utils.hash_block_tokens`` with
  ``init_none_hash(get_hash_fn_by_name(algo))``, and the 64-bit event key equals
  ``maybe_convert_block_hash``.
* A simulator run with ``--kv-events-config`` publishes ZMQ frames that vLLM's own
  ``msgspec.msgpack.Decoder(KVEventBatch)`` decodes; re-encoding the decoded batch with vLLM's
  encoder gives back the same bytes (the wire layout, field by field); every ``BlockStored``'s
  hashes equal vLLM's hashes of its ``token_ids`` chained from its parent; removals name stored
  blocks; a prefix-cache reset publishes ``AllBlocksCleared``; the replay socket resends the
  same messages byte for byte.

The simulator runs as its own process from the project's virtualenv (``.venv``, what
``make install`` builds): this venv holds vLLM, not our dependencies.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import vllm
import zmq
from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils

from disagg.blockhash import BlockHasher, external
from disagg.sim.process import SimProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
#: vLLM 0.33 derives NONE_HASH from a fixed seed for the SHA-256 algorithms; older releases (0.26)
#: from PYTHONHASHSEED, or from random bytes when it is unset -- so against them both sides run
#: with this seed, as the operator renders it for the workers and the gateway.
FIXED_SEED = not hasattr(kv_cache_utils, "DEFAULT_NONE_HASH_SEED")
SEED = "4242" if FIXED_SEED else None
#: The simulator writes vLLM 0.33's layout; an older decoder still reads it (unknown fields are
#: ignored), but only 0.33's encoder gives back the same bytes.
SAME_LAYOUT = vllm.__version__.startswith("0.33.")
PROJECT_PYTHON = os.environ.get("DISAGG_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
ALGOS = ("sha256", "sha256_cbor")  # xxhash needs the optional xxhash package in both places
SEQUENCES = 120
VOCAB = 128_000


def _vllm_chain(
    algo: str, tokens: list[int], block_size: int, salt: str | None = None
) -> list[bytes]:
    hash_fn = get_hash_fn_by_name(algo)
    parent = None
    out = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        extra = (("cache_salt", salt),) if salt and start == 0 else None
        parent = kv_cache_utils.hash_block_tokens(
            hash_fn, parent, tokens[start : start + block_size], extra
        )
        out.append(parent)
    return out


@pytest.fixture(autouse=True)
def _seed(monkeypatch: pytest.MonkeyPatch) -> None:
    if SEED is not None:
        monkeypatch.setenv("PYTHONHASHSEED", SEED)


@pytest.mark.parametrize("algo", ALGOS)
def test_block_hashes_equal_vllms_for_random_token_sequences(algo: str) -> None:
    kv_cache_utils.init_none_hash(get_hash_fn_by_name(algo))
    ours = BlockHasher(algo, SEED)
    rng = random.Random(f"hashes-{algo}")
    compared = 0
    for i in range(SEQUENCES):
        block_size = rng.choice((1, 16, 32, 64))
        tokens = [
            rng.randrange(VOCAB if i % 2 else 2**31) for _ in range(rng.randrange(block_size, 700))
        ]
        salt = "tenant-a" if i % 10 == 0 else None
        theirs = _vllm_chain(algo, tokens, block_size, salt)
        mine = ours.chain(tokens, block_size, cache_salt=salt)
        assert mine == theirs, f"sequence {i}: block hashes differ from vLLM's"
        assert [external(h) for h in mine] == [
            kv_cache_utils.maybe_convert_block_hash(h) for h in theirs
        ]
        compared += 1
    assert compared >= 100
    # A difference in the seed must show: the hashes are not just equal by construction.
    assert BlockHasher(algo, seed="another-seed").chain(tokens, block_size) != theirs


class Frames:
    """A SUB socket on the simulator's publisher plus a DEALER on its replay socket."""

    def __init__(self, pub_port: int, replay_port: int) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"tcp://127.0.0.1:{pub_port}")
        self.replay_port = replay_port

    def drain(self, timeout_ms: int = 500) -> list[list[bytes]]:
        out = []
        while self.sub.poll(timeout_ms):
            out.append(self.sub.recv_multipart())
        return out

    def replay(self, start: int) -> list[list[bytes]]:
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{self.replay_port}")
        dealer.send_multipart([b"", start.to_bytes(8, "big")])
        out = []
        while dealer.poll(5000):
            frames = dealer.recv_multipart()[1:]  # drop the empty delimiter
            if int.from_bytes(frames[1], "big", signed=True) == -1:
                break
            out.append(frames)
        dealer.close(linger=0)
        return out

    def close(self) -> None:
        self.sub.close(linger=0)
        self.ctx.term()


@pytest.fixture(
    params=[("sha256", "1"), ("sha256_cbor", "1"), ("sha256", "0")],
    ids=lambda p: f"{p[0]}-int{p[1]}",
)
def sim_with_events(request: pytest.FixtureRequest) -> Iterator[tuple[SimProcess, Frames, str]]:
    if not Path(PROJECT_PYTHON).exists():
        pytest.fail(
            f"the simulator runs from the project's venv, {PROJECT_PYTHON}: run `make install`"
        )
    algo, int_hashes = request.param
    pub, replay = free_port(), free_port()
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{pub}",
        "replay_endpoint": f"tcp://*:{replay}",
        "topic": "kv@conformance",
    }
    args = [
        "--model",
        "m",
        "--block-size",
        "16",
        "--num-gpu-blocks-override",
        "300",
        "--prefix-caching-hash-algo",
        algo,
        "--kv-events-config",
        json.dumps(config),
        "--sim-speedup",
        "1000",
    ]
    env = {"VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES": int_hashes}
    if SEED is not None:
        env["PYTHONHASHSEED"] = SEED
    with SimProcess(*args, env=env, python=PROJECT_PYTHON) as sim:
        frames = Frames(pub, replay)
        try:
            yield sim, frames, algo
        finally:
            frames.close()


def test_simulator_frames_decode_with_vllms_classes(
    sim_with_events: tuple[SimProcess, Frames, str],
) -> None:
    sim, frames, algo = sim_with_events
    kv_cache_utils.init_none_hash(get_hash_fn_by_name(algo))
    rng = random.Random(f"sim-{algo}")
    shared = [rng.randrange(VOCAB) for _ in range(96)]
    with httpx.Client(base_url=sim.url, timeout=30) as client:
        for i in range(SEQUENCES):
            own = [rng.randrange(VOCAB) for _ in range(rng.randrange(1, 300))]
            prompt = (shared[: rng.randrange(0, 96)] + own) if i % 3 else own
            answer = client.post(
                "/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 20}
            )
            assert answer.status_code == 200, answer.text
        assert client.post("/reset_prefix_cache").status_code == 200
    live = frames.drain()
    replayed = frames.replay(0)

    assert replayed, "the replay socket sent nothing"
    assert [f[1] for f in replayed] == [i.to_bytes(8, "big") for i in range(len(replayed))]
    by_seq = {f[1]: f for f in replayed}
    for frame in live:  # what a live subscriber saw is what replay resends, byte for byte
        assert by_seq[frame[1]] == frame

    decoder, encoder = msgspec.msgpack.Decoder(KVEventBatch), msgspec.msgpack.Encoder()
    digests: dict[int | bytes, bytes] = {}  # event key -> vLLM's full digest, as learned
    stored_keys: set[int | bytes] = set()
    verified = removed = cleared = 0
    whole_digests = sim.env["VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES"] == "0"
    for topic, _seq, payload in replayed:
        assert topic == b"kv@conformance"
        batch = decoder.decode(payload)
        if SAME_LAYOUT:
            assert encoder.encode(batch) == payload, "the wire layout differs from vLLM's encoder"
        assert batch.data_parallel_rank == 0 and batch.ts > 0
        for event in batch.events:
            if isinstance(event, BlockStored):
                assert event.block_size == 16 and event.medium == "GPU" and event.group_idx == 0
                assert len(event.token_ids) == 16 * len(event.block_hashes)
                parent = (
                    None if event.parent_block_hash is None else digests[event.parent_block_hash]
                )
                hash_fn = get_hash_fn_by_name(algo)
                for n, key in enumerate(event.block_hashes):
                    parent = kv_cache_utils.hash_block_tokens(
                        hash_fn, parent, event.token_ids[16 * n : 16 * (n + 1)]
                    )
                    # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0: the whole digest; else vLLM's int
                    assert key == (
                        parent if whole_digests else kv_cache_utils.maybe_convert_block_hash(parent)
                    )
                    digests[key] = parent
                    stored_keys.add(key)
                verified += 1
            elif isinstance(event, BlockRemoved):
                assert all(key in stored_keys for key in event.block_hashes)
                removed += 1
            else:
                assert isinstance(event, AllBlocksCleared)
                cleared += 1
    print(
        f"\n{algo}: {len(replayed)} messages, {verified} BlockStored verified against vLLM's "
        f"hashes, {removed} BlockRemoved, {cleared} AllBlocksCleared"
    )
    assert verified >= 100, f"only {verified} BlockStored events"
    assert removed > 0, "300 blocks were too many to force an eviction"
    assert cleared == 1


def test_the_gateways_token_ids_are_vllms(tmp_path: Path) -> None:
    """Precise routing hashes the ids the gateway computes: they must be the ids vLLM's own
    tokenizer loader and chat-template rendering give for the same files and request."""
    sys.path.insert(0, str(ROOT))
    from vllm.tokenizers import get_tokenizer

    from disagg.modeltokenizer import ModelTokenizer
    from testbed.tokenizer import write_tokenizer

    directory = write_tokenizer(tmp_path / "tok")
    theirs, ours = get_tokenizer(str(directory)), ModelTokenizer(directory)
    rng = random.Random("tokenizer")
    alphabet = "kalo mine ruto sys policy 123 , . ! é 漢 \n\t"
    for i in range(SEQUENCES):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 400)))
        assert ours.encode_prompt(text) == theirs.encode(text), f"prompt {i}"
        messages = [
            {"role": "system", "content": text[: len(text) // 2]},
            {"role": "user", "content": text[len(text) // 2 :] or "hi"},
        ]
        rendered = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert ours.render_chat(messages) == rendered, f"chat {i}"
        assert ours.encode_chat(messages) == theirs.encode(rendered, add_special_tokens=False)
