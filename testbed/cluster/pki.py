"""Certificates and kubeconfigs for the local cluster, made with the ``openssl`` command.

One cluster CA signs every component's certificate (client certs carry the identity the RBAC
defaults expect: ``system:kube-scheduler``, ``system:node:<name>`` in ``system:nodes``...), a
separate front-proxy CA backs the aggregation layer, and an RSA key pair signs service-account
tokens. Files are created once and reused, so the admin kubeconfig stays valid across
``down``/``up``. Kubeconfigs embed their certificates (base64) so they can be copied anywhere;
they are written as JSON, which is valid YAML and needs no YAML library.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .config import Settings

DAYS = "3650"


@dataclass(frozen=True)
class Identity:
    """A certificate to issue: its file stem, subject and what it may be used for."""

    stem: str
    common_name: str
    organization: str | None = None
    server_names: tuple[str, ...] = ()
    ca: str = "ca"


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def _new_ca(pki: Path, stem: str, common_name: str) -> None:
    if (pki / f"{stem}.crt").exists():
        return
    _openssl(
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        str(pki / f"{stem}.key"),
        "-out",
        str(pki / f"{stem}.crt"),
        "-days",
        DAYS,
        "-subj",
        f"/CN={common_name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
    )


def _issue(pki: Path, who: Identity) -> None:
    crt = pki / f"{who.stem}.crt"
    if crt.exists():
        return
    key, csr, ext = pki / f"{who.stem}.key", pki / f"{who.stem}.csr", pki / f"{who.stem}.ext"
    subject = f"/CN={who.common_name}" + (f"/O={who.organization}" if who.organization else "")
    _openssl(
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        subject,
    )
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage=" + ("serverAuth,clientAuth" if who.server_names else "clientAuth"),
    ]
    if who.server_names:
        sans = []
        for name in who.server_names:
            try:
                ipaddress.ip_address(name)
                sans.append(f"IP:{name}")
            except ValueError:
                sans.append(f"DNS:{name}")
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    ca = pki / who.ca
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        DAYS,
        "-out",
        str(crt),
        "-extfile",
        str(ext),
    )
    csr.unlink()
    ext.unlink()


def identities(settings: Settings) -> list[Identity]:
    first_service_ip = str(next(ipaddress.ip_network(settings.service_cidr).hosts()))
    apiserver_names = (
        settings.node_ip,
        "127.0.0.1",
        first_service_ip,
        "localhost",
        settings.node_name,
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    )
    return [
        Identity("apiserver", "kube-apiserver", server_names=apiserver_names),
        Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
        Identity("admin", "kubernetes-admin", "system:masters"),
        Identity("controller-manager", "system:kube-controller-manager"),
        Identity("scheduler", "system:kube-scheduler"),
        Identity("kube-proxy", "system:kube-proxy"),
        Identity("kubelet", f"system:node:{settings.node_name}", "system:nodes"),
        Identity(
            "kubelet-serving",
            settings.node_name,
            server_names=(settings.node_ip, "127.0.0.1", settings.node_name),
        ),
        Identity("coredns", "system:coredns"),
        Identity("front-proxy-client", "front-proxy-client", ca="front-proxy-ca"),
        # Serving cert for an aggregated API run on the host (reached at the node address
        # through a selector-less Service + EndpointSlice, or on loopback).
        Identity(
            "prometheus-adapter",
            "prometheus-adapter",
            server_names=(settings.node_ip, "127.0.0.1", "prometheus-adapter.monitoring.svc"),
        ),
    ]


KUBECONFIG_USERS = ("admin", "controller-manager", "scheduler", "kube-proxy", "kubelet", "coredns")


def ensure(settings: Settings) -> None:
    """Create the CAs, certificates, service-account keys and kubeconfigs that are missing."""
    pki = settings.pki
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    _new_ca(pki, "ca", "disagg-cluster-ca")
    _new_ca(pki, "front-proxy-ca", "disagg-front-proxy-ca")
    for who in identities(settings):
        _issue(pki, who)
    if not (pki / "sa.key").exists():
        _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
        _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    for user in KUBECONFIG_USERS:
        path = settings.kubeconfig if user == "admin" else pki / f"{user}.kubeconfig"
        write_kubeconfig(settings, user, path)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(settings: Settings, user: str, path: Path) -> None:
    pki = settings.pki
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "disagg",
                "cluster": {
                    "server": settings.server,
                    "certificate-authority-data": _b64(pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(pki / f"{user}.crt"),
                    "client-key-data": _b64(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "disagg", "context": {"cluster": "disagg", "user": user}}],
        "current-context": "disagg",
    }
    text = json.dumps(doc, indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        path.chmod(0o600)
