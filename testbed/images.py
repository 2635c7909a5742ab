"""Build the disagg container images without a registry, and load them into containerd.

Nothing here can pull an image, so the base is made from Debian packages: ``debootstrap``
(bookworm, minbase, python3 = 3.11, ca-certificates) into a directory, trimmed, tarred and
``docker import``-ed.
``images/Dockerfile`` takes that base as ``BASE_IMAGE`` (its default is a public Python image, so
the same file builds where a registry exists).  pip inside a build cannot reach an index, so every
wheel -- ours and our dependencies' -- is built on the host and installed with ``--no-index``.

Every step is keyed by its inputs and skipped when its output exists: the base tarball by the
debootstrap recipe, the dependency wheelhouse by ``pyproject.toml``, our wheel by a hash of the
sources, an image by a label holding the hash of everything it was built from.  All of it lives
under ``${DISAGG_CACHE:-~/.cache/disagg}/images``, never in the repository.

When no Docker daemon answers, one is started in the background (``dockerd``) with its own
containerd, so image builds never depend on -- or disturb -- the cluster's containerd, and with
``--iptables=false`` so Docker leaves the host firewall (and the cluster's pod traffic) alone.

    python -m testbed.images build             # base + wheels + disagg/{operator,gateway,sim}
    python -m testbed.images load              # docker save | ctr -n k8s.io images import -
    python -m testbed.images all               # both; "not loaded" is a notice, not an error
    python -m testbed.images status | stop     # show / stop the dockerd this script started
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed.images_docker import (
    Docker,
    ImageError,
    containerd_address,
    load_into_containerd,
    require,
    run_logged,
)

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "images" / "Dockerfile"
COMPONENTS = ("operator", "gateway", "sim")
SUITE, VARIANT, PACKAGES = "bookworm", "minbase", ("python3", "ca-certificates")
#: What is deleted from the debootstrapped tree; part of the base's cache key.
TRIM = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "var/log/*",
)
#: Dependencies only the operator imports (import-linter keeps kopf and the Kubernetes client out of
#: the gateway and the simulator); the gateway and sim images are built without them.
OPERATOR_ONLY = frozenset({"kopf", "kubernetes"})
#: The image label holding the hash of an image's inputs (base, Dockerfile, wheels).
INPUTS_LABEL = "dev.disagg.inputs"


def cache_dir() -> Path:
    root = Path(os.environ.get("DISAGG_CACHE") or Path.home() / ".cache" / "disagg")
    return root / "images"


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def version() -> str:
    return str(_project()["version"])


def requirements(operator_only: bool) -> str:
    """pyproject's dependencies in (or out of) OPERATOR_ONLY, as one Dockerfile build argument."""
    specs = [str(spec).replace(" ", "") for spec in _project()["dependencies"]]
    name = re.compile(r"[^A-Za-z0-9._-]")
    return " ".join(
        s for s in specs if (name.split(s)[0].lower() in OPERATOR_ONLY) == operator_only
    )


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


TIMINGS: dict[str, float] = {}


@contextmanager
def step(name: str) -> Iterator[None]:
    """Print a step's start and end with its duration, and record it in TIMINGS."""
    print(f"==> {name}", flush=True)
    start = time.monotonic()
    yield
    TIMINGS[name] = time.monotonic() - start
    print(f"    done in {TIMINGS[name]:.1f}s", flush=True)


# ---- base image --------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror this host's apt uses (``$DEBOOTSTRAP_MIRROR`` overrides)."""
    if mirror := os.environ.get("DEBOOTSTRAP_MIRROR"):
        return mirror
    for src in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        for line in src.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    listing = Path("/etc/apt/sources.list")
    for line in listing.read_text().splitlines() if listing.exists() else []:
        words = line.split()
        if len(words) >= 3 and words[0] == "deb" and "security" not in words[1]:
            return words[1] if not words[1].startswith("[") else words[2]
    raise ImageError("no Debian mirror in /etc/apt; set DEBOOTSTRAP_MIRROR")


def base_tarball() -> Path:
    """Debootstrap the base filesystem into a tarball, once per recipe."""
    key = digest(SUITE, VARIANT, ",".join(PACKAGES), *TRIM)
    tarball = cache_dir() / "base" / f"{SUITE}-{VARIANT}-{key}.tar"
    if tarball.exists():
        print(f"    cached: {tarball}")
        return tarball
    debootstrap = require("debootstrap", "apt-get install debootstrap (or pass --base-image)")
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root (or pass --base-image python:3.11-slim-bookworm)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = [debootstrap, f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}"]
        run_logged([*cmd, SUITE, str(rootfs), debian_mirror()], tarball.with_suffix(".log"))
        for pattern in TRIM:
            for path in rootfs.glob(pattern):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        partial = Path(tmp) / "base.tar"
        run_logged(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
            tarball.with_suffix(".tar.log"),
        )
        partial.rename(tarball)
    return tarball


def import_base(docker: Docker, tarball: Path) -> str:
    ref = f"disagg/base:{tarball.stem}"
    if docker.image_id(ref):
        print(f"    cached: {ref}")
        return ref
    docker.run(["import", "--message", f"debootstrap {SUITE} {VARIANT}", str(tarball), ref])
    docker.run(["tag", ref, f"disagg/base:{SUITE}"])
    return ref


# ---- wheels ------------------------------------------------------------------------------------


def _source_files() -> list[Path]:
    files = [ROOT / "pyproject.toml", ROOT / "README.md"]
    pkg = ROOT / "operator" / "disagg"
    files += sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


def _pip() -> str:
    pip = ROOT / ".venv" / "bin" / "pip"
    if not pip.exists():
        raise ImageError(f"{pip} missing: run `make install` first")
    return str(pip)


def _build_env(wheels: Path) -> Path:
    """A venv with pyproject's build requirements: our wheel builds in seconds, unisolated."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        requires = [str(r) for r in tomllib.load(f)["build-system"]["requires"]]
    env = wheels / f"buildenv-{digest(sys.version, *requires)}"
    if not (env / ".complete").exists():
        shutil.rmtree(env, ignore_errors=True)
        run_logged([sys.executable, "-m", "venv", str(env)], wheels / "buildenv.log")
        pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        run_logged([*pip, *requires], wheels / "buildenv.log")
        (env / ".complete").touch()
    return env


def build_wheels() -> tuple[Path, Path]:
    """Wheelhouses ``(deps, app)``: dependencies and pip (per pyproject), ours (per source hash)."""
    pip, py = _pip(), f"cp{sys.version_info.major}{sys.version_info.minor}"
    sources = _source_files()
    deps_key = digest(py, (ROOT / "pyproject.toml").read_bytes())
    app_key = digest(
        *(str(p.relative_to(ROOT)) for p in sources), *(p.read_bytes() for p in sources)
    )
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    deps_dir, app_dir = wheels / f"deps-{deps_key}", wheels / f"app-{app_key}"
    build_env = _build_env(wheels)
    for out in (deps_dir, app_dir):
        if out.exists():
            print(f"    cached: {out}")
            continue
        with tempfile.TemporaryDirectory(dir=wheels) as tmp:
            src = Path(tmp) / "src"  # build from a copy: no build/ or egg-info in the work tree
            for path in sources:
                (src / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / path.relative_to(ROOT))
            partial = Path(tmp) / "wheels"
            cmd = [pip, "wheel", "--disable-pip-version-check", "-w", str(partial)]
            if out == deps_dir:  # every dependency, plus pip itself to install them with
                run_logged([*cmd, str(src)], Path(f"{out}.log"))
                for ours in partial.glob("disagg-*.whl"):
                    ours.unlink()
                run_logged([*cmd, "--no-deps", "pip"], Path(f"{out}.log"))
            else:
                cmd = [str(build_env / "bin" / "python"), "-m", "pip", *cmd[1:]]
                run_logged(
                    [*cmd, "--no-deps", "--no-build-isolation", str(src)], Path(f"{out}.log")
                )
            partial.rename(out)
    keep = {deps_dir.name, app_dir.name, build_env.name}
    for old in wheels.glob("*-*"):  # superseded wheelhouses, build envs and their logs
        if old.name.removesuffix(".log") not in keep:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    return deps_dir, app_dir


# ---- app images --------------------------------------------------------------------------------


def build_context(wheelhouses: tuple[Path, Path]) -> Path:
    """A fresh directory holding exactly what the Dockerfile copies (wheels/, images/vllm)."""
    ctx = cache_dir() / "context"
    shutil.rmtree(ctx, ignore_errors=True)
    for name, house in zip(("deps", "app"), wheelhouses, strict=True):
        (ctx / "wheels" / name).mkdir(parents=True)
        for wheel in house.glob("*.whl"):
            os.link(wheel, ctx / "wheels" / name / wheel.name)
    (ctx / "images").mkdir()
    shutil.copy2(ROOT / "images" / "vllm", ctx / "images" / "vllm")
    return ctx


def image_refs(component: str) -> list[str]:
    return [f"disagg/{component}:{version()}", f"disagg/{component}:dev"]


def build_image(docker: Docker, component: str, base: str, wheels: tuple[Path, Path]) -> str:
    refs = image_refs(component)
    inputs = digest(
        component,
        version(),
        requirements(operator_only=False),
        requirements(operator_only=True),
        docker.image_id(base) or base,
        DOCKERFILE.read_bytes(),
        (ROOT / "images" / "vllm").read_bytes(),
        *(str(house) for house in wheels),  # wheelhouse names are hashes of their inputs
    )
    if all(docker.label(ref, INPUTS_LABEL) == inputs for ref in refs):
        print(f"    cached: {refs[0]} (inputs {inputs})")
        return refs[0]
    cmd = ["build", "--network", "none", "-f", str(DOCKERFILE), "--target", component]
    cmd += ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"VERSION={version()}"]
    cmd += ["--build-arg", f"SERVE_REQUIREMENTS={requirements(operator_only=False)}"]
    cmd += ["--build-arg", f"OPERATOR_REQUIREMENTS={requirements(operator_only=True)}"]
    cmd += ["--label", f"{INPUTS_LABEL}={inputs}"]
    for ref in refs:
        cmd += ["-t", ref]
    docker.run_logged([*cmd, str(build_context(wheels))], cache_dir() / "logs" / f"{component}.log")
    return refs[0]


@contextmanager
def exclusive() -> Iterator[None]:
    """Serialize builds and loads across processes (a developer's `make images` and a test run)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("    waiting for another testbed.images run to finish", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(docker: Docker, base_image: str | None, components: list[str]) -> dict[str, str]:
    """Build (or find cached) every step up to the images; returns component -> image ref."""
    with exclusive():
        docker.ensure()  # again, under the lock: another run may have stopped its daemon meanwhile
        return _build(docker, base_image, components)


def stop_daemon(docker: Docker) -> str:
    """Stop the daemon this module started, once no build or load of another process is running."""
    with exclusive():
        return docker.stop()


def _build(docker: Docker, base_image: str | None, components: list[str]) -> dict[str, str]:
    if base_image is None:
        with step("base: debootstrap"):
            tarball = base_tarball()
        with step("base: docker import"):
            base_image = import_base(docker, tarball)
    with step("wheels: pip wheel on the host"):
        wheels = build_wheels()
    built = {}
    for component in components:
        with step(f"image: {component}"):
            built[component] = build_image(docker, component, base_image, wheels)
    return built


def ensure_loaded(containerd: str, base_image: str | None = None) -> Docker:
    """For test fixtures: build what changed and load it into ``containerd``; raise if it is down.

    Returns the Docker client; ``images.stop_daemon(client)`` at the end of the session stops the
    daemon if this process started it (``client.started``)."""
    docker = Docker(cache_dir() / "dockerd")
    docker.ensure()
    build(docker, base_image, list(COMPONENTS))
    refs = [ref for c in COMPONENTS for ref in image_refs(c)]
    with exclusive():
        if not load_into_containerd(docker, refs, containerd, cache_dir() / "logs"):
            raise ImageError(f"no containerd answers at {containerd}: the images were not loaded")
    return docker


def report_sizes(docker: Docker, refs: list[str]) -> None:
    for ref in refs:
        size = docker.size(ref)
        print(f"    {ref:<28} {size / 1e6:7.1f} MB" if size else f"    {ref:<28} missing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.images", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["build", "load", "all", "status", "stop"])
    parser.add_argument("--component", action="append", choices=COMPONENTS, dest="components")
    parser.add_argument("--base-image", help="skip debootstrap; build FROM this image instead")
    parser.add_argument("--containerd-address", help="the cluster's containerd socket")
    args = parser.parse_args(argv)
    components: list[str] = args.components or list(COMPONENTS)
    docker = Docker(cache_dir() / "dockerd")
    try:
        if args.command == "stop":
            print(stop_daemon(docker))
            return 0
        if args.command == "status":
            print(docker.status())
            report_sizes(docker, [image_refs(c)[0] for c in COMPONENTS]) if docker.up() else None
            return 0
        with step("docker daemon"):
            if not docker.ensure():
                print("    a Docker daemon is already answering")
        if args.command in ("build", "all"):
            build(docker, args.base_image, components)
            print("==> image sizes")
            report_sizes(docker, [image_refs(c)[0] for c in components])
        if args.command in ("load", "all"):
            address = args.containerd_address or containerd_address()
            refs = [ref for c in components for ref in image_refs(c)]
            with step(f"load into containerd {address} (namespace k8s.io)"), exclusive():
                loaded = load_into_containerd(docker, refs, address, cache_dir() / "logs")
            if not loaded and args.command == "all":
                return 0
            if not loaded:
                return 1
    except ImageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("==> timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
