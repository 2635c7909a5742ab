"""Every rendered worker container, handed to the pinned vLLM: argv, KV-transfer JSON, environment.

The workers come from :mod:`workers` (the shipped CRs plus the connector x role x RDMA x TP x
entrypoint matrix); each check runs vLLM's own code via :mod:`vllm_cli`, so a failure message is
vLLM's.  A worker that renders no ``--kv-transfer-config`` (a plain aggregated pool) is only part
of the argv and environment checks.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from vllm_cli import (
    API_SERVER,
    SERVE,
    check_env_value,
    known_env_vars,
    parse_worker_argv,
    serve_option_strings,
    validate_kv_transfer_config,
)
from workers import CONNECTORS, ROLES, TENSOR_PARALLEL, Worker, all_workers, argv_params

WORKERS = all_workers()
KV_WORKERS = [w for w in WORKERS if "--kv-transfer-config" in w.container.get("args", [])]

#: A value for env vars the kubelet fills in (``valueFrom``), so vLLM's getter can read one.
SAMPLE_FROM_FIELD = {"status.podIP": "10.1.2.3"}


def _ids(workers: list[Worker]) -> list[str]:
    return [w.id for w in workers]


def _flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _flag_names(args: list[str]) -> list[str]:
    """The option names in an argv, normalised as FlexibleArgumentParser does (``_`` -> ``-``)."""
    names = []
    for token in args:
        if token.startswith("--"):
            names.append(token.split("=", 1)[0].replace("_", "-"))
        elif token.startswith("-") and len(token) > 1 and not token[1].isdigit():
            names.append(token.split("=", 1)[0])
    return names


@pytest.mark.parametrize("worker", argv_params(WORKERS))
def test_vllm_parses_the_worker_command_line(worker: Worker) -> None:
    """vLLM's server parser accepts the argv, and reads back the values we rendered."""
    args = parse_worker_argv(worker.argv)
    rendered = worker.container["args"]
    assert args.tensor_parallel_size == int(_flag_value(rendered, "--tensor-parallel-size"))
    assert args.port == int(_flag_value(rendered, "--port"))
    assert args.block_size == int(_flag_value(rendered, "--block-size"))
    assert args.served_model_name == [_flag_value(rendered, "--served-model-name")]
    command = worker.container["command"]
    expected_model = command[2] if tuple(command[:2]) == SERVE else _flag_value(command, "--model")
    assert args.model == expected_model


@pytest.mark.parametrize("worker", argv_params(WORKERS))
def test_every_rendered_flag_is_spelled_as_vllm_declares_it(worker: Worker) -> None:
    """No flag relies on argparse's prefix matching: ``--max-num-seq`` parses today as
    ``--max-num-seqs`` but becomes an error the day vLLM adds a second flag with that prefix."""
    declared = serve_option_strings()
    argv = worker.argv
    skip = 2 if tuple(argv[:2]) == SERVE else len(API_SERVER)
    unknown = [name for name in _flag_names(argv[skip:]) if name not in declared]
    assert not unknown, f"{worker.id}: flags vLLM does not declare verbatim: {unknown}"


@pytest.mark.parametrize("worker", argv_params(KV_WORKERS))
def test_kv_transfer_config_is_accepted_by_vllm(worker: Worker) -> None:
    """vLLM's KVTransferConfig takes our JSON unchanged, the connector is registered, and the
    role says what the pool does (prefill produces KV, decode consumes it, aggregated both)."""
    raw = _flag_value(worker.container["args"], "--kv-transfer-config")
    config = validate_kv_transfer_config(raw)
    for key, value in json.loads(raw).items():
        assert getattr(config, key) == value, f"vLLM read {key} as {getattr(config, key)!r}"
    assert config.is_kv_transfer_instance
    assert config.is_kv_producer == (worker.role in ("prefill", "aggregated")), config.kv_role
    assert config.is_kv_consumer == (worker.role in ("decode", "aggregated")), config.kv_role
    # The CLI path (vLLM's TypeAdapter on the flag) reads the same config.
    parsed = parse_worker_argv(worker.argv).kv_transfer_config
    assert parsed.kv_connector == config.kv_connector
    assert parsed.kv_role == config.kv_role
    assert parsed.kv_connector_extra_config == config.kv_connector_extra_config


@pytest.mark.parametrize("worker", WORKERS, ids=_ids(WORKERS))
def test_every_vllm_env_var_is_known_to_vllm(worker: Worker) -> None:
    """Each ``VLLM_*`` variable is one vLLM reads, and vLLM's getter accepts its value."""
    known = known_env_vars()
    for var in worker.env:
        name = var["name"]
        if not name.startswith("VLLM_"):
            continue
        assert name in known, f"{worker.id}: vLLM's {len(known)} env vars do not include {name}"
        if "value" in var:
            check_env_value(name, var["value"])
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            check_env_value(name, SAMPLE_FROM_FIELD[field])


def test_the_matrix_reaches_vllm_with_every_connector_role_and_tp() -> None:
    """The tier is not vacuous: each connector, role and TP size is rendered and parsed above."""
    seen: Counter[tuple[str, str]] = Counter()
    for worker in KV_WORKERS:
        kv = json.loads(_flag_value(worker.container["args"], "--kv-transfer-config"))
        seen[("connector", kv["kv_connector"])] += 1
        seen[("role", worker.role)] += 1
        seen[("tp", _flag_value(worker.container["args"], "--tensor-parallel-size"))] += 1
    missing = (
        [("connector", c) for c in CONNECTORS]
        + [("role", r) for r in ROLES]
        + [("tp", str(t)) for t in TENSOR_PARALLEL]
    )
    assert [key for key in missing if not seen[key]] == []
    rdma = [w for w in WORKERS if any(e["name"] == "UCX_TLS" for e in w.env)]
    assert rdma and len(rdma) < len(WORKERS), "RDMA on and off must both be rendered"
    names = {e["name"] for w in WORKERS for e in w.env if e["name"].startswith("VLLM_")}
    assert {"VLLM_NIXL_SIDE_CHANNEL_HOST", "VLLM_NIXL_SIDE_CHANNEL_PORT"} <= names
