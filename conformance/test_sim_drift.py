"""The simulator against the same vLLM: its flags, connectors, roles, env vars and defaults.

The simulator stands in for vLLM in every pod of the local cluster, so whatever it accepts must be
something vLLM accepts too, and where it models a vLLM setting it must read it as vLLM does.  A
known difference is listed in ``KNOWN_DRIFT`` as a strict xfail: the day the simulator is fixed
the xfail turns into a failure and the entry must go.
"""

from __future__ import annotations

import ast
import json
from typing import Any, get_args

import pytest
from vllm.config.kv_transfer import KVRole, KVTransferConfig
from vllm_cli import (
    API_SERVER,
    SERVE,
    known_env_vars,
    parse_worker_argv,
    registered_connectors,
    serve_actions,
    serve_option_strings,
)
from workers import ROOT, all_workers, argv_params

from disagg.sim import config as sim_config
from disagg.sim.cli import build_parser, parse_config

SIM_SOURCES = sorted((ROOT / "operator" / "disagg" / "sim").glob("*.py"))
WORKERS = all_workers()

#: Simulator defaults that differ from vLLM 0.33's, reported to the simulator's owner.
KNOWN_DRIFT: dict[str, str] = {}


def _vllm_flags() -> list[str]:
    """The option strings the simulator declares as vLLM's (all but its own ``--sim-*``)."""
    return [
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if not option.startswith("--sim-") and option not in ("-h", "--help")
    ]


def _serve_action(option: str) -> Any:
    return next(a for a in serve_actions() if option in a.option_strings)


def _drift(key: str) -> Any:
    if key in KNOWN_DRIFT:
        return pytest.param(key, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DRIFT[key]))
    return key


def test_every_vllm_flag_the_simulator_declares_exists_in_vllm() -> None:
    declared = serve_option_strings()
    flags = _vllm_flags()
    assert flags, "the simulator declares no vLLM flag"
    assert [f for f in flags if f not in declared] == []


def test_simulator_connectors_and_roles_are_vllm_s() -> None:
    assert registered_connectors() >= sim_config.KNOWN_CONNECTORS
    assert set(sim_config.KV_ROLES) == set(get_args(KVRole))


def _sim_env_vars() -> list[str]:
    """``VLLM_*`` names the simulator's sources mention (string constants)."""
    return sorted(
        {
            node.value
            for path in SIM_SOURCES
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("VLLM_")
            and node.value.replace("_", "").isalnum()
            and node.value.isupper()
        }
    )


def test_the_simulator_reads_vllm_env_vars() -> None:
    assert {"VLLM_NIXL_SIDE_CHANNEL_HOST", "VLLM_NIXL_SIDE_CHANNEL_PORT"} <= set(_sim_env_vars())


@pytest.mark.parametrize("name", [_drift(n) for n in _sim_env_vars()])
def test_every_vllm_env_var_the_simulator_reads_is_known_to_vllm(name: str) -> None:
    assert name in known_env_vars()


@pytest.mark.parametrize(
    "flag",
    [_drift(f) for f in _vllm_flags() if f not in ("--model", "--host")],
)
def test_simulator_default_is_vllm_s_where_vllm_has_one(flag: str) -> None:
    """``--model``: vLLM falls back to a small hub model, the simulator needs one named (the
    operator always renders it); ``--host``: vLLM's unset host and the sim's 0.0.0.0 both bind
    every interface.  vLLM defaults of ``None`` are decided by platform and model later."""
    vllm_default = _serve_action(flag).default
    if vllm_default is None:
        return
    sim_default = next(a for a in build_parser()._actions if flag in a.option_strings).default
    assert sim_default == vllm_default


@pytest.mark.parametrize("key", [_drift("kv_load_failure_policy")])
def test_simulator_kv_defaults_are_vllm_s(key: str) -> None:
    minimal = json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"})
    ours = sim_config.KVTransferConfig.parse(minimal)
    theirs = KVTransferConfig(**json.loads(minimal))
    assert ours.load_failure_policy == theirs.kv_load_failure_policy


@pytest.mark.parametrize("worker", argv_params(WORKERS))
def test_simulator_reads_every_rendered_command_line_as_vllm_does(worker: Any) -> None:
    argv = worker.argv
    vllm_args = parse_worker_argv(argv)
    sim = parse_config(argv[1:] if tuple(argv[:2]) == SERVE else argv[len(API_SERVER) :])
    assert sim.model == vllm_args.model
    assert list(sim.served_model_names) == vllm_args.served_model_name
    assert sim.port == vllm_args.port
    assert sim.tensor_parallel_size == vllm_args.tensor_parallel_size
    assert sim.data_parallel_size == vllm_args.data_parallel_size
    assert sim.block_size == vllm_args.block_size
    rendered = worker.container["args"]
    for name in ("max_num_seqs", "max_model_len", "gpu_memory_utilization"):
        if f"--{name.replace('_', '-')}" in rendered:  # unset, defaults may differ (see above)
            assert getattr(sim, name) == getattr(vllm_args, name), name
    kv = vllm_args.kv_transfer_config
    if kv is not None:
        assert sim.kv_transfer.connector == kv.kv_connector
        assert sim.kv_transfer.role == kv.kv_role
        assert sim.kv_transfer.load_failure_policy == kv.kv_load_failure_policy
        assert sim.kv_transfer.extra == kv.kv_connector_extra_config
        lease = kv.kv_connector_extra_config.get("kv_lease_duration")
        if lease is not None:  # the one extra-config key the simulator acts on
            assert sim.kv_lease_s == float(lease)
