"""The one scorer table (``disagg.api.scorers``): the API, the renderer and the gateway agree.

A scorer a user can name in a DisaggDeployment must be one the gateway can build, under the
name the renderer writes into its ConfigMap; a DisaggDeployment that names no scorers must route
exactly as a gateway whose configuration names none; and the CRD and the docs list the same set.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from disagg.api.disaggdeployment import DisaggDeployment, RoutingSpec
from disagg.api.scorers import SCORERS, ScorerKind, ScorerType
from disagg.gateway.config import GatewayConfig
from disagg.gateway.routing import registry
from disagg.gateway.routing.contracts import Endpoint, RoutingRequest, Scorer
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.gateway.routing.prefix_index import PrefixIndex
from disagg.render.gateway import render_gateway_config

ROOT = Path(__file__).parents[1]
MINIMAL = ROOT / "examples" / "disaggdeployment-minimal.yaml"


def _spec(routing: dict[str, Any] | None = None) -> Any:
    doc = yaml.safe_load(MINIMAL.read_text())
    if routing is not None:
        doc["spec"].setdefault("gateway", {})["routing"] = routing
    return DisaggDeployment.model_validate(doc).spec


def _scorers(profile: Any) -> list[tuple[str, float]]:
    return [(p.type, p.weight) for p in profile.scorers]


def test_the_table_lists_every_api_scorer_once_in_the_crd_order() -> None:
    assert tuple(SCORERS) == get_args(ScorerType)
    plugins = [kind.plugin for kind in SCORERS.values()]
    assert len(set(plugins)) == len(plugins)


def test_the_gateway_registers_exactly_the_tables_scorers() -> None:
    assert set(registry.SCORERS) == {kind.plugin for kind in SCORERS.values()}


@pytest.mark.parametrize("name", list(SCORERS))
def test_every_scorer_builds_with_no_parameters_and_scores_in_range(name: ScorerType) -> None:
    scorer = registry.SCORERS[SCORERS[name].plugin]({}, PrefixIndex(16), KVBlockIndex(16))
    assert isinstance(scorer, Scorer)
    endpoints = [Endpoint("http://a", inflight=3, kv_cache_usage=0.5), Endpoint("http://b")]
    request = RoutingRequest("r", prompt_tokens=40, block_hashes=(1, 2))
    scores = scorer.score(request, endpoints)
    assert set(scores) == {"http://a", "http://b"}
    assert all(0.0 <= value <= 1.0 for value in scores.values())


def test_a_row_that_names_no_scorer_class_is_refused() -> None:
    with pytest.raises(TypeError, match="does not implement Scorer"):
        registry.scorer_factory(
            ScorerKind("x", "disagg.gateway.routing.prefix_index.PrefixIndex", "")
        )
    with pytest.raises(ModuleNotFoundError):
        registry.scorer_factory(ScorerKind("x", "disagg.gateway.routing.nothing.X", ""))


def test_every_api_scorer_renders_to_a_config_the_gateway_builds() -> None:
    everything = [{"type": name, "weight": 1 + i} for i, name in enumerate(SCORERS)]
    spec = _spec({"prefillScorers": everything, "decodeScorers": everything})
    config = GatewayConfig.model_validate(render_gateway_config("m", "ns", spec))
    expected = [(kind.plugin, 1.0 + i) for i, kind in enumerate(SCORERS.values())]
    assert _scorers(config.routing.prefill) == expected
    assert _scorers(config.routing.decode) == expected
    router = registry.build_router(config)
    assert [ws.name for ws in router.decode.scorers] == [kind.plugin for kind in SCORERS.values()]


def test_api_defaults_render_to_the_gateways_own_defaults() -> None:
    """An omitted ``routing`` routes like a gateway configuration that names no scorers."""
    rendered = GatewayConfig.model_validate(render_gateway_config("m", "ns", _spec()))
    gateway_default = GatewayConfig()
    assert _scorers(rendered.routing.prefill) == _scorers(gateway_default.routing.prefill)
    assert _scorers(rendered.routing.decode) == _scorers(gateway_default.routing.decode)
    assert RoutingSpec().decode_scorers  # the API really has defaults to compare


def test_the_crd_enum_is_the_table() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "disagg.dev_disaggdeployments.yaml").read_text())
    routing = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["gateway"]["properties"]["routing"]["properties"]
    for field in ("prefillScorers", "decodeScorers"):
        assert routing[field]["items"]["properties"]["type"]["enum"] == list(SCORERS)


def test_the_gateway_docs_describe_every_scorer() -> None:
    table = (ROOT / "docs" / "gateway.md").read_text()
    documented = set(re.findall(r"^\| `([a-z-]+)` \| scorer \|", table, re.MULTILINE))
    assert documented == {kind.plugin for kind in SCORERS.values()}
