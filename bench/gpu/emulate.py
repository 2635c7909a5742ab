"""The CPU proof: every device call of a GPU-tier run, here, with ``disagg sim`` for vLLM.

    python -m bench.gpu.emulate --stage /path/to/checkout/.gpu [--calls 1,2,3]
    python -m bench.gpu.emulate --stage /path/to/checkout/.gpu --calls 1,simfit   # sims only
    python -m bench.gpu.emulate --stage /path/to/checkout/.gpu --calls 1,fidelity-all

Runs ``bench/gpu/device.sh`` for each call exactly as the GPU machine would -- the staged bundle
parts appended, checked and unpacked, the engines started from the operator's rendering, the
suite, the fault cases, vllm-router, the fidelity driver -- with the device's Python (3.12) in a
venv holding the GPU image's packages the tier relies on (``DEVICE_PACKAGES``; everything else
comes from the bundle, as there), and ``DISAGG_GPU_ENGINE=sim``: the simulator accepts vLLM's
command line, so the engines run the same rendered argv.  What cannot be proven here: vLLM and
NIXL themselves (CUDA), and real timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.gpu import bundle, calls

REPO = Path(__file__).resolve().parents[2]
#: Packages the GPU image provides (KINDS.md) that the gateway, the simulator, the router and
#: the client need; the rest comes from the bundle.
DEVICE_PACKAGES = (
    "aiohttp",
    "httpx",
    "anyio",
    "prometheus-client",
    "pyyaml",
    "requests",
    "uvloop",
    "click",
    "h11",
    "annotated-doc",
    "typing-extensions",
    "tokenizers",  # the image has transformers 5.x and tokenizers
    "jinja2",  # torch needs it; chat templates render with it
)


def device_python() -> str:
    venv = bundle.cache_dir() / "device-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([bundle.find_python312(), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *DEVICE_PACKAGES], check=True)
    return str(python)


def stop_leftovers(root: Path) -> None:
    """Engines a call leaves running for the next one (call 2's timing engines): when the
    emulation ends before the call that uses them, end them -- each by its recorded group."""
    for state in sorted((root / "engines").glob("*.json")):
        pid = json.loads(state.read_text())["pid"]
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=Path, default=REPO / ".gpu", help="the staged .gpu folder")
    parser.add_argument("--root", type=Path, default=Path("/tmp/disagg-gpu-emulated"))
    parser.add_argument("--calls", default="1,2,3")
    parser.add_argument("--port-offset", type=int, default=20000, help="keep clear of others")
    args = parser.parse_args(argv)
    python = device_python()
    shutil.rmtree(args.root, ignore_errors=True)
    planned = [
        *calls.one_gpu_calls(),
        *calls.sim_fit_calls(),
        *calls.fidelity_all_calls(),
        *calls.eager_pin_calls(),
    ]
    carried = {c.command.split("device.sh ")[1].split()[0]: c.carry for c in planned}
    stage = args.root / "stage"
    summary = {}
    for call in args.calls.split(","):
        out = args.root / f"out{call}"
        out.mkdir(parents=True)
        # What the machine holds in this call: the folders carried so far (they stay there).
        stage.mkdir(exist_ok=True)
        for path in carried.get(call, ()):
            (stage / Path(path).name).symlink_to(args.stage / Path(path).name)
        env = {
            **os.environ,
            "PYTHON": python,
            "DISAGG_GPU_ENGINE": "sim",
            "OUT": str(out),
            "DISAGG_GPU_STAGE": str(stage),
            "DISAGG_GPU_ROOT": str(args.root),
            "DISAGG_GPU_PORT_OFFSET": str(args.port_offset),
        }
        env.pop("PYTHONPATH", None)
        env.pop("VIRTUAL_ENV", None)
        started = time.time()
        done = subprocess.run(["bash", "bench/gpu/device.sh", call], cwd=REPO, env=env)
        summary[call] = {
            "rc": done.returncode,
            "seconds": round(time.time() - started, 1),
            "files": sorted(p.name for p in out.iterdir()),
        }
        print(f"== call {call}: {json.dumps(summary[call])}", flush=True)
    stop_leftovers(args.root)
    (args.root / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0 if all(s["rc"] == 0 for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
