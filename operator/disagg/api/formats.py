"""String and quantity formats of the API, each with the rule that refuses a bad value.

A field that names something Kubernetes or vLLM will read later (a resource name, a
mount path, a Secret key, a quantity, a flag list) is typed here once, with the check
that the API server runs at admission.  The checks are CEL rules on the field itself,
not bare ``pattern``s, for one reason: the API server prints a CEL rule's own message
next to the field path (``spec.resources.memory: Invalid value: ...: must be at least
64Mi``), while a failed pattern prints the regular expression.  Every string and list
carries a ``maxLength``/``maxItems``: the API server estimates the cost of each rule from
them and refuses a CRD whose worst case is unbounded.

Regular expressions are written in the dialect both RE2 (the API server) and Python's
``re`` (the offline admission tests) read the same way: no look-around, no POSIX classes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema

from disagg.api.base import cel

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$"
#: ``[prefix/]name`` as Kubernetes label keys and resource names are spelled.
#: The name part of a qualified name: at most 63 characters.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
QUALIFIED_NAME = rf"^({_DNS_LABEL}(\.{_DNS_LABEL})*/)?{_NAME}$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
#: No whitespace or control character anywhere, and no leading ``-`` (read as a flag).
_WORD = r"^[^-\s\x00-\x1f\x7f][^\s\x00-\x1f\x7f]*$"
#: A key of a Secret or ConfigMap: not ``.``, not starting with ``..``.
_CONFIG_KEY = r"^([-_A-Za-z0-9]|\.[-_A-Za-z0-9])[-._A-Za-z0-9]*$"
#: An absolute path whose segments are never empty, ``.`` or ``..``, without whitespace.
_SEGMENT = r"([^/.\s\x00-\x1f]|\.[^/.\s\x00-\x1f]|\.\.[^/\s\x00-\x1f])[^/\s\x00-\x1f]*"
_ABSOLUTE_PATH = rf"^(/{_SEGMENT})+$"


def cel_string(text: str) -> str:
    """``text`` as a single-quoted CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _string(max_length: int, *rules: dict[str, str]) -> Any:
    """The CRD schema of a non-empty string: its bound and its rules (the pydantic ``Field``
    beside it carries the same bound and pattern for the operator's own parsing)."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": max_length}
    if rules:
        schema["x-kubernetes-validations"] = list(rules)
    return WithJsonSchema(schema)


def _matches(regex: str, message: str) -> dict[str, str]:
    return cel(f"self.matches({cel_string(regex)})", message)


#: A word vLLM or the kubelet reads as one token: a model id, a revision, an image.
Word = Annotated[
    str,
    Field(min_length=1, max_length=512, pattern=_WORD),
    _string(
        512,
        _matches(
            _WORD,
            "must not be blank, contain whitespace or control characters, or start with '-'",
        ),
    ),
]

DNSSubdomain = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN),
    _string(
        253,
        _matches(
            DNS_SUBDOMAIN,
            "must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', starting and "
            "ending with a letter or digit",
        ),
    ),
]

#: A key of a Secret or ConfigMap (``token``, ``api-key``, ``config.json``).
ConfigKey = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=_CONFIG_KEY),
    _string(
        253,
        _matches(
            _CONFIG_KEY,
            "must be a Secret key: letters, digits, '-', '_' and '.', not '.' or starting "
            "with '..'",
        ),
    ),
]

_EXTENDED = rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*/{_NAME}$"

#: A device-plugin (extended) resource: ``nvidia.com/gpu``, ``rdma/ib``.
ExtendedResourceName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=_EXTENDED),
    _string(
        253,
        _matches(
            _EXTENDED,
            "must be an extended resource name, <domain>/<name> such as nvidia.com/gpu or rdma/ib",
        ),
        cel(
            "!self.contains('kubernetes.io/') && !self.startsWith('requests.')",
            "must not be in the kubernetes.io domain or start with 'requests.': those names are "
            "Kubernetes' own resources, not a device plugin's",
        ),
    ),
]

#: Directories a read-only model volume must not hide: the worker needs them, or they are
#: kernel interfaces (``/dev/shm`` is the worker's shared memory).
SYSTEM_DIRECTORIES = (
    "/bin", "/boot", "/etc", "/home", "/lib", "/lib32", "/lib64", "/opt", "/root", "/run",
    "/sbin", "/srv", "/tmp", "/usr", "/var", "/var/run", "/var/tmp",
)  # fmt: skip
KERNEL_TREES = ("/dev", "/proc", "/sys", "/var/run/secrets", "/run/secrets")


def cel_list(items: tuple[str, ...]) -> str:
    """``items`` as a CEL list of string literals."""
    return "[" + ", ".join(cel_string(i) for i in items) + "]"


#: Where a volume is mounted in the worker container.
MountPath = Annotated[
    str,
    Field(min_length=1, max_length=256, pattern=_ABSOLUTE_PATH),
    _string(
        256,
        _matches(
            _ABSOLUTE_PATH,
            "must be an absolute path without empty, '.' or '..' segments, whitespace or a "
            "trailing '/'",
        ),
        cel(
            f"!({cel_list(SYSTEM_DIRECTORIES)}.exists(d, self == d) || "
            f"{cel_list(KERNEL_TREES)}.exists(d, self == d || self.startsWith(d + '/')))",
            "must not hide a directory the worker needs: /dev (and /dev/shm, the worker's "
            "shared memory), /proc, /sys, the service-account token, or a system directory "
            "such as /etc, /usr, /tmp or /root; use a directory of its own such as /models",
        ),
    ),
]


def quantity_at_least(minimum: str | None, why: str) -> Any:
    """A Kubernetes quantity (``16Gi``, ``500m``, ``8``): above 0, or at least ``minimum``."""
    if minimum is None:
        check, message = "quantity(string(self)).isGreaterThan(quantity('0'))", "must be above 0"
    else:
        check = f"quantity(string(self)).compareTo(quantity({cel_string(minimum)})) >= 0"
        message = f"must be at least {minimum}"
    return WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": 64,
            "x-kubernetes-validations": [
                # An invalid quantity is reported once, by the pattern, not again by CEL.
                cel(f"!isQuantity(string(self)) || {check}", f"{message} ({why})"),
            ],
        }
    )


_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"

#: Memory of a container: a worker or the gateway.  A bare number is bytes, and a limit of a
#: few bytes (``memory: 128`` meant as Gi) leaves a container that never starts.
ContainerMemory = Annotated[
    int | str,
    quantity_at_least("64Mi", "a bare number is bytes: write 128Gi, not 128"),
]
#: Size of the worker's memory-backed ``/dev/shm``.
SharedMemorySize = Annotated[
    int | str,
    quantity_at_least("64Mi", "NCCL and NIXL need far more than a few bytes of /dev/shm"),
]
#: A CPU request: omit it for none, 0 or a negative value is a mistake.
CPURequest = Annotated[
    int | str,
    quantity_at_least(None, "omit it to request none"),
]

_MULTUS = rf"^({_DNS_LABEL}/)?{_DNS_LABEL}(\.{_DNS_LABEL})*(@[A-Za-z0-9_.-]{{1,15}})?$"

#: A Multus network, ``[namespace/]name[@interface]``; the list is joined with ``,`` into one
#: annotation, so a ``,`` inside one entry would smuggle in more networks.
MultusNetwork = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=_MULTUS),
    _string(
        253,
        _matches(_MULTUS, "must be a network attachment, [namespace/]name[@interface]"),
    ),
]

_HCA = r"^[A-Za-z0-9][A-Za-z0-9_.-]*(:[0-9]{1,3})?$"

#: An HCA port for UCX/NCCL (``mlx5_0:1``); joined with ``,`` into ``UCX_NET_DEVICES``.
HCAPort = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=_HCA),
    _string(64, _matches(_HCA, "must be an HCA device with an optional port, e.g. mlx5_0:1")),
]

#: The largest 32-bit integer: bounds for counts that end up in int32 Kubernetes fields.
INT32_MAX = 2**31 - 1
