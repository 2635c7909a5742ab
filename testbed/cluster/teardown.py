"""Tear the local cluster down so that nothing of it is left on the host.

``clean`` stops the processes (ours, found by pid file or by our containerd socket in their
command line), removes container tasks, mounts under our state directories, pod network
namespaces, the bridge and its veths, iptables chains and cgroups under ``kubepods``, then
deletes the state directories. It is safe on a cluster that is half up or already down, which
is why ``up`` also runs it first when none of our processes runs: a killed earlier run leaves
exactly these things behind. Images in containerd and the certificates live outside the state
directories and survive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

from . import components, network, procs
from .config import Settings


def _our_shims(settings: Settings) -> list[int]:
    pids = []
    needle = str(settings.containerd_socket).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and needle in cmdline:
            pids.append(int(entry.name))
    return pids


def _kubepods_cgroups() -> list[Path]:
    found: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        root = hierarchy / "kubepods"
        if root.is_dir():
            found += sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            found.append(root)
    return found


def _mounts_under(prefixes: list[Path]) -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if any(point == str(p) or point.startswith(f"{p}/") for p in prefixes):
                points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


def clean(settings: Settings) -> list[str]:
    """Stop and remove everything of ours; returns what was done, for the caller to print."""
    done: list[str] = []
    for name in ("kubelet", "kube-proxy", "coredns", "kube-scheduler", "kube-controller-manager"):
        if procs.stop(settings, name):
            done.append(f"stopped {name}")
    if procs.pid_of(settings, "containerd"):
        tasks = subprocess.run(
            components.ctr(settings, "tasks", "ls", "-q"),
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for task in tasks:
            subprocess.run(
                components.ctr(settings, "tasks", "kill", "-s", "SIGKILL", task),
                capture_output=True,
                check=False,
            )
        for task in tasks:
            subprocess.run(
                components.ctr(settings, "tasks", "delete", "-f", task),
                capture_output=True,
                check=False,
            )
        containers = subprocess.run(
            components.ctr(settings, "containers", "ls", "-q"),
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for container in containers:
            subprocess.run(
                components.ctr(settings, "containers", "delete", container),
                capture_output=True,
                check=False,
            )
        done.append(f"removed {len(tasks)} tasks, {len(containers)} containers")
    for name in ("containerd", "kube-apiserver", "etcd"):
        if procs.stop(settings, name):
            done.append(f"stopped {name}")
    for pid in _our_shims(settings):
        procs.kill_and_wait(pid, 2)
        done.append(f"killed shim {pid}")
    for cgroup in _kubepods_cgroups():
        for pid_text in (cgroup / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid_text), signal.SIGKILL)
                done.append(f"killed pod process {pid_text}")
            except ProcessLookupError:
                pass
    netns = sorted(Path("/run/netns").glob("cni-*")) if Path("/run/netns").is_dir() else []
    roots = [settings.state, settings.run, settings.containerd_root, *netns]
    for point in _mounts_under(roots):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        done.append(f"unmounted {point}")
    for path in netns:
        path.unlink(missing_ok=True)
    # The CNI plugins' netns helper bind-mounts /run/netns onto itself on first use; once no
    # namespace is left in it, that mount is ours to remove too.
    run_netns = Path("/run/netns")
    if _mounts_under([run_netns]) and not any(run_netns.iterdir()):
        subprocess.run(["umount", str(run_netns)], capture_output=True, check=False)
        done.append(f"unmounted {run_netns}")
    if settings.tool("kube-proxy").exists():
        subprocess.run(
            [str(settings.tool("kube-proxy")), "--cleanup"], capture_output=True, check=False
        )
    network.teardown(settings)
    for cgroup in _kubepods_cgroups():
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    left = _mounts_under([settings.state, settings.run])
    if left:
        raise RuntimeError(f"still mounted, not deleting state: {left}")
    shutil.rmtree(settings.state, ignore_errors=True)
    shutil.rmtree(settings.run, ignore_errors=True)
    return done
