"""Deterministic names and labels of everything the operator creates.

Names never come from ``generateName``: a handler that runs twice must apply the
same object twice.  Admission caps a DisaggDeployment's name at 52 characters and
a pool's at 63, so ``<dd>-prefill``/``-decode``/``-gateway`` and every per-pool
object name stay valid DNS-1035 labels (Service names).
"""

from __future__ import annotations

PART_OF = "disagg"
MANAGED_BY = "disagg-operator"

LABEL_POOL = "disagg.dev/pool"
LABEL_ROLE = "disagg.dev/role"
LABEL_DEPLOYMENT = "disagg.dev/deployment"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
#: On worker pods: the hash of their KV layout and their tensor-parallel size (``kvlayout``).
LABEL_KV_LAYOUT = "disagg.dev/kv-layout"
LABEL_TENSOR_PARALLEL = "disagg.dev/tensor-parallel"

#: The field manager of every server-side apply the operator sends.
FIELD_MANAGER = "disagg-operator"


def pool_name(deployment: str, role: str) -> str:
    """Name of a DisaggDeployment's child InferencePool (``llama-prefill``)."""
    return f"{deployment}-{role}"


def gateway_name(deployment: str) -> str:
    """Name of a DisaggDeployment's gateway Deployment, Service and ConfigMap."""
    return f"{deployment}-gateway"


def pool_selector(pool: str) -> dict[str, str]:
    """The immutable selector of a pool's Deployment, Service and PDB."""
    return {LABEL_POOL: pool}


def selector_string(labels: dict[str, str]) -> str:
    """A label selector in the string form ``/scale`` and kubectl use."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def pool_labels(pool: str, role: str, deployment: str | None) -> dict[str, str]:
    """Labels on a pool's objects and pods: who they belong to and what they do."""
    labels = {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": pool,
        LABEL_COMPONENT: role,
        "app.kubernetes.io/part-of": PART_OF,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_POOL: pool,
        LABEL_ROLE: role,
    }
    if deployment:
        labels[LABEL_DEPLOYMENT] = deployment
    return labels


def gateway_labels(deployment: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "disagg-gateway",
        "app.kubernetes.io/instance": gateway_name(deployment),
        LABEL_COMPONENT: "gateway",
        "app.kubernetes.io/part-of": PART_OF,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_DEPLOYMENT: deployment,
    }


def gateway_selector(deployment: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: deployment, LABEL_COMPONENT: "gateway"}
