"""The routing scorers, in one table: the API's names and defaults, the gateway's plugins.

A scorer is named in three places that must agree: a DisaggDeployment's
``gateway.routing.{prefill,decode}Scorers[].type`` (camelCase, an enum in the CRD), the
gateway's routing configuration (``least-loaded``, the name its plugin registry builds) and the
class that scores.  And the profiles the API defaults to must be the ones the gateway falls back
to when a configuration names none.  This module is that one table; the renderer, the gateway's
registry and its configuration defaults all read it, and ``tests/test_scorer_registry.py`` checks
that they agree.

Why it lives in the API: the names and the default profiles *are* API (the CRD's enum, what
admission accepts, what an omitted field means), and ``disagg.api`` is the bottom layer, which
imports nothing else of ours while the renderer and the gateway already build on it.  A table
anywhere above would make the API import upwards, which the ``api-is-the-bottom`` contract
forbids.  So the table is plain data, and each row names its implementation by dotted path:
the gateway's registry imports that class when it loads (a string is not an import, so the
layering holds; the agreement test imports every path, so a typo cannot ship).  Adding a scorer
is its plugin module under ``disagg.gateway.routing`` plus one row here (and docs/gateway.md).

(The selective-disaggregation decider is not a plugin: there is one, configured by
``gateway.routing.selective``, so it has no name to register.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

ScorerType = Literal["roundRobin", "leastLoaded", "kvCacheUsage", "prefixAffinity", "precisePrefix"]
"""A scorer's name in the API (and the CRD's enum, in this order)."""


@dataclass(frozen=True)
class ScorerKind:
    """One scorer: how the gateway knows it, which class implements it, what it prefers."""

    plugin: str
    """Its name in the gateway's routing configuration and plugin registry."""
    implementation: str
    """``module.Class`` that scores.  A constructor parameter named ``index`` receives the
    pool's prefix index, one named ``kv_index`` the engines' KV-event index; every other
    parameter comes from the configuration's ``params``."""
    summary: str
    """What it prefers, in a few words (the CRD's description of ``type``)."""
    needs_kv_events: bool = False
    """Whether the pool's workers must publish KV events (``--kv-events-config``) for it."""


SCORERS: dict[ScorerType, ScorerKind] = {
    "roundRobin": ScorerKind(
        "round-robin",
        "disagg.gateway.routing.round_robin.RoundRobinScorer",
        "each worker in turn",
    ),
    "leastLoaded": ScorerKind(
        "least-loaded",
        "disagg.gateway.routing.least_loaded.LeastLoadedScorer",
        "in-flight and vLLM's waiting queue",
    ),
    "kvCacheUsage": ScorerKind(
        "kv-cache-usage",
        "disagg.gateway.routing.kv_cache_usage.KVCacheUsageScorer",
        "free KV cache",
    ),
    "prefixAffinity": ScorerKind(
        "prefix-affinity",
        "disagg.gateway.routing.prefix_affinity.PrefixAffinityScorer",
        "prompt blocks likely cached on a worker",
    ),
    "precisePrefix": ScorerKind(
        "precise-prefix",
        "disagg.gateway.routing.precise_prefix.PrecisePrefixScorer",
        "prompt blocks a worker's KV events say it caches; needs gateway.routing.tokenizer",
        needs_kv_events=True,
    ),
}

#: (scorer, weight) of each pool's profile when the DisaggDeployment (or the gateway's
#: configuration) names none.  Prefill goes where the prompt's prefix is cached, then to the least
#: loaded worker.  Decode weighs prefix affinity too: the selective decider skips the prefill pool
#: when the chosen decode worker already caches most of the prompt, which only happens when
#: decode is routed by prefix.
DEFAULT_PREFILL_SCORERS: tuple[tuple[ScorerType, float], ...] = (
    ("prefixAffinity", 2.0),
    ("leastLoaded", 1.0),
)
DEFAULT_DECODE_SCORERS: tuple[tuple[ScorerType, float], ...] = (
    ("prefixAffinity", 1.0),
    ("leastLoaded", 1.0),
    ("kvCacheUsage", 1.0),
)


def needs_kv_events(scorers: list[ScorerType]) -> bool:
    """Whether a pool routed by these scorers must publish vLLM's KV events."""
    return any(SCORERS[s].needs_kv_events for s in scorers)


def plugin_name(scorer: ScorerType) -> str:
    """The gateway's name for an API scorer name."""
    return SCORERS[scorer].plugin


def type_description() -> str:
    """The CRD's description of a scorer's ``type``: every name and what it prefers."""
    return ", ".join(f"``{name}`` ({kind.summary})" for name, kind in SCORERS.items()) + "."


if tuple(SCORERS) != get_args(ScorerType):
    raise RuntimeError("disagg.api.scorers: SCORERS must list exactly ScorerType, in its order")
