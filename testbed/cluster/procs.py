"""Start, find and stop the cluster's daemons: pid files under /run/disagg, logs in the cache.

Components are detached (own session, stdin closed) so they outlive ``cluster up``. A pid file is
trusted only while ``/proc/<pid>/exe`` still names the binary it was written for, so a stale file
after a reboot never makes ``down`` signal an unrelated process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from .config import Settings


def _pidfile(settings: Settings, name: str) -> Path:
    return settings.run / "pids" / f"{name}.pid"


def log_path(settings: Settings, name: str) -> Path:
    return settings.logs / f"{name}.log"


def start(settings: Settings, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``argv`` detached, appending its output to ``logs/<name>.log``; returns its pid."""
    existing = pid_of(settings, name)
    if existing:
        return existing
    log = log_path(settings, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile = _pidfile(settings, name)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        sink.write(f"\n==== {at} {' '.join(argv)}\n")
        sink.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=None if env is None else {**os.environ, **env},
        )
    pidfile.write_text(f"{proc.pid} {Path(argv[0]).resolve()}\n")
    return proc.pid


def pid_of(settings: Settings, name: str) -> int | None:
    """The pid of a running component started by us, or None."""
    pidfile = _pidfile(settings, name)
    try:
        pid_text, exe = pidfile.read_text().split()
        pid = int(pid_text)
        running = os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError):
        return None
    if running.removesuffix(" (deleted)") != exe:
        return None
    with open(f"/proc/{pid}/stat") as stat:
        if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    return pid


def stop(settings: Settings, name: str, grace: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after ``grace`` seconds; True if something was running."""
    pid = pid_of(settings, name)
    _pidfile(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    kill_and_wait(pid, grace)
    return True


def kill_and_wait(pid: int, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _exists(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while _exists(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _exists(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
