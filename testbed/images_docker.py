"""The Docker daemon that builds our images, and the hand-over of images to containerd.

Docker here is Debian's ``docker.io`` (20.10) and nothing starts it for us, so this module starts
``dockerd`` in the background when no daemon answers -- and gives it a containerd of its own
(socket under ``/run/disagg-images``) rather than letting it adopt whatever listens on containerd's
default socket: the cluster's containerd comes and goes with ``cluster up/down``, and image builds
must survive that.  ``--iptables=false`` keeps Docker from rewriting the host firewall (it would
set the FORWARD policy to DROP, which breaks pod traffic on the cluster's CNI bridge); builds need
no network (``--network none``) and a published port still works through docker-proxy on loopback.

The kubelet does not read Docker's image store, so images travel as ``docker save | ctr -n k8s.io
images import -``.  A stamp per containerd address remembers which image ids were imported, so a
second load of unchanged images is a no-op.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

#: Short paths for sockets (a unix socket path must stay under 108 bytes).
RUN_DIR = Path("/run/disagg-images")
DOCKERD_CONTAINERD = RUN_DIR / "containerd.sock"


class ImageError(RuntimeError):
    """A step failed or a prerequisite is missing; the message says which and what to do."""


def require(tool: str, hint: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        raise ImageError(f"{tool} not found: {hint}")
    return path


def run_logged(
    cmd: list[str], log: Path, *, every: float = 5.0, env: dict[str, str] | None = None
) -> None:
    """Run ``cmd`` with all output to ``log``, echoing its latest line at most every ``every`` s."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = last_echo = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            now = time.monotonic()
            if now - last_echo >= every:
                print(f"    [{now - start:4.0f}s] {line.rstrip()[:110]}", flush=True)
                last_echo = now
        code = proc.wait()
    if code != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise ImageError(f"{Path(cmd[0]).name} exited {code}; last lines of {log}:\n{tail}")


def _wait_for(ready: Callable[[], bool], what: str, deadline_s: float, log: Path) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if ready():
            return
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise ImageError(f"{what} did not answer within {deadline_s:.0f}s; end of {log}:\n{tail}")


class Docker:
    """A Docker client bound to one daemon, and the daemon's lifecycle when we started it."""

    def __init__(self, state: Path) -> None:
        self.state = state  # data-root, logs and containerd root of a dockerd we start
        # Prefer the client that came with dockerd: a newer client elsewhere on PATH may insist
        # on a buildx plugin that is not installed.
        self.binary = shutil.which("docker", path="/usr/bin") or shutil.which("docker") or ""
        self.started = False  # whether ensure() started the daemon through this client
        self.env = dict(os.environ)
        self.env.setdefault("DOCKER_BUILDKIT", "0")  # the classic builder: no plugin needed

    # -- the client ----------------------------------------------------------------------------
    def run(self, args: list[str], *, timeout: float = 600) -> str:
        if not self.binary:
            raise ImageError("docker not found: apt-get install docker.io")
        done = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if done.returncode != 0:
            raise ImageError(f"docker {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return done.stdout

    def run_logged(self, args: list[str], log: Path) -> None:
        run_logged([self.binary, *args], log, env=self.env)

    def _inspect(self, ref: str, template: str) -> str | None:
        try:
            return self.run(["image", "inspect", "-f", template, ref], timeout=30).strip()
        except ImageError:
            return None

    def image_id(self, ref: str) -> str | None:
        return self._inspect(ref, "{{.Id}}")

    def label(self, ref: str, key: str) -> str | None:
        labels = self._inspect(ref, "{{json .Config.Labels}}")
        value = (json.loads(labels) or {}).get(key) if labels else None
        return str(value) if value is not None else None

    def size(self, ref: str) -> int | None:
        size = self._inspect(ref, "{{.Size}}")
        return int(size) if size else None

    # -- the daemon ----------------------------------------------------------------------------
    def up(self) -> bool:
        if not self.binary:
            return False
        try:
            self.run(["version", "--format", "{{.Server.Version}}"], timeout=10)
        except (ImageError, subprocess.TimeoutExpired):
            return False
        return True

    def ensure(self) -> bool:
        """Make a daemon answer; True when this call started one."""
        if self.up():
            return False
        dockerd = require("dockerd", "apt-get install docker.io")
        containerd = require("containerd", "apt-get install containerd (docker.io pulls it in)")
        if os.geteuid() != 0:
            raise ImageError("no Docker daemon answers, and starting dockerd needs root")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        config = self.state / "containerd.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.state / "containerd"}"\n'
            f'state = "{RUN_DIR / "containerd"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{DOCKERD_CONTAINERD}"\n'
        )
        ctr = require("ctr", "apt-get install containerd")
        log = self.state / "containerd.log"
        self._spawn("containerd", [containerd, "--config", str(config)], log)
        _wait_for(lambda: _ctr_answers(ctr, str(DOCKERD_CONTAINERD)), "containerd", 30, log)
        log = self.state / "dockerd.log"
        args = [dockerd, "--containerd", str(DOCKERD_CONTAINERD), "--iptables=false"]
        args += ["--ip-masq=false", "--data-root", str(self.state / "data")]
        args += ["--exec-root", str(RUN_DIR / "docker"), "--pidfile", str(RUN_DIR / "dockerd.pid")]
        self._spawn("dockerd", args, log)
        _wait_for(self.up, "dockerd", 60, log)
        print(f"    started dockerd (log {log})")
        self.started = True
        return True

    def _spawn(self, name: str, args: list[str], log: Path) -> None:
        with log.open("a") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        (RUN_DIR / f"{name}.started").write_text(str(proc.pid))

    def status(self) -> str:
        pids = {name: _our_pid(name) for name in ("dockerd", "containerd")}
        ours = ", ".join(f"{n} pid {p}" for n, p in pids.items() if p) or "none started by us"
        return f"docker daemon {'up' if self.up() else 'down'}; {ours}; state {self.state}"

    def stop(self) -> str:
        """Stop the dockerd and containerd this module started (and nothing else)."""
        stopped = []
        for name in ("dockerd", "containerd"):
            pid = _our_pid(name)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 20
            while time.monotonic() < end and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            (RUN_DIR / f"{name}.started").unlink(missing_ok=True)
            stopped.append(f"{name} ({pid})")
        if stopped and Path("/sys/class/net/docker0").exists():
            # dockerd leaves its default bridge behind; it made it, so it goes with it.
            subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True, check=False)
            stopped.append("bridge docker0")
        return "stopped " + ", ".join(stopped) if stopped else "nothing of ours was running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _our_pid(name: str) -> int | None:
    """The pid recorded when we spawned ``name``, if that process still runs that program."""
    record = RUN_DIR / f"{name}.started"
    if not record.exists():
        return None
    pid = int(record.read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return None
    return pid if Path(cmdline.decode()).name == name and _alive(pid) else None


def _ctr_answers(ctr: str, address: str) -> bool:
    if not Path(address).exists():
        return False
    cmd = [ctr, "--address", address, "version"]
    return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0


# ---- containerd (the cluster's) ----------------------------------------------------------------


def containerd_address() -> str:
    """The cluster's containerd: ``$DISAGG_CONTAINERD_ADDRESS``, else the local cluster's socket."""
    if address := os.environ.get("DISAGG_CONTAINERD_ADDRESS"):
        return address
    from testbed.cluster.config import Settings

    return str(Settings.from_env().containerd_socket)


def load_into_containerd(docker: Docker, refs: list[str], address: str, logs: Path) -> bool:
    """Import ``refs`` into containerd's k8s.io namespace; False (and a notice) if it is down."""
    ctr = require("ctr", "apt-get install containerd")
    if address == str(DOCKERD_CONTAINERD):
        raise ImageError(f"{address} is Docker's private containerd, not the cluster's")
    if not _ctr_answers(ctr, address):
        print(
            f"    NOT LOADED: no containerd answers at {address}. The images are built; start the"
            " cluster, then run `python -m testbed.images load` (or pass --containerd-address)."
        )
        return False
    ids = {ref: docker.image_id(ref) for ref in refs}
    if missing := [ref for ref, image_id in ids.items() if image_id is None]:
        raise ImageError(
            f"not built yet: {', '.join(missing)} (run `python -m testbed.images build`)"
        )
    stamp = logs.parent / "loaded" / (address.strip("/").replace("/", "_") + ".json")
    listed = subprocess.run(
        [ctr, "--address", address, "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    # containerd lists short names normalised with the default registry's prefix.
    present = all(any(name.endswith(f"/{ref}") for name in listed) for ref in refs)
    if present and stamp.exists() and json.loads(stamp.read_text()) == ids:
        print("    cached: containerd already holds these image ids")
        return True
    log = logs / "ctr-import.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        save = subprocess.Popen(
            [docker.binary, "save", *refs], stdout=subprocess.PIPE, env=docker.env
        )
        load = subprocess.Popen(
            [ctr, "--address", address, "-n", "k8s.io", "images", "import", "-"],
            stdin=save.stdout,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        assert save.stdout is not None
        save.stdout.close()
        codes = (save.wait(), load.wait())
    if codes != (0, 0):
        raise ImageError(f"docker save | ctr import exited {codes}; see {log}")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(ids, indent=1))
    print(f"    imported {len(refs)} tags into {address} namespace k8s.io")
    return True
