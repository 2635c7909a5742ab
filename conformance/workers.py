"""Every worker container the operator renders, for the conformance tier to feed to vLLM.

Two sources, rendered live through the same functions the controller calls
(:mod:`disagg.render.objects`; never read back from the golden files, so a change to
``disagg.render`` is seen here at once):

* the shipped CRs: ``examples/*.yaml``, ``tests/scenarios/*.yaml`` and the GPU tier's
  ``bench/gpu/*.yaml`` (what real vLLM is started from on a GPU);
* a generated matrix of standalone pools: every connector x every role x RDMA on/off x TP
  1/2/4/8 x both entrypoints, with the settings that change the command line or environment
  (revision, limits, extra config, load-failure policy, the switched-off prefix cache, eager
  mode) switched on, so each rendered branch of ``render/vllm.py`` and ``render/rdma.py``
  reaches vLLM at least once.

The tier runs once per tested vLLM release, each time in that release's own environment; a run
checks the workers rendered for the installed release: the shipped CRs whose ``vllmVersion``
resolves to it, and the matrix rendered for it (through the image tag, the way most specs name
their release).  Each worker is a :class:`Worker`: an id for the test name, the pool role, and the
container dict exactly as it would land in the Deployment (after the ``podTemplate`` overlay).
"""

from __future__ import annotations

import importlib.metadata
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from disagg.render.objects import render_custom_resource, render_workers

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (
    sorted((ROOT / "examples").glob("*.yaml"))
    + sorted((ROOT / "tests" / "scenarios").glob("*.yaml"))
    + sorted((ROOT / "bench" / "gpu").glob("*.yaml"))
)
#: The vLLM release this run of the tier checks: the one installed in its environment.
INSTALLED_VLLM = importlib.metadata.version("vllm")

CONNECTORS = ("NixlConnector", "MooncakeConnector", "LMCacheConnectorV1")
ROLES = ("prefill", "decode", "aggregated")
TENSOR_PARALLEL = (1, 2, 4, 8)
ENTRYPOINTS = ("serve", "apiServer")

#: A representative ``kv_connector_extra_config`` per connector (VLLM.md's examples).
EXTRA_CONFIG: dict[str, dict[str, Any]] = {
    "NixlConnector": {"backends": ["UCX"]},
    "MooncakeConnector": {"mooncake_protocol": "rdma", "device_name": "mlx5_0"},
    "LMCacheConnectorV1": {},
}


#: Shipped CRs whose worker command line vLLM is known to refuse, with why; the argv tests
#: expect them to fail (strict xfail), so fixing the CR fails the tier until its entry goes.
KNOWN_NONCONFORMING: dict[str, str] = {}


@dataclass(frozen=True)
class Worker:
    """One rendered worker container."""

    id: str
    role: str
    container: dict[str, Any]
    vllm_version: str = ""
    """The release the container was rendered for."""

    @property
    def argv(self) -> list[str]:
        """What the container runs: command followed by args."""
        return [*self.container.get("command", []), *self.container.get("args", [])]

    @property
    def known_nonconforming(self) -> str | None:
        """Why vLLM refuses this worker's argv, if that is known and accepted for now."""
        return next(
            (why for src, why in KNOWN_NONCONFORMING.items() if self.id.startswith(src)), None
        )

    @property
    def env(self) -> list[dict[str, Any]]:
        return list(self.container.get("env", []))


def rendered_objects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Everything the operator creates for one CR, down to each pool's children."""
    return render_custom_resource(doc)


def workers_of(doc: dict[str, Any], source: str) -> list[Worker]:
    """The worker containers one CR renders to (through its child pools for a deployment)."""
    prefix = source if doc["kind"] == "InferencePool" else None
    return [
        Worker(
            id=f"{prefix or f'{source}/{w.pool}'}/{w.container['name']}",
            role=w.role,
            container=w.container,
            vllm_version=w.vllm_version,
        )
        for w in render_workers(doc)
    ]


def shipped_crs() -> list[tuple[str, dict[str, Any]]]:
    """(source id, CR) for every example and test scenario."""
    return [
        (f"{path.parent.name}/{path.stem}", doc)
        for path in SOURCES
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def scenario_workers(version: str = INSTALLED_VLLM) -> list[Worker]:
    """Workers of every shipped example and test scenario rendered for vLLM ``version``."""
    rendered = [w for source, doc in shipped_crs() for w in workers_of(doc, source)]
    workers = [w for w in rendered if w.vllm_version == version]
    if not workers:
        raise RuntimeError(
            f"no worker of {[str(p) for p in SOURCES]} is rendered for vLLM {version}; "
            f"their versions: {sorted({w.vllm_version for w in rendered})}"
        )
    return workers


def matrix_pool(
    connector: str, role: str, rdma: bool, tp: int, entrypoint: str, version: str = INSTALLED_VLLM
) -> dict[str, Any]:
    """A standalone InferencePool CR for one point of the matrix, for vLLM ``version``."""
    spec: dict[str, Any] = {
        "role": role,
        "model": {"name": "org/model-7b", "servedName": "model", "revision": "main"},
        "engine": {
            "image": f"vllm/vllm-openai:v{version}",
            "entrypoint": entrypoint,
            "maxModelLen": 32768,
            "maxNumSeqs": 128,
            "maxNumBatchedTokens": 4096,
            "gpuMemoryUtilization": 0.9,
            "blockSize": 32 if rdma else 16,
            # Both spellings of a switch: on for RDMA pools, off (the release's negative) else.
            "prefixCaching": rdma,
            "enforceEager": tp == 1,
        },
        "parallelism": {"tensor": tp},
        "kvTransfer": {
            "connector": connector,
            "extraConfig": EXTRA_CONFIG[connector] or None,
            "loadFailurePolicy": "recompute" if role == "decode" else None,
        },
        "rdma": (
            {
                "enabled": True,
                "resourceName": "rdma/roce_gdr",
                "transport": "roce",
                "gidIndex": 3,
                "hcas": ["mlx5_0:1"],
                "networks": ["rdma/roce-net"],
            }
            if rdma
            else {"enabled": False}
        ),
    }
    spec["kvTransfer"] = {k: v for k, v in spec["kvTransfer"].items() if v is not None}
    return {
        "apiVersion": "disagg.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": f"m-{role}-tp{tp}"},
        "spec": spec,
    }


def matrix_workers(version: str = INSTALLED_VLLM) -> list[Worker]:
    """Workers of the generated matrix (connector x role x RDMA x TP x entrypoint)."""
    workers: list[Worker] = []
    for connector, role, rdma, tp, entrypoint in itertools.product(
        CONNECTORS, ROLES, (False, True), TENSOR_PARALLEL, ENTRYPOINTS
    ):
        doc = matrix_pool(connector, role, rdma, tp, entrypoint, version)
        source = f"matrix/{connector}-{role}-rdma{'On' if rdma else 'Off'}-tp{tp}-{entrypoint}"
        workers += workers_of(doc, source)
    return workers


def all_workers(version: str = INSTALLED_VLLM) -> list[Worker]:
    return scenario_workers(version) + matrix_workers(version)


def argv_params(workers: list[Worker]) -> list[Any]:
    """``workers`` as pytest params, the known-nonconforming ones as strict xfails."""
    import pytest

    return [
        pytest.param(
            w,
            id=w.id,
            marks=[pytest.mark.xfail(strict=True, reason=w.known_nonconforming)]
            if w.known_nonconforming
            else [],
        )
        for w in workers
    ]
