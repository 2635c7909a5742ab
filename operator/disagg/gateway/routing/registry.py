"""Build the router from the gateway's configuration: plugins by type name, profiles, decider.

Scorers come from the one scorer table, ``disagg.api.scorers`` (shared with the API and the
renderer, see there why it lives in the API): each row's class is imported here, once, when this
module loads, and built with the plugin's parameters; a constructor parameter named ``index``
receives the pool's shared ``PrefixIndex``, one named ``kv_index`` the gateway's one
``KVBlockIndex`` (the engines' KV events; keyed by worker url, so both pools share it).
Filters and pickers exist only in the gateway's configuration (the API does not expose them),
so they are registered here.  Unknown types and
bad parameters raise ``ValueError`` with the name, so a typo in the ConfigMap stops the gateway
at start-up with a clear message.  ``build_router`` assembles the whole P/D router from a
``GatewayConfig``: one profile and one prefix index per pool, and the selective decider.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from disagg.api.scorers import SCORERS as SCORER_TABLE
from disagg.api.scorers import ScorerKind
from disagg.gateway.config import GatewayConfig, PluginConfig
from disagg.gateway.routing.contracts import Filter, Picker, Profile, Scorer, WeightedScorer
from disagg.gateway.routing.disagg import DisaggRouter
from disagg.gateway.routing.healthy_filter import HealthyFilter
from disagg.gateway.routing.kv_block_index import KVBlockIndex
from disagg.gateway.routing.max_score_picker import MaxScorePicker
from disagg.gateway.routing.prefix_index import PrefixIndex
from disagg.gateway.routing.random_picker import RandomPicker
from disagg.gateway.routing.selective import PrefixDecider

ScorerFactory = Callable[[Mapping[str, Any], PrefixIndex, KVBlockIndex], Scorer]


@dataclass(frozen=True)
class PluginSpec:
    """One plugin in a profile: its registered type name, weight (scorers only), parameters."""

    type: str
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)


def scorer_factory(kind: ScorerKind) -> ScorerFactory:
    """Import ``kind.implementation``; a factory building it (raises if it is no Scorer)."""
    module, _, name = kind.implementation.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not (inspect.isclass(cls) and issubclass(cls, Scorer)):
        raise TypeError(f"{kind.implementation} does not implement Scorer")
    make: Callable[..., Scorer] = cls
    wants = inspect.signature(cls).parameters

    def build(params: Mapping[str, Any], index: PrefixIndex, kv_index: KVBlockIndex) -> Scorer:
        shared: dict[str, Any] = {}
        if "index" in wants:
            shared["index"] = index
        if "kv_index" in wants:
            shared["kv_index"] = kv_index
        return make(**params, **shared)

    return build


SCORERS: dict[str, ScorerFactory] = {
    kind.plugin: scorer_factory(kind) for kind in SCORER_TABLE.values()
}
FILTERS: dict[str, Callable[[Mapping[str, Any]], Filter]] = {
    "healthy": lambda p: HealthyFilter(**p),
}
PICKERS: dict[str, Callable[[Mapping[str, Any]], Picker]] = {
    "max-score": lambda p: MaxScorePicker(**p),
    "random": lambda p: RandomPicker(**p),
}


def _build(
    kind: str, registry: Mapping[str, Callable[..., Any]], spec: PluginSpec, *extra: Any
) -> Any:
    factory = registry.get(spec.type)
    if factory is None:
        known = ", ".join(sorted(registry))
        raise ValueError(f"unknown {kind} type {spec.type!r} (known: {known})")
    try:
        return factory(dict(spec.params), *extra)
    except TypeError as exc:
        raise ValueError(f"bad parameters for {kind} {spec.type!r}: {exc}") from exc


def build_profile(
    name: str,
    scorers: Sequence[PluginSpec],
    index: PrefixIndex,
    filters: Sequence[PluginSpec] = (PluginSpec("healthy"),),
    picker: PluginSpec = PluginSpec("max-score"),
    kv_index: KVBlockIndex | None = None,
) -> Profile:
    """A profile from specs; scorers with weight <= 0 are rejected (drop them instead)."""
    weighted: list[WeightedScorer] = []
    for spec in scorers:
        if spec.weight <= 0:
            raise ValueError(f"scorer {spec.type!r} in profile {name!r}: weight must be > 0")
        weighted.append(
            WeightedScorer(
                spec.weight,
                _build("scorer", SCORERS, spec, index, kv_index or KVBlockIndex(1)),
                spec.type,
            )
        )
    return Profile(
        name=name,
        picker=_build("picker", PICKERS, picker),
        filters=[_build("filter", FILTERS, f) for f in filters],
        scorers=weighted,
    )


def _spec(plugin: PluginConfig) -> PluginSpec:
    return PluginSpec(plugin.type, plugin.weight, plugin.params)


def build_router(config: GatewayConfig) -> DisaggRouter:
    """The P/D router a configuration describes (raises ``ValueError`` naming a bad plugin)."""
    routing = config.routing
    indexes = {role: PrefixIndex(routing.prefix_index_blocks) for role in ("prefill", "decode")}
    events = routing.kv_events
    kv_index = KVBlockIndex(events.max_index_blocks if events else 1)
    profiles = {
        role: build_profile(
            role,
            [_spec(p) for p in profile.scorers],
            indexes[role],
            filters=[_spec(p) for p in profile.filters],
            picker=_spec(profile.picker),
            kv_index=kv_index,
        )
        for role, profile in (("prefill", routing.prefill), ("decode", routing.decode))
    }
    threshold = config.selective.min_uncached_prompt_tokens if config.selective.enabled else 0
    return DisaggRouter(
        profiles["prefill"],
        profiles["decode"],
        indexes["prefill"],
        indexes["decode"],
        PrefixDecider(threshold),
        kv_index,
    )
