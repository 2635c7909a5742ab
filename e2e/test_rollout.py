"""A rollout that changes the model revision under load: no request fails, and no request is
served by a prefill worker of one revision and a decode worker of the other.

While both pools roll, old and new workers serve side by side; the operator labels each pod
with the hash of its KV layout and the gateway pairs within one hash.  The check here does not
trust that machinery: a watcher records each worker pod's IP and the ``--revision`` its container
was started with, and every answered request's route headers (prefill and decode worker URLs)
are looked up in that record.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from e2e.dataplane_load import GatewayLoad
from e2e.operator_process import OperatorProcess
from e2e.test_chaos import GATEWAY, op, pool, ready_pods, wait_ready
from e2e.test_operator import DD, a_disagg, cond_is
from testbed.cluster.kubectl import Kubectl

pytestmark = pytest.mark.e2e
__all__ = ["op"]  # the module-scoped operator fixture, shared with test_chaos

NAME = "roll"
MODEL = {"name": "meta-llama/Llama-3.1-8B-Instruct", "servedName": "llama"}


class RevisionWatcher:
    """Pod IP -> the set of ``--revision`` values seen on worker pods with that IP."""

    def __init__(self, kube: Kubectl) -> None:
        self.kube = kube
        self.by_ip: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            raw = self.kube.kubectl("get", "pods", "-l", f"disagg.dev/deployment={NAME}",
                                    "-o", "json", check=False)  # fmt: skip
            try:
                pods = json.loads(raw).get("items", [])
            except ValueError:
                pods = []
            for pod in pods:
                ip = pod.get("status", {}).get("podIP")
                args = pod["spec"]["containers"][0].get("args") or []
                if ip and "--revision" in args:
                    self.by_ip.setdefault(ip, set()).add(args[args.index("--revision") + 1])
            self._stop.wait(0.5)

    def revision(self, url: str) -> str | None:
        ip = url.split("://", 1)[-1].rsplit(":", 1)[0]
        seen = self.by_ip.get(ip, set())
        return next(iter(seen)) if len(seen) == 1 else None


def revisions_of(kube: Kubectl, selector: str) -> set[str]:
    out = set()
    for pod in kube.items("pods", selector):
        args: list[str] = pod["spec"]["containers"][0]["args"]
        out.add(args[args.index("--revision") + 1])
    return out


def test_a_revision_rollout_under_load_loses_nothing_and_never_pairs_across(
    op: OperatorProcess, kube: Kubectl
) -> None:
    prefill_sel, decode_sel = f"disagg.dev/pool={NAME}-prefill", f"disagg.dev/pool={NAME}-decode"

    def spec(revision: str) -> dict[str, Any]:
        return a_disagg(NAME, model={**MODEL, "revision": revision}, prefill=pool(2),
                        decode=pool(2), gateway=GATEWAY)  # fmt: skip

    kube.apply(spec("r1"))
    kube.wait_for_object(DD, NAME, lambda o: cond_is(o, "Ready", "True"), 240)
    wait_ready(kube, prefill_sel, 2)
    wait_ready(kube, decode_sel, 2)
    service = kube.get("service", f"{NAME}-gateway")
    assert service is not None
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"

    watcher = RevisionWatcher(kube)
    watcher.start()
    load = GatewayLoad(lambda: url, "llama", clients=3, stream_clients=1)
    load.start()
    try:
        time.sleep(5)
        load.set_phase("rollout")
        kube.apply(spec("r2"))

        def rolled() -> bool:
            return all(
                revisions_of(kube, sel) == {"r2"}
                and len(ready_pods(kube, sel)) == len(kube.items("pods", sel)) == 2
                for sel in (prefill_sel, decode_sel)
            )

        kube.wait_for(rolled, 300, "both pools on r2")
        load.set_phase("after")
        time.sleep(5)
    finally:
        outcomes = load.stop()
        watcher.stop()

    summary = {f"{p} / {o}": n for (p, o), n in sorted(outcomes.counts.items())}
    pairs = [
        (
            watcher.revision(r["x-disagg-prefill-worker"]),
            watcher.revision(r["x-disagg-decode-worker"]),
        )
        for r in outcomes.routes
        if r.get("x-disagg-route") == "disaggregated"  # the decode worker loaded P's KV
    ]
    cross = [p for p in pairs if p[0] != p[1]]
    by_route = Counter(r.get("x-disagg-route", "?") for r in outcomes.routes)
    print("\nrollout outcomes:", summary, "routes:", dict(by_route), "pairs:", len(pairs),
          "cross-revision:", len(cross), "errors:", outcomes.errors[:10])  # fmt: skip
    assert outcomes.total("failed") == 0 and outcomes.total("silent") == 0, outcomes.errors
    assert outcomes.counts[("rollout", "ok")] > 10, summary
    assert pairs and None not in {x for p in pairs for x in p}  # every worker was identified
    assert cross == [], cross[:10]
    assert {p for p in pairs} >= {("r1", "r1"), ("r2", "r2")}  # both sides of the rollout
