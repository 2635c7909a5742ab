"""Build plugins and profiles by type name, from plain data (the gateway's config).

Each plugin type is registered once here with a factory taking the plugin's parameters and the
pool's shared ``PrefixIndex``.  Unknown types and bad parameters raise ``ValueError`` with the
name, so a typo in the ConfigMap stops the gateway at start-up with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from disagg.gateway.routing.contracts import Filter, Picker, Profile, Scorer, WeightedScorer
from disagg.gateway.routing.healthy_filter import HealthyFilter
from disagg.gateway.routing.kv_cache_usage import KVCacheUsageScorer
from disagg.gateway.routing.least_loaded import LeastLoadedScorer
from disagg.gateway.routing.max_score_picker import MaxScorePicker
from disagg.gateway.routing.prefix_affinity import PrefixAffinityScorer
from disagg.gateway.routing.prefix_index import PrefixIndex
from disagg.gateway.routing.random_picker import RandomPicker
from disagg.gateway.routing.round_robin import RoundRobinScorer


@dataclass(frozen=True)
class PluginSpec:
    """One plugin in a profile: its registered type name, weight (scorers only), parameters."""

    type: str
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)


SCORERS: dict[str, Callable[[Mapping[str, Any], PrefixIndex], Scorer]] = {
    "round-robin": lambda p, _: RoundRobinScorer(**p),
    "least-loaded": lambda p, _: LeastLoadedScorer(**p),
    "kv-cache-usage": lambda p, _: KVCacheUsageScorer(**p),
    "prefix-affinity": lambda p, index: PrefixAffinityScorer(index, **p),
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
) -> Profile:
    """A profile from specs; scorers with weight <= 0 are rejected (drop them instead)."""
    weighted: list[WeightedScorer] = []
    for spec in scorers:
        if spec.weight <= 0:
            raise ValueError(f"scorer {spec.type!r} in profile {name!r}: weight must be > 0")
        weighted.append(
            WeightedScorer(spec.weight, _build("scorer", SCORERS, spec, index), spec.type)
        )
    return Profile(
        name=name,
        picker=_build("picker", PICKERS, picker),
        filters=[_build("filter", FILTERS, f) for f in filters],
        scorers=weighted,
    )
