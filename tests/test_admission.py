"""Admission of the generated CRDs, offline: schema + CEL via cel-python.

The e2e tier sends the same cases to a real API server (e2e/test_admission.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from disagg.api import DisaggDeploymentSpec, InferencePoolSpec
from tests.admission import Rejection, admit
from tests.admission_cases import INVALID, VALID, Case, Edge, disagg, pool

ROOT = Path(__file__).parent.parent
#: The shipped examples and the GPU tier's resources (what real vLLM is started from).
EXAMPLES = sorted(ROOT.joinpath("examples").glob("*.yaml")) + sorted(
    ROOT.joinpath("bench", "gpu").glob("*.yaml")
)


def test_the_case_lists_cover_the_acceptance_counts() -> None:
    ours = [c for c in INVALID if c.ours]
    print(
        f"admission cases: {len(INVALID)} invalid ({len(ours)} with our message), "
        f"{len(VALID)} valid"
    )
    assert len(ours) >= 60 and len(VALID) >= 10
    assert len({c.id for c in INVALID} | {e.id for e in VALID}) == len(INVALID) + len(VALID)


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_invalid_cr_is_rejected_naming_the_field(case: Case) -> None:
    rejections = admit(case.object())
    assert rejections, f"{case.id} was admitted"
    wanted = case.field.removeprefix("spec.").removeprefix("metadata.")
    joined = "; ".join(f"{r.path}: {r.message}" for r in rejections)

    # jsonschema words bounds/enums differently from the API server; the field path and, for
    # CEL rules, our own message are what must match here.
    def names_field(r: Rejection) -> bool:
        path = r.path.replace("[0]", ".0")
        if case.ours:
            return path == "." + case.field.replace("[0]", ".0") and case.message in r.message
        if wanted.replace("[0]", ".0") in path:
            return True
        # jsonschema reports a missing property on its parent: ".spec: 'model' is required"
        parent, _, leaf = wanted.rpartition(".")
        return f"'{leaf}' is a required property" in r.message and path.endswith(parent)

    assert any(names_field(r) for r in rejections), joined
    assert len(rejections) == 1, f"{case.id} breaks more than the one thing it tests: {joined}"


@pytest.mark.parametrize("edge", VALID, ids=[e.id for e in VALID])
def test_valid_edge_case_is_admitted(edge: Edge) -> None:
    assert admit(edge.object()) == [], edge.why


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_admitted(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert admit(doc) == [], path


def test_valid_base_objects_are_admitted() -> None:
    assert admit(pool()) == []
    assert admit(disagg()) == []


def test_omitted_replicas_start_at_the_autoscaling_minimum() -> None:
    """The CRD has no default for replicas; the model derives it from autoscaling."""
    autoscaled = {"enabled": True, "minReplicas": 2, "maxReplicas": 8}
    assert InferencePoolSpec.model_validate(pool(autoscaling=autoscaled)["spec"]).replicas == 2
    assert InferencePoolSpec.model_validate(pool()["spec"]).replicas == 1
    explicit = pool(replicas=5, autoscaling=autoscaled)["spec"]
    assert InferencePoolSpec.model_validate(explicit).replicas == 5
    dd = DisaggDeploymentSpec.model_validate(disagg(decode={"autoscaling": autoscaled})["spec"])
    assert (dd.prefill.replicas, dd.decode.replicas) == (1, 2)


def test_reserved_names_cover_everything_the_renderer_sets() -> None:
    """A flag or variable the renderer starts to set must join the refused lists (or be one a
    user may repeat on purpose): otherwise extraArgs/env could silently override it."""
    from disagg.api.common import EngineSpec, KVTransferSpec, ModelSpec, ParallelismSpec, RDMASpec
    from disagg.api.overrides import OPERATOR_ENV, RDMA_ENV_RULE, RENDERED_FLAGS
    from disagg.render.rdma import rdma_env
    from disagg.render.vllm import vllm_args, vllm_env

    model = ModelSpec(name="m", revision="main")
    engine = EngineSpec(
        max_model_len=8192,
        max_num_seqs=8,
        gpu_memory_utilization=0.9,
        max_num_batched_tokens=2048,
        prefix_caching=False,
        enforce_eager=True,
    )
    args = vllm_args(
        model=model,
        engine=engine,
        parallelism=ParallelismSpec(tensor=2, pipeline=2, data=2),
        kv=KVTransferSpec(),
        role="prefill",
        extra_args=[],
    )
    # Later values of these are what a user asks for per side (e.g. --max-num-seqs).
    repeatable = {"max-model-len", "max-num-seqs", "gpu-memory-utilization", "revision",
                  "max-num-batched-tokens", "disable-prefix-caching", "enforce-eager"}  # fmt: skip
    flags = {a.removeprefix("--") for a in args if a.startswith("--")}
    assert flags - repeatable - {"kv-transfer-config"} <= set(RENDERED_FLAGS)
    env = {e["name"] for e in vllm_env(model=model, engine=engine, kv=KVTransferSpec())}
    assert env <= set(OPERATOR_ENV)
    rdma = RDMASpec(enabled=True, resource_name="rdma/ib", gid_index=3, hcas=["mlx5_0:1"])
    assert all(f"'{e['name']}'" in RDMA_ENV_RULE for e in rdma_env(rdma))


def _rules(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [v["rule"] for v in node.get("x-kubernetes-validations", []) if "rule" in v]
        return found + [r for value in node.values() for r in _rules(value)]
    if isinstance(node, list):
        return [r for value in node for r in _rules(value)]
    return []


def test_cel_string_literals_use_only_escapes_the_api_server_accepts() -> None:
    """The API server's CEL refuses an unknown escape (a backslash before a dot) when the CRD is
    installed, while cel-python, which the tests above use, accepts it: check the literals."""
    import re

    valid = set("\\\"'`?abfnrtvxuU01234567")
    rules = [r for path in sorted((ROOT / "crds").glob("*.yaml"))
             for r in _rules(yaml.safe_load(path.read_text()))]  # fmt: skip
    assert any("matches(" in r for r in rules)
    for rule in rules:
        for literal in re.findall(r"'((?:[^'\\]|\\.)*)'", rule):
            bad = [m for m in re.findall(r"\\(.)", literal) if m not in valid]
            assert not bad, rule
