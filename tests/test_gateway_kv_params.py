"""The check every prefill answer's ``kv_transfer_params`` passes before a decode worker sees
them (``disagg.gateway.handoff``): one table row per way a param can be wrong."""

from __future__ import annotations

from typing import Any

import pytest

from disagg.gateway.handoff import HandoffRules, InvalidParams, PrefillSource, check_kv_params

SOURCE = PrefillSource(
    "http://10.0.0.7:8000", "10.0.0.7", side_channel_port=5600, tensor_parallel=2
)
RULES = HandoffRules(block_size=16, side_channel_port=None, data_parallel_size=2)
GOOD = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_block_ids": [[11, 12, 13]],
    "remote_engine_id": "engine-a",
    "remote_request_id": "cmpl-r1",
    "remote_host": "10.0.0.7",
    "remote_port": 5600,
    "tp_size": 2,
    "remote_num_tokens": 40,
    "remote_blocks_expiry_time": None,
    "a_future_field": {"kept": True},
}


def answer(prompt_tokens: int | None = 40, **changes: Any) -> dict[str, Any]:
    params = {**GOOD, **changes}
    params = {k: v for k, v in params.items() if v != "<drop>"}
    body: dict[str, Any] = {"kv_transfer_params": params}
    if prompt_tokens is not None:
        body["usage"] = {"prompt_tokens": prompt_tokens}
    return body


def nobody(_: str) -> str | None:
    return None


def test_valid_params_pass_verbatim() -> None:
    assert check_kv_params(answer(), SOURCE, RULES, nobody) == GOOD
    # full blocks only (older vLLM), a flat list, the second data-parallel rank's port
    assert check_kv_params(answer(remote_block_ids=[[1, 2]]), SOURCE, RULES, nobody)
    assert check_kv_params(answer(remote_block_ids=[1, 2, 3]), SOURCE, RULES, nobody)
    assert check_kv_params(answer(remote_port=5601), SOURCE, RULES, nobody)
    loopback = PrefillSource("http://127.0.0.1:8100", "127.0.0.1")
    assert check_kv_params(answer(remote_host="localhost"), loopback, RULES, nobody)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"kv_transfer_params": "x"}, "not an object"),
        (answer(do_remote_prefill=False), "do_remote_prefill"),
        (answer(remote_host="<drop>"), "remote_host"),
        (answer(remote_host=None), "remote_host"),
        (answer(remote_host="10.0.0.8"), "is not the prefill worker"),
        (answer(remote_block_ids="[[11, 12, 13]]"), "remote_block_ids"),
        (answer(remote_block_ids=[]), "remote_block_ids"),
        (answer(remote_block_ids=[[]]), "empty"),
        (answer(remote_block_ids=[[11, "12", 13]]), "integer block ids"),
        (answer(remote_block_ids=[[11, -1, 13]]), "integer block ids"),
        (answer(remote_block_ids=[[11]]), "1 block ids for a prompt of 40 tokens"),
        (answer(remote_block_ids=[[1, 2, 3, 4]]), "4 block ids"),
        (answer(remote_engine_id=None), "remote_engine_id"),
        (answer(remote_engine_id=""), "remote_engine_id"),
        (answer(remote_request_id="<drop>"), "remote_request_id"),
        (answer(remote_port="5600"), "remote_port"),
        (answer(remote_port=True), "remote_port"),
        (answer(remote_port=5602), "side-channel port 5600"),
        (answer(remote_port=70000), "remote_port"),
        (answer(tp_size=1), "tp_size 1"),
        (answer(tp_size="2"), "tp_size"),
        (answer(remote_num_tokens=41), "differs"),
        (answer(None, remote_num_tokens="<drop>"), "no prompt token count"),
    ],
)
def test_invalid_params_are_refused(body: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidParams, match=why):
        check_kv_params(body, SOURCE, RULES, nobody)


def test_an_engine_id_another_prefill_worker_answered_with_is_refused() -> None:
    def owner(engine_id: str) -> str | None:
        return "http://10.0.0.9:8000" if engine_id == "engine-a" else None

    with pytest.raises(InvalidParams, match="belongs to another prefill worker"):
        check_kv_params(answer(), SOURCE, RULES, owner)
    assert check_kv_params(answer(remote_engine_id="engine-b"), SOURCE, RULES, owner)


def test_without_a_known_port_any_port_passes() -> None:
    source = PrefillSource("http://10.0.0.7:8000", "10.0.0.7")
    assert check_kv_params(answer(remote_port=7777), source, RULES, nobody)
    configured = HandoffRules(block_size=16, side_channel_port=7000)
    with pytest.raises(InvalidParams, match="side-channel port 7000"):
        check_kv_params(answer(remote_port=7777), source, configured, nobody)
