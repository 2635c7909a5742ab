"""The offline wheel bundle: vLLM 0.26.0 + NIXL + vllm-router for a GPU machine without network.

A GPU machine that can fetch nothing gets its Python packages as one ``site.tar.xz``: the closed
set of wheels in ``requirements-device.txt`` installed with ``--no-deps`` into one folder, stripped
of what a dense Llama on an H200 never loads, and compressed with ``xz -9``.  Measured on the dev
machine: 1.2 GB of installed wheels, 0.58 GB after stripping, about 130 MB compressed -- so it
travels in chunks (``calls.py`` decides how many and which call carries which).

Everything is cached under ``~/.cache/disagg/gpu`` (``$DISAGG_CACHE/gpu``): the wheels (shared by
every bundle), and the bundle itself under a key that hashes the requirements and the strip list,
so a rebuild happens only when one of them changes.  Building needs a Python 3.12 with pip (the
device's Python; pyenv's 3.12.x will do) and ``xz``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-device.txt"

#: pip's platform tags for the device (glibc 2.39, x86-64); pip matches each tag exactly.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
    "any",
]

#: Paths (globs, relative to the site folder) removed before packing, each with why.  A dense
#: Llama with FlashAttention 3 on Hopper loads none of them; together they are ~600 MB unpacked.
STRIP: dict[str, str] = {
    "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so": "FlashAttention 2; Hopper runs FA3 (_vllm_fa3_C)",
    "vllm/_moe_C_stable_libtorch.abi3.so": "MoE kernels, imported under suppress(ImportError)",
    "vllm/vllm-rs": "optional Rust front end",
    "vllm/_flashmla_C.abi3.so": "FlashMLA (DeepSeek attention)",
    "vllm/_flashmla_extension_C.abi3.so": "FlashMLA",
    "vllm/_qutlass_C.abi3.so": "microscaling quantisation kernels",
    "vllm/third_party/deep_gemm": "DeepGEMM (fp8 MoE)",
    "vllm/third_party/fmha_sm100": "Blackwell attention",
    "nixl_ep_cu13": "NIXL expert-parallel kernels, built for other torch versions",
    "nixl_ep": "NIXL expert-parallel kernels",
    "nixl_cu13.libs/ucx/libucx_perftest*": "UCX's perftest plugin",
    # NIXL loads its backends from .nixl_cu13.mesonpy.libs/plugins; vLLM uses UCX.  The storage
    # and fabric plugins go, with the libraries only they link (checked with readelf: the core,
    # UCX, POSIX and telemetry need none of them; an agent still lists POSIX and UCX and creates
    # the UCX backend, tested on the dev machine).
    ".nixl_cu13.mesonpy.libs/plugins/libplugin_[AGIL]*.so": "NIXL Azure/GDS/GPUNETIO/GUSLI/"
    "INFINIA/LIBFABRIC plugins",
    ".nixl_cu13.mesonpy.libs/plugins/libplugin_OBJ.so": "NIXL object-store plugin",
    "nixl_cu13.libs/nixl/libplugin_[AGILO]*.so": "copies of the same plugins",
    ".nixl_cu13.mesonpy.libs/libobj_utils.so": "object-store helper (links the AWS SDK)",
    "nixl_cu13.libs/libaws-*": "AWS SDK (object-store plugin)",
    "nixl_cu13.libs/libazure-*": "Azure SDK (blob plugin)",
    "nixl_cu13.libs/libcurl-*": "libcurl (object-store plugins)",
    "nixl_cu13.libs/libxml2-*": "libxml2 (object-store plugins)",
    "nixl_cu13.libs/libldap-*": "libldap (object-store plugins)",
    "nixl_cu13.libs/liblber-*": "liblber (libldap)",
    "nixl_cu13.libs/libs2n-*": "s2n TLS (AWS SDK)",
    "nixl_cu13.libs/libgusli_clnt-*": "GUSLI client (GUSLI plugin)",
    "bin": "console scripts (the device runs python3 -m ...)",
    "include": "C headers",
    "nixl_cu13.scripts": "NIXL tools",
    "mistral_common/data": "Mistral tokenizer files",
}
#: Native libraries shipped with symbols: ``strip --strip-unneeded`` drops the symbol tables
#: (not the dynamic ones they are loaded by); vllm-router's Rust library goes from 62 to 50 MB.
STRIP_SYMBOLS = ("vllm_router_rs.abi3.so",)
#: Bump when the packing itself changes (compression, layout), to invalidate cached bundles.
PACKING = "xz-9/v1"


class BundleError(RuntimeError):
    """A step of the build failed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    """The ``site.tar.xz``."""
    sha256: str
    size: int
    key: str


def cache_dir() -> Path:
    base = Path(os.environ.get("DISAGG_CACHE") or Path.home() / ".cache" / "disagg")
    return base / "gpu"


def requirements(path: Path = REQUIREMENTS) -> list[str]:
    """``name==version`` lines of the requirements file, comments and blanks dropped."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    reqs = [line for line in lines if line]
    unpinned = [r for r in reqs if "==" not in r]
    if unpinned:
        raise BundleError(f"{path}: every requirement must be pinned (name==version): {unpinned}")
    return reqs


def bundle_key(reqs: list[str]) -> str:
    text = "\n".join([PACKING, *sorted(reqs), *sorted(STRIP), *STRIP_SYMBOLS])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_python312() -> str:
    """A Python 3.12 with pip: ``$PY312``, ``python3.12`` on PATH, or pyenv's newest 3.12.x."""
    candidates = [os.environ.get("PY312"), shutil.which("python3.12")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += sorted(glob.glob(str(pyenv_root / "versions" / "3.12.*" / "bin" / "python3")))[
        ::-1
    ]
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys, pip; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    raise BundleError(
        "no Python 3.12 with pip found: set PY312=/path/to/python3.12 (the GPU image's Python "
        "is 3.12, and pip must download wheels for it)"
    )


def download_wheels(python: str, reqs: list[str], wheels: Path) -> None:
    """The exact wheels, no dependency resolution (the list is already closed)."""
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(reqs) + "\n")
        listing.flush()
        argv = [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        argv += ["--python-version", "3.12", "--implementation", "cp", "-d", str(wheels)]
        for platform in PLATFORMS:
            argv += ["--platform", platform]
        _run([*argv, "-r", listing.name], "pip download")


def wheel_files(reqs: list[str], wheels: Path) -> list[Path]:
    """The downloaded wheel of each requirement (names normalised as pip does)."""
    found = []
    for req in reqs:
        name, version = req.split("==")
        stem = name.lower().replace("-", "_").replace(".", "_")
        matches = [
            p
            for p in wheels.glob("*.whl")
            if p.name.lower().startswith(f"{stem}-{version}-")
            or p.name.lower().replace("-", "_").startswith(f"{stem}_{version}_")
        ]
        if not matches:
            raise BundleError(f"no wheel for {req} in {wheels}")
        found.append(sorted(matches)[0])
    return found


def strip_site(site: Path) -> int:
    """Remove ``STRIP`` and byte-code caches, strip ``STRIP_SYMBOLS``; returns bytes saved."""
    removed = 0
    for name in STRIP_SYMBOLS:
        library = site / name
        if library.exists():
            before = library.stat().st_size
            _run(["strip", "--strip-unneeded", str(library)], f"strip {name}")
            removed += before - library.stat().st_size
    paths = [Path(p) for pattern in STRIP for p in glob.glob(str(site / pattern))]
    paths += list(site.rglob("__pycache__"))
    for path in paths:
        if path.is_dir():
            removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path)
        elif path.exists():
            removed += path.stat().st_size
            path.unlink()
    return removed


def build(force: bool = False, log: bool = True) -> Bundle:
    """The cached bundle for the current requirements, built first if needed."""
    reqs = requirements()
    key = bundle_key(reqs)
    folder = cache_dir() / f"bundle-{key}"
    archive, digest_file = folder / "site.tar.xz", folder / "site.tar.xz.sha256"
    if archive.exists() and digest_file.exists() and not force:
        return Bundle(archive, digest_file.read_text().strip(), archive.stat().st_size, key)
    python = find_python312()
    wheels = cache_dir() / "wheels"
    _say(log, f"downloading {len(reqs)} wheels into {wheels} (cached)")
    download_wheels(python, reqs, wheels)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        site = Path(tmp) / "site"
        _say(log, "installing them into one site folder (--no-deps, no byte-code)")
        install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-compile"]
        _run(
            [*install, "--no-index", "--target", str(site), *map(str, wheel_files(reqs, wheels))],
            "pip install --target",
        )
        removed = strip_site(site)
        _say(log, f"stripped {removed / 2**20:.0f} MiB; packing with xz -9 (minutes on 2 cores)")
        partial = folder / "site.tar.xz.partial"
        with partial.open("wb") as out:
            tar = subprocess.Popen(
                ["tar", "-C", str(site), "-cf", "-", "."], stdout=subprocess.PIPE
            )
            xz = subprocess.run(["xz", "-T0", "-9"], stdin=tar.stdout, stdout=out)
            if tar.wait() != 0 or xz.returncode != 0:
                raise BundleError("tar | xz failed")
        partial.rename(archive)
    digest = sha256_of(archive)
    digest_file.write_text(digest + "\n")
    return Bundle(archive, digest, archive.stat().st_size, key)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise BundleError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(f"bundle: {text}", flush=True)
