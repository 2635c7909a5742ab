"""The node's network: one bridge we own, a CNI conflist on it, and a fence around it.

The bridge ``disagg0`` carries the node's own address (``10.244.0.1``) and the pod subnet. The
apiserver and kubelet bind that address rather than the machine's uplink, so pods reach the
apiserver through the ``kubernetes`` Service (Endpoints may not hold loopback addresses) while
nothing listens on the external interface. A filter chain ``DISAGG-FORWARD`` lets traffic move
only between ports of this bridge: with IP forwarding on (needed for Service DNAT between pods)
no pod packet can leave the machine. ``down`` removes the bridge, the chain and the veths, and
restores the sysctls it changed.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from .config import Settings

CHAIN = "DISAGG-FORWARD"
SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
}


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


def conflist(settings: Settings) -> dict[str, object]:
    gateway = settings.node_ip
    prefix = settings.pod_cidr.rsplit(".", 1)[0]
    return {
        "cniVersion": "1.0.0",
        "name": "disagg",
        "plugins": [
            {
                "type": "bridge",
                "bridge": settings.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [
                        [
                            {
                                "subnet": settings.pod_cidr,
                                "rangeStart": f"{prefix}.10",
                                "gateway": gateway,
                            }
                        ]
                    ],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(settings.state / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def cni_conf_dir(settings: Settings) -> Path:
    return settings.state / "cni" / "net.d"


def setup(settings: Settings) -> None:
    saved = settings.state / "sysctl-before.json"
    if not saved.exists():
        before = {k: Path("/proc/sys", k).read_text().strip() for k in SYSCTLS}
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(before))
    for key, value in SYSCTLS.items():
        Path("/proc/sys", key).write_text(value)
    if _run("ip", "link", "show", settings.bridge, check=False).returncode != 0:
        _run("ip", "link", "add", settings.bridge, "type", "bridge")
    prefix_len = settings.pod_cidr.split("/")[1]
    addrs = _run("ip", "-o", "-4", "addr", "show", "dev", settings.bridge).stdout
    if f" {settings.node_ip}/" not in addrs:
        _run("ip", "addr", "add", f"{settings.node_ip}/{prefix_len}", "dev", settings.bridge)
    _run("ip", "link", "set", settings.bridge, "up")
    _fence(settings)
    conf = cni_conf_dir(settings)
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "10-disagg.conflist").write_text(json.dumps(conflist(settings), indent=2))


def _fence(settings: Settings) -> None:
    if _run("iptables", "-w", "-n", "-L", CHAIN, check=False).returncode != 0:
        _run("iptables", "-w", "-N", CHAIN)
    _run("iptables", "-w", "-F", CHAIN)
    br = settings.bridge
    _run("iptables", "-w", "-A", CHAIN, "-i", br, "-o", br, "-j", "ACCEPT")
    _run("iptables", "-w", "-A", CHAIN, "-i", br, "-j", "DROP")
    _run("iptables", "-w", "-A", CHAIN, "-o", br, "-j", "DROP")
    if _run("iptables", "-w", "-C", "FORWARD", "-j", CHAIN, check=False).returncode != 0:
        _run("iptables", "-w", "-I", "FORWARD", "1", "-j", CHAIN)


def bridge_ports(settings: Settings) -> list[str]:
    out = _run("ip", "-o", "link", "show", "master", settings.bridge, check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def teardown(settings: Settings) -> None:
    """Remove what ``setup`` and the CNI plugins created; safe to run when nothing exists."""
    for port in bridge_ports(settings):
        _run("ip", "link", "del", port, check=False)
    _run("ip", "link", "del", settings.bridge, check=False)
    while _run("iptables", "-w", "-D", "FORWARD", "-j", CHAIN, check=False).returncode == 0:
        pass
    _run("iptables", "-w", "-F", CHAIN, check=False)
    _run("iptables", "-w", "-X", CHAIN, check=False)
    _remove_chains()
    saved = settings.state / "sysctl-before.json"
    if saved.exists():
        for key, value in json.loads(saved.read_text()).items():
            Path("/proc/sys", key).write_text(value)
        saved.unlink()


def _remove_chains(prefixes: tuple[str, ...] = ("CNI-", "KUBE-")) -> None:
    """Chains left by the kubelet (canaries, KUBE-FIREWALL), kube-proxy and portmap.

    Nothing else on these machines creates chains with these prefixes; every rule that jumps to
    one is deleted first, then the chains are flushed and removed, for IPv4 and IPv6.
    """
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = _run(f"{tool}-save", "-t", table, check=False).stdout.splitlines()
            chains = [r[1:].split()[0] for r in rules if r.startswith(":")]
            ours = [c for c in chains if c.startswith(prefixes)]
            for rule in rules:
                words = shlex.split(rule)
                if words[:1] == ["-A"] and any(
                    words[i - 1] in ("-j", "-g") and words[i] in ours for i in range(1, len(words))
                ):
                    _run(tool, "-w", "-t", table, "-D", *words[1:], check=False)
            for chain in ours:
                _run(tool, "-w", "-t", table, "-F", chain, check=False)
            for chain in ours:
                _run(tool, "-w", "-t", table, "-X", chain, check=False)
