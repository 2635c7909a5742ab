"""The checks themselves can fail: known-bad input is refused by vLLM with a specific message."""

from __future__ import annotations

import json

import pytest
from vllm_cli import (
    VLLMRejected,
    check_env_value,
    known_env_vars,
    parse_worker_argv,
    serve_option_strings,
    validate_kv_transfer_config,
)
from workers import INSTALLED_VLLM

from disagg.api.versions import parse_vllm_version

#: vLLM 0.33 removed the NCCL-style connectors' fields and spells negatives ``--disable-x``.
RELEASE_033 = parse_vllm_version(INSTALLED_VLLM) >= (0, 33, 0)

MODEL = ["vllm", "serve", "org/model"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*MODEL, "--blocksize", "16"], "unrecognized arguments: --blocksize"),
        ([*MODEL, "--tensor-parallel-size", "two"], "--tensor-parallel-size"),
        (
            ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m", "--no-such"],
            "unrecognized arguments: --no-such",
        ),
        ([*MODEL, "--kv-transfer-config", '{"kv_connector":"NixlConnector"}'], "kv_role"),
    ],
)
def test_vllm_refuses_a_bad_command_line(argv: list[str], message: str) -> None:
    with pytest.raises(VLLMRejected, match=message):
        parse_worker_argv(argv)


def test_underscored_flags_are_accepted_as_vllm_accepts_them() -> None:
    assert parse_worker_argv([*MODEL, "--block_size", "32"]).block_size == 32


def test_a_non_vllm_command_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a vLLM server command"):
        parse_worker_argv(["disagg", "sim", "m"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        # Removed from vLLM before 0.33 (VLLM.md): the registry no longer has it.
        ({"kv_connector": "P2pNcclConnector", "kv_role": "kv_producer"}, "P2pNcclConnector"),
        ({"kv_connector": "NixlConnector", "kv_role": "kv_sender"}, "kv_role"),
        # A field vLLM does not have at all.
        ({"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_peer": "10.0.0.1"}, "kv_peer"),
    ]
    # A field of the removed NCCL-style connectors: 0.26 still declares it, 0.33 refuses it.
    + (
        [({"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_ip": "10.0.0.1"}, "kv_ip")]
        if RELEASE_033
        else []
    ),
)
def test_vllm_refuses_a_bad_kv_transfer_config(config: dict[str, str], message: str) -> None:
    with pytest.raises(VLLMRejected, match=message):
        validate_kv_transfer_config(json.dumps(config))


@pytest.mark.parametrize(
    ("spelling", "declared"),
    [("--no-enable-prefix-caching", not RELEASE_033), ("--disable-prefix-caching", RELEASE_033)],
)  # fmt: skip
def test_the_release_declares_one_spelling_of_a_switched_off_flag(
    spelling: str, declared: bool
) -> None:
    """Why rendering is per release: ``render/vllm.py`` picks the declared spelling."""
    assert (spelling in serve_option_strings()) is declared
    if declared:
        assert parse_worker_argv([*MODEL, spelling]).enable_prefix_caching is False


def test_env_names_and_values_go_through_vllm() -> None:
    assert "VLLM_NIXL_SIDE_CHANNEL_PORT" in known_env_vars()
    assert "VLLM_NIXL_SIDE_CHANNEL_PROT" not in known_env_vars()
    assert check_env_value("VLLM_NIXL_SIDE_CHANNEL_PORT", "5601") == 5601
    with pytest.raises(VLLMRejected, match="VLLM_HTTP_TIMEOUT_KEEP_ALIVE"):
        check_env_value("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "five")
