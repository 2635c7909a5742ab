"""The one module that talks to the Kubernetes API.

Everything the operator *writes* goes through here (``lint-imports`` enforces that no
other module imports ``kubernetes``); reads come from the watch-fed cache
(``controller.store``), so a reconcile that finds nothing to change makes no request.

Writes are chosen so that the operator can never take an object it did not create:
a new child is made with ``POST`` (it fails with :class:`AlreadyExists` when a
same-named object exists, whoever owns it), and an existing child is changed by
server-side apply *with the resourceVersion we read as a precondition* (it fails
with :class:`Conflict` if the object changed since, e.g. an autoscaler's write
landed in between).  Objects are plain dicts in and out.

Errors are sorted into what the caller can act on: :class:`NotFound` (and
:class:`MissingAPI` when the kind itself is not served), :class:`AlreadyExists`,
:class:`Conflict`, :class:`Invalid` (the API server rejected the object: a
permanent problem with the spec; "failed to create typed patch object", which the
server answers with a 500, is one of these), :class:`Forbidden` (the operator's
own RBAC) and :class:`TransientError` (5xx, throttling, network: retry later).
Every request is counted by verb in :attr:`Kube.requests` (for the operator's
metrics and the scale benchmark).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from disagg.render.names import FIELD_MANAGER

log = logging.getLogger(__name__)


class KubeError(Exception):
    """A failed API call."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def first_line(self) -> str:
        """The server's message without the request line, cut at its first line."""
        text = str(self)
        return text.splitlines()[0] if text else ""


class NotFound(KubeError):
    """The object does not exist."""


class MissingAPI(NotFound):
    """The kind itself is not served (e.g. KEDA's ScaledObject without KEDA installed)."""


class Conflict(KubeError):
    """A resourceVersion precondition failed: the object changed since it was read."""


class AlreadyExists(KubeError):
    """A create found an object of that name (ours or, more worrying, someone else's)."""


class Invalid(KubeError):
    """The API server (or an admission plugin) rejected the object: 400, 403, 422."""


class Forbidden(Invalid):
    """The operator's own RBAC does not allow the request."""


class TransientError(KubeError):
    """Timeouts, 5xx, throttling: try again later."""


@dataclass(frozen=True)
class Resource:
    group_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = "/api/" if "/" not in self.group_version else "/apis/"
        parts = [base.rstrip("/") + "/" + self.group_version]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if sub:
            parts.append(sub)
        return "/".join(parts)


#: The kinds the operator manages or reads, by (apiVersion, kind).
RESOURCES: dict[tuple[str, str], Resource] = {
    ("v1", "Service"): Resource("v1", "services"),
    ("v1", "ConfigMap"): Resource("v1", "configmaps"),
    ("v1", "ServiceAccount"): Resource("v1", "serviceaccounts"),
    ("v1", "Pod"): Resource("v1", "pods"),
    ("v1", "Event"): Resource("v1", "events"),
    ("apps/v1", "Deployment"): Resource("apps/v1", "deployments"),
    ("policy/v1", "PodDisruptionBudget"): Resource("policy/v1", "poddisruptionbudgets"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): Resource(
        "autoscaling/v2", "horizontalpodautoscalers"
    ),
    ("rbac.authorization.k8s.io/v1", "Role"): Resource("rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): Resource(
        "rbac.authorization.k8s.io/v1", "rolebindings"
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): Resource("keda.sh/v1alpha1", "scaledobjects"),
    ("disagg.dev/v1alpha1", "InferencePool"): Resource("disagg.dev/v1alpha1", "inferencepools"),
    ("disagg.dev/v1alpha1", "DisaggDeployment"): Resource(
        "disagg.dev/v1alpha1", "disaggdeployments"
    ),
}


def resource_of(api_version: str, kind: str) -> Resource:
    try:
        return RESOURCES[(api_version, kind)]
    except KeyError:
        raise KubeError(f"the operator does not manage {kind} ({api_version})") from None


class Kube:
    """A thin, dict-in dict-out client over one ``ApiClient``; safe to share between threads."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self._api = api_client or client.ApiClient()
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        """Requests sent, by verb (``create``, ``apply``, ``get``, ``list``, ``delete``,
        ``patch``, ``status``, ``event``) and the kind they were about."""

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        return cls()

    def _call(
        self,
        verb: str,
        kind: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, Any]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        with self._lock:
            self.requests[verb, kind] += 1
        try:
            # param_serialize + call_api are the generated client's untyped entry points; we
            # read the raw JSON ourselves and never depend on the generated model classes.
            method_, url, headers, payload, _ = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(
                method_, url, header_params=headers, body=payload, _request_timeout=30
            )
            raw = response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            raise _classify(exc.status, exc.reason, exc.body, method, path) from None
        except OSError as exc:  # connection refused, DNS, TLS
            raise TransientError(f"{method} {path}: {exc}") from None
        if not 200 <= response.status < 300:
            raise _classify(response.status, response.reason, raw, method, path)
        result: dict[str, Any] = json.loads(raw) if raw else {}
        return result

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj``; :class:`AlreadyExists` if any object of that name is there."""
        meta = obj["metadata"]
        res = resource_of(obj["apiVersion"], obj["kind"])
        return self._call(
            "create",
            obj["kind"],
            "POST",
            res.path(meta.get("namespace")),
            body=obj,
            query=[("fieldManager", FIELD_MANAGER)],
        )

    def apply(self, obj: dict[str, Any], *, resource_version: str | None = None) -> dict[str, Any]:
        """Server-side apply ``obj`` with the operator's field manager (forcing ownership of
        the fields it sets).  With ``resource_version`` the apply only lands on exactly that
        version of the object (:class:`Conflict` otherwise)."""
        meta = obj["metadata"]
        if resource_version is not None:
            obj = {**obj, "metadata": {**meta, "resourceVersion": resource_version}}
        res = resource_of(obj["apiVersion"], obj["kind"])
        return self._call(
            "apply",
            obj["kind"],
            "PATCH",
            res.path(meta.get("namespace"), meta["name"]),
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def apply_status(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        *,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply of the ``status`` subresource (only the fields we set).  With
        ``uid`` the write lands only on that incarnation of the object (a same-named object
        created after ours was deleted is left alone); with ``resource_version`` only on the
        version that was read (else :class:`Conflict`)."""
        res = resource_of(api_version, kind)
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if uid:
            metadata["uid"] = uid
        if resource_version:
            metadata["resourceVersion"] = resource_version
        body = {"apiVersion": api_version, "kind": kind, "metadata": metadata, "status": status}
        return self._call(
            "status",
            kind,
            "PATCH",
            res.path(namespace, name, "status"),
            body=body,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return self._call("get", kind, "GET", resource_of(api_version, kind).path(namespace, name))

    def get_or_none(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        try:
            return self.get(api_version, kind, namespace, name)
        except NotFound:
            return None

    def list(
        self, api_version: str, kind: str, namespace: str, selector: dict[str, str]
    ) -> list[dict[str, Any]]:
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        result = self._call(
            "list",
            kind,
            "GET",
            resource_of(api_version, kind).path(namespace),
            query=[("labelSelector", label_selector)],
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def delete(
        self, api_version: str, kind: str, namespace: str, name: str, *, uid: str | None = None
    ) -> None:
        """Delete (background propagation); with ``uid``, only that incarnation."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        with contextlib.suppress(NotFound):
            self._call(
                "delete",
                kind,
                "DELETE",
                resource_of(api_version, kind).path(namespace, name),
                body=body,
            )

    def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        field_manager: str = FIELD_MANAGER,
    ) -> dict[str, Any]:
        return self._call(
            "patch",
            kind,
            "PATCH",
            resource_of(api_version, kind).path(namespace, name),
            body=patch,
            query=[("fieldManager", field_manager)],
            content_type="application/merge-patch+json",
        )

    def post_event(self, event: dict[str, Any]) -> None:
        """Create a core/v1 Event (best effort: a lost Event is logged, never raised)."""
        try:
            self._call(
                "event",
                "Event",
                "POST",
                resource_of("v1", "Event").path(event["metadata"]["namespace"]),
                body=event,
            )
        except KubeError as exc:
            log.warning("could not post Event %s: %s", event.get("reason"), exc.first_line)


def _classify(status: int, reason: str, body: Any, method: str, path: str) -> KubeError:
    try:
        parsed = json.loads(body or "{}")
    except (ValueError, TypeError):
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    detail = str(parsed.get("message") or reason or "")
    why = parsed.get("reason", "")
    message = detail or f"{method} {path}: {status} {reason}"
    if status == 404:
        details = parsed.get("details") or {}
        if not details.get("name"):
            return MissingAPI(f"{path}: the API server does not serve this kind", status)
        return NotFound(message, status)
    if status == 409:
        if why == "AlreadyExists":
            return AlreadyExists(message, status)
        return Conflict(message, status)
    if status == 403 and "cannot" in detail and 'User "' in detail:
        return Forbidden(message, status)
    if status in (400, 403, 422):
        return Invalid(message, status)
    if status == 500 and "failed to create typed patch object" in detail:
        # The object does not fit its schema (a wrong type in a pass-through field): the
        # server says 500, but retrying the same object can never succeed.
        return Invalid(message, status)
    return TransientError(message, status)
