"""Invalid custom resources and the field each must be rejected on.

Shared by the fast tier (tests/test_admission.py, cel-python) and the e2e tier
(e2e/test_admission.py, a real API server): each case is a valid base object
with one thing broken, the path of the offending field, and a fragment of the
message a user must see.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


def pool(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": "bad-pool"},
        "spec": {"role": "prefill", "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}},
    }
    base["spec"].update(spec)
    return base


def disagg(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "DisaggDeployment",
        "metadata": {"name": "bad-dd"},
        "spec": {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}},
    }
    base["spec"].update(spec)
    return base


@dataclass(frozen=True)
class Case:
    id: str
    obj: dict[str, Any]
    field: str
    """A fragment of the path the API server reports (e.g. ``spec.role``)."""
    message: str
    """A fragment of the message."""
    tags: tuple[str, ...] = field(default=())

    def object(self) -> dict[str, Any]:
        return copy.deepcopy(self.obj)


def _named(obj: dict[str, Any], name: str) -> dict[str, Any]:
    obj["metadata"]["name"] = name
    return obj


INVALID: list[Case] = [
    Case("unknown-role", pool(role="router"), "spec.role", "Unsupported value"),
    Case(
        "unknown-connector",
        pool(kvTransfer={"connector": "P2pNcclConnector"}),
        "spec.kvTransfer.connector",
        "Unsupported value",
    ),
    Case("missing-model", {**pool(), "spec": {"role": "decode"}}, "spec.model", "Required"),
    Case("empty-model-name", pool(model={"name": ""}), "spec.model.name", "at least 1"),
    Case("negative-replicas", pool(replicas=-1), "spec.replicas", "greater than or equal to 0"),
    Case(
        "zero-tensor-parallel",
        pool(parallelism={"tensor": 0}),
        "spec.parallelism.tensor",
        "greater than or equal to 1",
    ),
    Case(
        "autoscaling-min-above-max",
        pool(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas",
        "must not exceed autoscaling.maxReplicas",
    ),
    Case(
        "replicas-above-max",
        pool(replicas=9, autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 4}),
        "spec.replicas",
        "within autoscaling.minReplicas..autoscaling.maxReplicas",
    ),
    Case(
        "replicas-below-min",
        pool(replicas=1, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 4}),
        "spec.replicas",
        "within autoscaling.minReplicas..autoscaling.maxReplicas",
    ),
    Case(
        "rdma-without-resource-name",
        pool(rdma={"enabled": True}),
        "spec.rdma.resourceName",
        "rdma.resourceName is required",
    ),
    Case(
        "gpus-not-matching-parallelism",
        pool(parallelism={"tensor": 4}, resources={"gpus": 2}),
        "spec.resources.gpus",
        "must equal parallelism.tensor",
    ),
    Case(
        "zero-gpus",
        pool(resources={"gpus": 0}),
        "spec.resources.gpus",
        "greater than or equal to 1",
    ),
    Case(
        "prefill-pool-without-connector",
        pool(kvTransfer={"connector": "None"}),
        "spec.kvTransfer.connector",
        "must name a KV connector",
    ),
    Case(
        "side-channel-port-equals-http-port",
        pool(engine={"port": 5600}),
        "spec.kvTransfer.sideChannelPort",
        "must differ",
    ),
    Case(
        "unsupported-block-size",
        pool(engine={"blockSize": 24}),
        "spec.engine.blockSize",
        "Unsupported value",
    ),
    Case(
        "bad-shared-memory-quantity",
        pool(resources={"sharedMemory": "lots"}),
        "spec.resources.sharedMemory",
        "should match",
    ),
    Case(
        "pool-name-not-dns-label",
        _named(pool(), "Prefill_Pool"),
        "metadata.name",
        "DNS-1035 label",
    ),
    Case(
        "nixl-prefill-tp-above-decode",
        disagg(prefill={"parallelism": {"tensor": 8}}, decode={"parallelism": {"tensor": 4}}),
        "spec.prefill.parallelism.tensor",
        "must not exceed decode.parallelism.tensor",
    ),
    Case(
        "nixl-decode-tp-not-multiple",
        disagg(prefill={"parallelism": {"tensor": 4}}, decode={"parallelism": {"tensor": 6}}),
        "spec.decode.parallelism.tensor",
        "multiple of prefill.parallelism.tensor",
    ),
    Case(
        "selective-threshold-negative",
        disagg(gateway={"routing": {"selective": {"minUncachedPromptTokens": -1}}}),
        "spec.gateway.routing.selective.minUncachedPromptTokens",
        "greater than or equal to 0",
    ),
    Case(
        "unknown-scorer",
        disagg(gateway={"routing": {"prefillScorers": [{"type": "random"}]}}),
        "spec.gateway.routing.prefillScorers[0].type",
        "Unsupported value",
    ),
    Case(
        "gpu-budget-below-minimum",
        disagg(
            prefill={"replicas": 2, "parallelism": {"tensor": 4}},
            decode={"replicas": 2, "parallelism": {"tensor": 4}},
            scaling={"gpuBudget": 8},
        ),
        "spec.scaling.gpuBudget",
        "smaller than the GPUs",
    ),
    Case(
        "ratio-min-above-max",
        disagg(scaling={"prefillToDecodeRatio": {"min": 3, "max": 1}}),
        "spec.scaling.prefillToDecodeRatio.min",
        "must not exceed its max",
    ),
    Case(
        "disagg-without-connector",
        disagg(kvTransfer={"connector": "None"}),
        "spec.kvTransfer.connector",
        "must name a KV connector",
    ),
    Case(
        "disagg-name-too-long",
        _named(disagg(), "a" * 60),
        "metadata.name",
        "at most 52 characters",
    ),
    Case(
        "decode-rdma-unknown-transport",
        disagg(rdma={"enabled": True, "resourceName": "rdma/ib", "transport": "infiniband"}),
        "spec.rdma.transport",
        "Unsupported value",
    ),
]
