"""What a worker pod the operator renders may do: the guard against a confused deputy.

The operator can create pods; a tenant who may only create our custom resources
cannot.  So nothing a tenant writes into a DisaggDeployment or InferencePool —
least of all the ``podTemplate`` escape hatch and ``engine.env`` — may make the
operator create a pod the tenant could not have created directly in a cluster
with Pod Security: privileged containers, host namespaces, ``hostPath`` or other
node-level volumes, host ports, added capabilities, a ServiceAccount other than
the namespace default (or a mounted API token), ``nodeName``, or access to Secrets
and ConfigMaps other than the model token Secret the spec names.  The one
documented exception is ``IPC_LOCK`` when RDMA is enabled (UCX pins memory).

A cluster admin opts a namespace in to more (``PodPolicy`` per namespace, from the
chart's ``workerPolicy`` values); the default is the safe one.  The check runs on
the *rendered* pod template, so it covers every field of the API that reaches the
pod, not a list of fields someone remembered to check.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Sysctls Pod Security "baseline" allows (namespaced, safe).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
#: Volume types that never reach beyond the pod (or the claims/Secrets checked by name).
_POD_LOCAL_VOLUMES = frozenset({"emptyDir", "downwardAPI"})
_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t"})
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


@dataclass(frozen=True)
class PodPolicy:
    """What worker pods in a namespace may do beyond the safe default (all off)."""

    allow_privileged: bool = False
    """Privileged containers, privilege escalation and any added capability."""
    allow_host_namespaces: bool = False
    """``hostNetwork``, ``hostPID``, ``hostIPC``."""
    allow_host_path: bool = False
    """``hostPath`` volumes."""
    allow_host_ports: bool = False
    """``hostPort`` on container ports."""
    allowed_capabilities: frozenset[str] = frozenset()
    """Capabilities a container may add (``IPC_LOCK`` is always allowed with RDMA)."""
    allowed_service_accounts: frozenset[str] = frozenset()
    """ServiceAccounts worker pods may run as (and then mount the API token of)."""
    allowed_secrets: frozenset[str] = frozenset()
    """Secrets worker pods may read besides the model token Secret the spec names."""
    allow_config_maps: bool = False
    """ConfigMaps as volumes or environment of worker pods."""
    allow_node_name: bool = False
    """``nodeName`` (bypasses the scheduler, taints and quotas on placement)."""
    allow_any_gateway_image: bool = False
    """A gateway image other than the operator's trusted ones (the gateway pod holds the API
    key Secret and a token that reads the namespace's pods and EndpointSlices)."""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PodPolicy:
        """From the camelCase keys of the chart's ``workerPolicy`` values (unknown keys refused)."""
        names = {
            "allowPrivileged": "allow_privileged",
            "allowHostNamespaces": "allow_host_namespaces",
            "allowHostPath": "allow_host_path",
            "allowHostPorts": "allow_host_ports",
            "allowedCapabilities": "allowed_capabilities",
            "allowedServiceAccounts": "allowed_service_accounts",
            "allowedSecrets": "allowed_secrets",
            "allowConfigMaps": "allow_config_maps",
            "allowNodeName": "allow_node_name",
            "allowAnyGatewayImage": "allow_any_gateway_image",
        }
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(f"unknown worker policy keys: {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, attr in names.items():
            if key not in raw:
                continue
            value = raw[key]
            if attr.startswith("allowed_"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{key} must be a list of strings")
                kwargs[attr] = frozenset(value)
            else:
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
                kwargs[attr] = value
        return cls(**kwargs)


@dataclass(frozen=True)
class PolicySet:
    """The default policy and per-namespace opt-ins."""

    default: PodPolicy = field(default_factory=PodPolicy)
    namespaces: Mapping[str, PodPolicy] = field(default_factory=dict)

    def for_namespace(self, namespace: str) -> PodPolicy:
        return self.namespaces.get(namespace, self.default)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> PolicySet:
        raw = raw or {}
        unknown = sorted(set(raw) - {"default", "namespaces"})
        if unknown:
            raise ValueError(f"unknown worker policy sections: {', '.join(unknown)}")
        namespaces = raw.get("namespaces") or {}
        if not isinstance(namespaces, Mapping):
            raise ValueError("namespaces must map namespace names to policies")
        return cls(
            default=PodPolicy.from_dict(raw.get("default") or {}),
            namespaces={ns: PodPolicy.from_dict(p or {}) for ns, p in namespaces.items()},
        )


@dataclass(frozen=True)
class Allowances:
    """What this spec itself legitimately brings: its token Secret, claim, RDMA capability."""

    secrets: frozenset[str] = frozenset()
    claims: frozenset[str] = frozenset()
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Violation:
    path: str
    """Field path inside the pod template, e.g. ``spec.hostNetwork``."""
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _security_context_violations(ctx: Any, path: str) -> Iterable[Violation]:
    if not isinstance(ctx, Mapping):
        return
    for key in ("seccompProfile", "appArmorProfile"):
        profile = ctx.get(key)
        if isinstance(profile, Mapping) and profile.get("type") == "Unconfined":
            yield Violation(f"{path}.{key}.type", "Unconfined profiles are not allowed")
    selinux = ctx.get("seLinuxOptions")
    if isinstance(selinux, Mapping):
        if selinux.get("type", "") not in _SELINUX_TYPES:
            yield Violation(f"{path}.seLinuxOptions.type", "custom SELinux types are not allowed")
        for key in ("user", "role"):
            if selinux.get(key):
                yield Violation(f"{path}.seLinuxOptions.{key}", "must not be set")
    for i, sysctl in enumerate(ctx.get("sysctls") or []):
        name = sysctl.get("name") if isinstance(sysctl, Mapping) else None
        if name not in SAFE_SYSCTLS:
            yield Violation(f"{path}.sysctls[{i}]", f"sysctl {name!r} is not in the safe set")


def _container_violations(
    container: Mapping[str, Any], path: str, policy: PodPolicy, allow: Allowances
) -> Iterable[Violation]:
    ctx = container.get("securityContext") or {}
    if isinstance(ctx, Mapping):
        if ctx.get("privileged") and not policy.allow_privileged:
            yield Violation(f"{path}.securityContext.privileged", "privileged containers")
        if ctx.get("allowPrivilegeEscalation") and not policy.allow_privileged:
            yield Violation(
                f"{path}.securityContext.allowPrivilegeEscalation", "privilege escalation"
            )
        if ctx.get("procMount") not in (None, "Default") and not policy.allow_privileged:
            yield Violation(f"{path}.securityContext.procMount", "only the Default procMount")
        added = ((ctx.get("capabilities") or {}).get("add")) or []
        permitted = allow.capabilities | policy.allowed_capabilities
        for cap in added:
            if str(cap).removeprefix("CAP_") not in permitted and not policy.allow_privileged:
                yield Violation(
                    f"{path}.securityContext.capabilities.add",
                    f"capability {cap} (allowed: {', '.join(sorted(permitted)) or 'none'})",
                )
        yield from _security_context_violations(ctx, f"{path}.securityContext")
    for i, port in enumerate(container.get("ports") or []):
        if isinstance(port, Mapping) and port.get("hostPort") and not policy.allow_host_ports:
            yield Violation(f"{path}.ports[{i}].hostPort", "host ports")
    for env in container.get("env") or []:
        source = env.get("valueFrom") if isinstance(env, Mapping) else None
        if not isinstance(source, Mapping):
            continue
        where = f"{path}.env[{env.get('name')}].valueFrom"
        secret = source.get("secretKeyRef")
        if isinstance(secret, Mapping):
            name = str(secret.get("name"))
            if name not in allow.secrets | policy.allowed_secrets:
                yield Violation(f"{where}.secretKeyRef", f"Secret {name!r}")
        if "configMapKeyRef" in source and not policy.allow_config_maps:
            yield Violation(f"{where}.configMapKeyRef", "ConfigMaps")
    for i, source in enumerate(container.get("envFrom") or []):
        if not isinstance(source, Mapping):
            continue
        if "secretRef" in source:
            name = str((source.get("secretRef") or {}).get("name"))
            if name not in allow.secrets | policy.allowed_secrets:
                yield Violation(f"{path}.envFrom[{i}].secretRef", f"Secret {name!r}")
        if "configMapRef" in source and not policy.allow_config_maps:
            yield Violation(f"{path}.envFrom[{i}].configMapRef", "ConfigMaps")


def _volume_violations(
    volume: Mapping[str, Any], path: str, policy: PodPolicy, allow: Allowances
) -> Iterable[Violation]:
    kinds = [k for k in volume if k != "name"]
    for kind in kinds:
        source = volume[kind]
        if kind in _POD_LOCAL_VOLUMES:
            continue
        if kind == "persistentVolumeClaim":
            claim = str((source or {}).get("claimName"))
            if claim not in allow.claims:
                yield Violation(f"{path}.persistentVolumeClaim", f"PersistentVolumeClaim {claim!r}")
        elif kind == "secret":
            name = str((source or {}).get("secretName"))
            if name not in allow.secrets | policy.allowed_secrets:
                yield Violation(f"{path}.secret", f"Secret {name!r}")
        elif kind == "configMap":
            if not policy.allow_config_maps:
                yield Violation(f"{path}.configMap", "ConfigMaps")
        elif kind == "hostPath":
            if not policy.allow_host_path:
                yield Violation(f"{path}.hostPath", "hostPath volumes")
        elif kind == "projected":
            for j, part in enumerate((source or {}).get("sources") or []):
                for sub in part or {}:
                    if sub == "downwardAPI":
                        continue
                    if sub == "secret":
                        name = str((part[sub] or {}).get("name"))
                        if name in allow.secrets | policy.allowed_secrets:
                            continue
                    if sub == "configMap" and policy.allow_config_maps:
                        continue
                    if sub == "serviceAccountToken" and policy.allowed_service_accounts:
                        continue
                    yield Violation(f"{path}.projected.sources[{j}].{sub}", f"projected {sub}")
        else:
            yield Violation(f"{path}.{kind}", f"{kind} volumes")


def check_pod_template(
    template: Mapping[str, Any], policy: PodPolicy, allow: Allowances
) -> list[Violation]:
    """Everything in a rendered pod template that the namespace's policy does not allow."""
    spec = template.get("spec") or {}
    out: list[Violation] = []
    if not policy.allow_host_namespaces:
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                out.append(Violation(f"spec.{key}", "host namespaces"))
    if spec.get("nodeName") and not policy.allow_node_name:
        out.append(Violation("spec.nodeName", "nodeName bypasses the scheduler"))
    for key in ("serviceAccountName", "serviceAccount"):
        account = spec.get(key)
        if account and account != "default" and account not in policy.allowed_service_accounts:
            out.append(Violation(f"spec.{key}", f"ServiceAccount {account!r}"))
    if spec.get("automountServiceAccountToken") and not policy.allowed_service_accounts:
        out.append(Violation("spec.automountServiceAccountToken", "API credentials in workers"))
    out += _security_context_violations(spec.get("securityContext"), "spec.securityContext")
    # List items are named by their name, not their index: the rendered lists are the user's
    # merged with ours, so an index would point at the wrong item of what the user wrote.
    for volume in spec.get("volumes") or []:
        if isinstance(volume, Mapping):
            where = f"spec.volumes[{volume.get('name')}]"
            out += _volume_violations(volume, where, policy, allow)
    for list_name in _CONTAINER_LISTS:
        for container in spec.get(list_name) or []:
            if isinstance(container, Mapping):
                where = f"spec.{list_name}[{container.get('name')}]"
                out += _container_violations(container, where, policy, allow)
    return out
