"""The one module that talks to the Kubernetes API.

Everything the operator reads or writes goes through here (``lint-imports``
enforces that no other module imports ``kubernetes``): server-side apply with
one field manager, gets and label-selected lists, deletes, status patches.
Objects are plain dicts in and out, the same dicts ``disagg.render`` produces.

Errors are sorted into what the caller can act on: :class:`NotFound`,
:class:`Conflict`, :class:`Invalid` (the API server rejected the object: a
permanent problem with the spec) and :class:`TransientError` (retry later).
"""

from __future__ import annotations

import contextlib
import json
import logging
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


class NotFound(KubeError):
    """The object (or its kind) does not exist."""


class Conflict(KubeError):
    """A field-manager or resourceVersion conflict."""


class Invalid(KubeError):
    """The API server rejected the object (422, 400, 403 on admission)."""


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
    """A thin, dict-in dict-out client over one ``ApiClient``."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self._api = api_client or client.ApiClient()

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
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, Any]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
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

    def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply ``obj`` with the operator's field manager."""
        meta = obj["metadata"]
        res = resource_of(obj["apiVersion"], obj["kind"])
        return self._call(
            "PATCH",
            res.path(meta.get("namespace"), meta["name"]),
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")],
            content_type="application/apply-patch+yaml",
        )

    def apply_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Server-side apply of the ``status`` subresource (only the fields we set)."""
        res = resource_of(api_version, kind)
        body = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        return self._call(
            "PATCH",
            res.path(namespace, name, "status"),
            body=body,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return self._call("GET", resource_of(api_version, kind).path(namespace, name))

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
            "GET",
            resource_of(api_version, kind).path(namespace),
            query=[("labelSelector", label_selector)],
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(
                "DELETE",
                resource_of(api_version, kind).path(namespace, name),
                body={"propagationPolicy": "Background"},
            )

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        return self._call(
            "PATCH",
            resource_of(api_version, kind).path(namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        )


def _classify(status: int, reason: str, body: Any, method: str, path: str) -> KubeError:
    message = f"{method} {path}: {status} {reason}"
    try:
        detail = json.loads(body or "{}").get("message")
    except (ValueError, AttributeError):
        detail = None
    if detail:
        message = f"{message}: {detail}"
    if status == 404:
        return NotFound(message, status)
    if status == 409:
        return Conflict(message, status)
    if status in (400, 403, 422):
        return Invalid(message, status)
    return TransientError(message, status)
