"""Build Go programs from published modules, reproducibly and offline-friendly.

Each program is built inside a tiny *wrapper module* under ``<cache>/src/<name>-<version>`` that
requires the published module at a pinned version. That is the only way to build a module that
relies on ``replace`` directives of its own (``go install pkg@version`` refuses those): the
wrapper re-states the replacements, e.g. every Kubernetes staging module ``k8s.io/X`` →
``k8s.io/X v0.<minor>.<patch>``. All programs of one module are built by ONE ``go build`` so that
shared packages compile once (it matters on 2 cores: Kubernetes is ~5,000 packages).

Builds are ``GOTOOLCHAIN=local CGO_ENABLED=0 -trimpath``: static binaries, no toolchain download.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


class BuildError(RuntimeError):
    """A go command failed; the message names the log file with the compiler's output."""


@dataclass(frozen=True)
class GoProgram:
    """One ``go build`` of one or more main packages of one published module."""

    name: str
    """Short name; the wrapper module lives in ``src/<name>-<version>``."""
    module: str
    version: str
    packages: Sequence[str]
    """Full import paths of the main packages to build."""
    outputs: Sequence[str]
    """Binary names (``go build -o DIR/`` names each after its package's last element)."""
    replaces: dict[str, str] = field(default_factory=dict)
    """Extra ``replace`` lines: module path → ``path version``."""
    requires: dict[str, str] = field(default_factory=dict)
    ldflags: str = "-s -w"
    go_directive: str = "1.24.0"
    godebug: str | None = None


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS="-mod=mod")
    return env


def downloaded_go_mod(module: str, version: str, log: Path) -> Path:
    """``go mod download`` one module version and return the path of its go.mod file."""
    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], Path.cwd(), log)
    info = json.loads(out)
    if info.get("Error"):
        raise BuildError(f"go mod download {module}@{version}: {info['Error']}")
    return Path(info["GoMod"])


def staging_replaces(kubernetes_go_mod: Path, version: str) -> dict[str, str]:
    """Map each ``k8s.io/X => ./staging/...`` replacement to the published ``v0.Y.Z`` module."""
    published = "v0." + version.removeprefix("v").split(".", 1)[1]
    pattern = re.compile(r"^\s*(k8s\.io/[A-Za-z0-9._-]+)\s*=>\s*\./staging/", re.M)
    modules = pattern.findall(kubernetes_go_mod.read_text())
    if not modules:
        raise BuildError(f"no staging replacements found in {kubernetes_go_mod}")
    return {m: f"{m} {published}" for m in modules}


def write_wrapper(program: GoProgram, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"module disagg.local/build/{program.name}", "", f"go {program.go_directive}", ""]
    if program.godebug:
        lines += [f"godebug {program.godebug}", ""]
    requires = {program.module: program.version, **program.requires}
    lines += ["require ("] + [f"\t{m} {v}" for m, v in sorted(requires.items())] + [")", ""]
    if program.replaces:
        lines += ["replace ("]
        lines += [f"\t{m} => {target}" for m, target in sorted(program.replaces.items())]
        lines += [")", ""]
    text = "\n".join(lines)
    go_mod = directory / "go.mod"
    if not go_mod.exists() or go_mod.read_text() != text:
        go_mod.write_text(text)


def build(program: GoProgram, src_root: Path, out_dir: Path, log: Path) -> float:
    """Build ``program`` into ``out_dir`` unless every output exists; returns seconds spent."""
    if all((out_dir / o).exists() for o in program.outputs):
        return 0.0
    wrapper = src_root / f"{program.name}-{program.version}"
    write_wrapper(program, wrapper)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # One package: name the binary explicitly (etcd's main package path ends in "v3").
    single = len(program.packages) == 1 and len(program.outputs) == 1
    target = f"{out_dir / program.outputs[0]}" if single else f"{out_dir}/"
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", program.ldflags, "-o", target]
    cmd += list(program.packages)
    _run(cmd, wrapper, log, progress=f"build {program.name} {program.version}")
    missing = [o for o in program.outputs if not (out_dir / o).exists()]
    if missing:
        raise BuildError(f"go build of {program.name} produced no {missing}; see {log}")
    return time.monotonic() - started


def _run(cmd: list[str], cwd: Path, log: Path, progress: str | None = None) -> str:
    """Run a go command, appending everything to ``log``; print a progress line every 30 s."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        sink.write(f"\n$ (cd {cwd} && {' '.join(cmd)})\n")
        sink.flush()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=go_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        captured: list[str] = []
        started = last = time.monotonic()
        for line in proc.stdout:
            sink.write(line)
            captured.append(line)
            now = time.monotonic()
            if progress and now - last >= 30:
                last = now
                print(
                    f"  … {progress}: {len(captured)} packages, {now - started:.0f}s (log: {log})",
                    file=sys.stderr,
                    flush=True,
                )
        rc = proc.wait()
    if rc != 0:
        tail = "".join(captured[-15:])
        raise BuildError(f"{' '.join(cmd[:2])} failed (exit {rc}) in {cwd}; log: {log}\n{tail}")
    return "".join(captured)
