"""``Kubectl``: the e2e tests' handle on a cluster — apply, get, delete, wait, kubectl.

(Named after the tool it drives, not ``Kube``: the operator's own API client is
``disagg.controller.kube.Kube``, and the two must never be mistaken for each other.)

Everything goes through ``kubectl`` with JSON output, so the same helper drives the local
cluster, a kind cluster or any kubeconfig (``E2E_KUBECONFIG``) with no client library in the
way, and every failure carries kubectl's own error text. ``apply`` is server-side apply (the
operator's own write path), so tests exercise field ownership the way production does.

Waiting is always ``wait_for(predicate, timeout)``: poll a condition until it holds or the
deadline passes, then fail with the last observed state — never a fixed sleep.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

Obj = dict[str, Any]


class KubectlError(RuntimeError):
    """kubectl exited non-zero; ``stderr`` has its message (e.g. the API server's rejection)."""

    def __init__(self, args: Iterable[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class WaitTimeout(AssertionError):
    """A ``wait_for`` deadline passed; the message names the condition and the last value."""


class Kubectl:
    """Bound to one kubeconfig and (optionally) one default namespace."""

    def __init__(self, kubectl: str, kubeconfig: Path, namespace: str | None = None) -> None:
        self.kubectl_path = kubectl
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    def in_namespace(self, namespace: str) -> Kubectl:
        return Kubectl(self.kubectl_path, self.kubeconfig, namespace)

    # kubectl ------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run kubectl with this kubeconfig (and ``-n namespace`` unless args name one)."""
        cmd = [self.kubectl_path, f"--kubeconfig={self.kubeconfig}"]
        names_namespace = any(
            a in ("-n", "--namespace", "-A", "--all-namespaces") or a.startswith("--namespace=")
            for a in args
        )
        if self.namespace and not names_namespace:
            cmd += ["-n", self.namespace]
        proc = subprocess.run(
            [*cmd, *args], input=input, capture_output=True, text=True, check=False, timeout=120
        )
        if check and proc.returncode != 0:
            raise KubectlError(args, proc.returncode, proc.stderr)
        return proc.stdout

    # objects ------------------------------------------------------------------------------
    def apply(self, obj_or_yaml: Mapping[str, Any] | list[Mapping[str, Any]] | str) -> str:
        """Server-side apply of a dict, a list of dicts, or YAML/JSON text (may be multi-doc)."""
        if isinstance(obj_or_yaml, str):
            text = obj_or_yaml
        elif isinstance(obj_or_yaml, list):
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": obj_or_yaml})
        else:
            text = json.dumps(obj_or_yaml)
        return self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=e2e",
            "-f",
            "-",
            input=text,
        )

    def create(self, obj: Mapping[str, Any]) -> Obj:
        """Plain create (no apply semantics); raises KubectlError with the server's message."""
        out = self.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(obj))
        result: Obj = json.loads(out)
        return result

    def get(self, kind: str, name: str | None = None, **selectors: str) -> Obj | None:
        """One object (None if absent) or, without ``name``, the List (``items``)."""
        args = ["get", kind, "-o", "json"]
        if name:
            args.insert(2, name)
        if "label_selector" in selectors:
            args += ["-l", selectors["label_selector"]]
        try:
            result: Obj = json.loads(self.kubectl(*args))
        except KubectlError as err:
            if "NotFound" in err.stderr or "not found" in err.stderr:
                return None
            raise
        return result

    def items(self, kind: str, label_selector: str | None = None) -> list[Obj]:
        found = self.get(kind, label_selector=label_selector) if label_selector else self.get(kind)
        return list((found or {}).get("items", []))

    def delete(self, kind: str, name: str, wait: bool = False) -> None:
        self.kubectl("delete", kind, name, "--ignore-not-found", f"--wait={str(wait).lower()}")

    def events(self, involved_name: str | None = None) -> list[Obj]:
        events = self.items("events")
        if involved_name:
            events = [e for e in events if e.get("involvedObject", {}).get("name") == involved_name]
        return events

    # waiting ------------------------------------------------------------------------------
    def wait_for(
        self,
        probe: Callable[[], T | None],
        timeout: float = 60.0,
        what: str = "condition",
        interval: float = 0.5,
    ) -> T:
        """Call ``probe`` until it returns something truthy; return that, or fail at the deadline.

        ``KubectlError`` from the probe counts as "not yet" (an object may not exist yet).
        """
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                value = probe()
                if value is not None and value:
                    return value
                last = value
            except KubectlError as err:
                last = err
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"{what}: not true after {timeout:.0f}s; last: {last!r:.500}")
            time.sleep(interval)

    def wait_unchanged(
        self,
        read: Callable[[], T | None],
        quiet: float,
        timeout: float = 60.0,
        what: str = "nothing changing",
        key: Callable[[T], object] | None = None,
        interval: float = 0.5,
    ) -> T:
        """``read()`` once it has given the same answer (by ``key``) for ``quiet`` seconds in a
        row: what was read at the start of that spell.  A falsy answer or ``KubectlError`` is
        "not yet" and starts the spell again."""
        deadline = time.monotonic() + timeout
        held: tuple[object, float, T] | None = None  # (key, since, value)
        while True:
            now = time.monotonic()
            try:
                value = read()
            except KubectlError:
                value = None
            if not value:
                held = None
            else:
                mark = key(value) if key else value
                if held is None or held[0] != mark:
                    held = (mark, now, value)
                elif now - held[1] >= quiet:
                    return held[2]
            if now >= deadline:
                raise WaitTimeout(f"{what}: still changing after {timeout:.0f}s")
            time.sleep(interval)

    def wait_for_object(
        self, kind: str, name: str, predicate: Callable[[Obj], bool], timeout: float = 60.0
    ) -> Obj:
        """Wait until object ``kind/name`` exists and ``predicate(obj)`` holds; return it."""

        seen: list[Obj | None] = [None]

        def probe() -> Obj | None:
            obj = seen[0] = self.get(kind, name)
            return obj if obj is not None and predicate(obj) else None

        try:
            return self.wait_for(probe, timeout, what=f"{kind}/{name} predicate")
        except WaitTimeout as err:
            last = seen[0]
            state = "absent" if last is None else json.dumps(last.get("status", {}))[:1500]
            raise WaitTimeout(f"{err}; last status of {kind}/{name}: {state}") from None


def condition(obj: Obj, kind: str) -> Obj | None:
    """The status condition of type ``kind`` of an object, or None."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None
