"""What the GPU machine is: GPU, driver, Python and the packages the tier relies on.

    python -m bench.gpu.probe --out $OUT/call1.json

Standard library only (it runs before the bundle is unpacked).  The report quotes it, so a run's
numbers always say which GPU, driver and image they came from.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "httpx",
    "aiohttp",
    "prometheus-client",
    "uvloop",
    "triton",
    "pyyaml",
)


NVIDIA_QUERY = "--query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm"


def run(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return f"{argv[0]}: not installed"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return (done.stdout or done.stderr).strip()


def probe() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    root = Path(os.environ.get("DISAGG_GPU_ROOT", "/tmp/disagg-gpu"))
    return {
        "gpus": run(["nvidia-smi", NVIDIA_QUERY, "--format=csv,noheader"]),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "packages": versions,
        "bundle_bytes_so_far": (root / "site.tar.xz").stat().st_size
        if (root / "site.tar.xz").exists()
        else 0,
        "tools": {t: bool(shutil.which(t)) for t in ("xz", "tar", "sha256sum", "setsid")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    facts = probe()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(facts, indent=1))
    print(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
