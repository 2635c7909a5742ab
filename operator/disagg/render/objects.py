"""Everything the operator creates for one custom resource, down to each worker container.

The controller reconciles a DisaggDeployment into two InferencePools and the gateway, then each
InferencePool into its Deployment, Service, PDB and autoscaler.  :func:`render_custom_resource`
runs that whole chain offline with the same functions (as a fresh object: no live replicas, no
owner), so ``disagg render``, the conformance tier and the GPU tier all see exactly what a cluster
would run.  :func:`render_workers` picks the vLLM containers out of the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from disagg.api import DisaggDeployment, InferencePool
from disagg.api.common import EngineSpec
from disagg.render.disaggdeployment import render_disaggdeployment_children
from disagg.render.names import LABEL_ROLE
from disagg.render.pool import render_pool_children

KINDS = ("DisaggDeployment", "InferencePool")


class RenderError(ValueError):
    """A document that is not one of our custom resources (the message says why)."""


@dataclass(frozen=True)
class WorkerContainer:
    """One rendered vLLM container of a pool's Deployment."""

    pool: str
    """The InferencePool (and Deployment) name."""
    role: str
    """``prefill``, ``decode`` or ``aggregated``."""
    vllm_version: str
    """The release the container was rendered for."""
    container: dict[str, Any]
    """The container exactly as it lands in the Deployment (after the ``podTemplate`` overlay)."""

    @property
    def argv(self) -> list[str]:
        """What the container runs: command followed by args."""
        return [*self.container.get("command", []), *self.container.get("args", [])]

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "role": self.role,
            "vllmVersion": self.vllm_version,
            "image": self.container.get("image"),
            "command": list(self.container.get("command", [])),
            "args": list(self.container.get("args", [])),
            "env": list(self.container.get("env", [])),
        }


def render_custom_resource(doc: dict[str, Any], namespace: str = "default") -> list[dict[str, Any]]:
    """Every object the operator applies for ``doc``, the child pools' own children included."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in KINDS:
        raise RenderError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise RenderError(f"{kind} without metadata.name")
    if kind == "InferencePool":
        pool = InferencePool.model_validate(doc)
        return render_pool_children(
            name=name, namespace=namespace, spec=pool.spec, replicas=pool.spec.replicas
        )
    deployment = DisaggDeployment.model_validate(doc)
    objects = render_disaggdeployment_children(name, namespace, deployment.spec)
    for child in [o for o in objects if o["kind"] == "InferencePool"]:
        child_pool = InferencePool.model_validate(child)
        objects += render_pool_children(
            name=child["metadata"]["name"],
            namespace=namespace,
            spec=child_pool.spec,
            replicas=child_pool.spec.replicas,
            deployment=name,
        )
    return objects


def render_workers(doc: dict[str, Any], namespace: str = "default") -> list[WorkerContainer]:
    """The vLLM containers of every pool Deployment ``doc`` renders to, in render order."""
    objects = render_custom_resource(doc, namespace)  # validates the whole resource first
    engine = EngineSpec.model_validate(doc["spec"].get("engine") or {})
    workers = []
    for obj in objects:
        if obj["kind"] != "Deployment" or LABEL_ROLE not in obj["metadata"]["labels"]:
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            workers.append(
                WorkerContainer(
                    pool=obj["metadata"]["name"],
                    role=obj["metadata"]["labels"][LABEL_ROLE],
                    vllm_version=engine.resolved_vllm_version,
                    container=container,
                )
            )
    return workers
