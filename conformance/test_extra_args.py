"""The ``extraArgs`` admission rule against vLLM's own parser: it refuses exactly what vLLM
would read as a flag the operator renders, in every spelling, and nothing vLLM would read
as another flag.

The rule (``disagg.api.overrides``) is a regular expression the API server runs; the claims
behind it -- ``_`` for ``-``, ``--flag=value``, unambiguous prefixes, one-dash aliases --
are vLLM's parser's behaviour, so they are checked here with that parser.
"""

from __future__ import annotations

import re

import pytest
from vllm_cli import VLLMRejected, parse_worker_argv, serve_actions, serve_option_strings

from disagg.api.overrides import (
    KV_TRANSFER_FLAG_REGEX,
    RENDERED_FLAGS,
    RENDERED_FLAGS_REGEX,
    SHORT_FLAGS,
)

MODEL = ["vllm", "serve", "org/model"]
#: A value vLLM accepts for each refused flag, and the namespace attribute it lands in.
VALUES = {
    "model": ("org/other", "model"),
    "served-model-name": ("other", "served_model_name"),
    "host": ("127.0.0.1", "host"),
    "port": ("9000", "port"),
    "uds": ("/tmp/vllm.sock", "uds"),
    "tensor-parallel-size": ("2", "tensor_parallel_size"),
    "pipeline-parallel-size": ("2", "pipeline_parallel_size"),
    "data-parallel-size": ("2", "data_parallel_size"),
    "block-size": ("32", "block_size"),
    "api-key": ("secret", "api_key"),
    "ssl-keyfile": ("/tmp/key.pem", "ssl_keyfile"),
    "ssl-certfile": ("/tmp/cert.pem", "ssl_certfile"),
}
SHORT = {"t": "tensor-parallel-size", "tp": "tensor-parallel-size", "pp": "pipeline-parallel-size"}
SHORT["dp"] = "data-parallel-size"


def _refused(arg: str) -> bool:
    return re.search(RENDERED_FLAGS_REGEX, arg) is not None


def _dest(flag: str) -> str:
    return VALUES[flag][1]


def _reads(argv_tail: list[str]) -> object:
    """What vLLM makes of ``vllm serve org/model <argv_tail>``: the namespace, or its refusal."""
    try:
        return parse_worker_argv([*MODEL, *argv_tail])
    except VLLMRejected as exc:
        return exc


def _spellings(flag: str) -> list[str]:
    """Every prefix of ``--flag``, with dashes and with underscores."""
    out = []
    for end in range(1, len(flag) + 1):
        prefix = flag[:end]
        out += sorted({f"--{prefix}", f"--{prefix.replace('-', '_')}"})
    return out


def test_every_refused_flag_is_a_vllm_serve_flag() -> None:
    declared = serve_option_strings()
    assert {f"--{f}" for f in RENDERED_FLAGS} <= declared
    assert {f"-{s}" for s in SHORT_FLAGS if s != "t"} <= declared
    assert set(VALUES) == set(RENDERED_FLAGS) and set(SHORT) == set(SHORT_FLAGS)


@pytest.mark.parametrize("flag", RENDERED_FLAGS)
def test_each_refused_spelling_overrides_the_flag_or_fails_in_vllm(flag: str) -> None:
    """A spelling the rule refuses is one vLLM reads as this very flag (the override the rule
    prevents) or refuses itself (ambiguous prefix): the rule never costs a working flag."""
    value, dest = VALUES[flag]
    for spelling in _spellings(flag):
        for argv in ([spelling, value], [f"{spelling}={value}"]):
            assert _refused(argv[0]), argv
            got = _reads(argv)
            if isinstance(got, VLLMRejected):
                continue
            read = getattr(got, dest)
            assert read == value or str(read) == value or read == [value], (argv, read)


@pytest.mark.parametrize("flag", [f for f in RENDERED_FLAGS if f != "model"])
def test_the_full_flag_overrides_what_the_operator_rendered(flag: str) -> None:
    """The class is real: the full flag, in either spelling, changes what vLLM runs with."""
    value, dest = VALUES[flag]
    for spelling in (f"--{flag}", f"--{flag.replace('-', '_')}"):
        got = _reads([spelling, value])
        assert not isinstance(got, VLLMRejected), got
        read = getattr(got, dest)
        assert read == value or str(read) == value or read == [value], (spelling, read)


def test_a_second_model_crashes_serve_and_replaces_the_api_servers() -> None:
    """``vllm serve`` moves ``--model`` to the front, so the rendered model becomes an unknown
    argument and the worker never starts; the api_server entrypoint reads the last one."""
    with pytest.raises(VLLMRejected, match="unrecognized arguments: org/model"):
        parse_worker_argv([*MODEL, "--model", "org/other"])
    api_server = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "org/model"]
    assert parse_worker_argv([*api_server, "--model", "org/other"]).model == "org/other"


@pytest.mark.parametrize("short", sorted(SHORT))
def test_one_dash_aliases_set_the_parallel_sizes(short: str) -> None:
    assert _refused(f"-{short}") and _refused(f"-{short}=2")
    got = _reads([f"-{short}", "2"])
    assert not isinstance(got, VLLMRejected), got
    assert getattr(got, _dest(SHORT[short])) == 2


def test_no_other_vllm_flag_is_refused() -> None:
    """Every flag vLLM declares that the rule matches belongs to a refused flag's action."""
    refused_actions = {
        id(action)
        for action in serve_actions()
        if any(s.lstrip("-") in (*RENDERED_FLAGS, *SHORT_FLAGS) for s in action.option_strings)
    }
    wrongly = sorted(
        option
        for action in serve_actions()
        for option in action.option_strings
        if _refused(option) and id(action) not in refused_actions
    )
    assert wrongly == []
    kv = [o for o in serve_option_strings() if re.search(KV_TRANSFER_FLAG_REGEX, o)]
    assert kv == ["--kv-transfer-config"]


def test_flags_next_to_the_refused_ones_still_parse() -> None:
    """The valid edge case of tests/admission_cases.py parses in vLLM, untouched by the rule."""
    extra = [
        "--max-num-seqs",
        "64",
        "--data-parallel-size-local",
        "1",
        "--model-impl",
        "vllm",
        "--kv-events-config",
        '{"enable_kv_cache_events":true}',
        "--enable-prefix-caching",
    ]
    assert not any(_refused(a) for a in extra)
    got = _reads(extra)
    assert not isinstance(got, VLLMRejected), got
    assert got.max_num_seqs == 64 and got.model == "org/model"
