"""The pause image, made here: no registry is reachable, so the sandbox image is built locally.

The program is a static Go binary that blocks until SIGTERM/SIGINT and reaps zombies on SIGCHLD —
all a pod sandbox's infra container must do. It doubles as the smoke tests' workload image:
``/pause -connect HOST:PORT`` exits 0 iff a TCP connection opens, ``/pause -resolve NAME`` iff
the name resolves (network and DNS probes).

The image is written as a ``docker save``-style archive (``manifest.json`` + config + one layer
tar) by Python's ``tarfile``; ``ctr images import`` reads that format on every containerd
release, so the same function can package any static binary.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

from .gobuild import BuildError, go_env

PAUSE_SOURCE = """\
// Command pause is a pod sandbox's infra process: it sleeps until told to stop, reaping orphans.
package main

import (
\t"fmt"
\t"net"
\t"os"
\t"os/signal"
\t"syscall"
\t"time"
)

func main() {
\tif len(os.Args) > 1 && os.Args[1] == "-v" {
\t\tfmt.Println("disagg-pause 3.10")
\t\treturn
\t}
\t// -connect HOST:PORT: a network probe for tests (exit 0 iff a TCP connection opens).
\tif len(os.Args) > 2 && os.Args[1] == "-connect" {
\t\tconn, err := net.DialTimeout("tcp", os.Args[2], 5*time.Second)
\t\tif err != nil {
\t\t\tfmt.Println("connect failed:", err)
\t\t\tos.Exit(1)
\t\t}
\t\tfmt.Println("connected to", conn.RemoteAddr())
\t\tconn.Close()
\t\treturn
\t}
\t// -resolve NAME: a DNS probe for tests (exit 0 iff NAME resolves; prints the addresses).
\tif len(os.Args) > 2 && os.Args[1] == "-resolve" {
\t\taddrs, err := net.LookupHost(os.Args[2])
\t\tif err != nil {
\t\t\tfmt.Println("resolve failed:", err)
\t\t\tos.Exit(1)
\t\t}
\t\tfmt.Println("resolved", os.Args[2], "to", addrs)
\t\treturn
\t}
\tsignals := make(chan os.Signal, 8)
\tsignal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
\tfor s := range signals {
\t\tif s != syscall.SIGCHLD {
\t\t\tos.Exit(0)
\t\t}
\t\tfor {
\t\t\tvar status syscall.WaitStatus
\t\t\tpid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
\t\t\tif pid <= 0 || err != nil {
\t\t\t\tbreak
\t\t\t}
\t\t}
\t}
}
"""


def build_pause_binary(src: Path, out: Path, log: Path) -> None:
    """Compile the pause program (standard library only) into ``out``."""
    if out.exists():
        return
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text("module disagg.local/pause\n\ngo 1.24\n")
    (src / "main.go").write_text(PAUSE_SOURCE)
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        rc = subprocess.call(
            ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out), "."],
            cwd=src,
            env=go_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    if rc != 0:
        raise BuildError(f"building the pause binary failed; see {log}")


def _layer_tar(binary: Path, path_in_image: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(path_in_image)
        data = binary.read_bytes()
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_image_archive(binary: Path, reference: str, archive: Path) -> None:
    """Write a one-layer image whose entrypoint is ``binary`` (as ``/pause``) to ``archive``."""
    layer = _layer_tar(binary, "pause")
    layer_digest = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "disagg testbed.cluster image.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [
        {"Config": config_name, "RepoTags": [reference], "Layers": [f"{layer_digest}/layer.tar"]}
    ]
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="w") as tar:
        for name, data in (
            (config_name, config_bytes),
            (f"{layer_digest}/layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
