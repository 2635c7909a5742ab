"""The GPU tier's one command on the preparing machine: bundle, models, staging, device calls.

    python -m bench.gpu.prepare --repo /path/to/the/checkout/that/travels

1. builds (or finds in ``~/.cache/disagg/gpu``) the offline wheel bundle (``bundle.py``; ~30 min
   cold on 2 cores, xz is the slow part; then seconds) and the model folders (``models.py``, in a
   cached Python 3.12 venv with ``tokenizers``);
2. splits the bundle in two parts and stages them, with the checksum and the models (``xz``),
   in the checkout's ``.gpu/c1`` and ``.gpu/c2`` -- folders ignored through
   ``.git/info/exclude`` (shared by every worktree of the repository), so they travel only when
   a call names them in ``carry``;
3. checks what each call sends (``git ls-files`` + untracked files + its carry) against the
   64 MiB limit, and prints the device calls (``calls.py``): command, carry, expected minutes, and
   what each leaves under ``$OUT``.  ``--x2`` prints the two-GPU calls (issue 19) as well,
   ``--simfit`` the simulator-only fidelity calls (issue 20), ``--fidelity-all`` the
   calls that time the real engines and the calibrated simulators in one run.

On a machine of your own with an NVIDIA GPU, Python 3.12 and torch 2.11 (no network needed):
copy the checkout with ``.gpu/`` to it and run the three commands printed, in order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from bench.gpu import bundle, calls

HERE = Path(__file__).resolve().parent
MODELS_SCRIPT = HERE / "models.py"
#: The tokenizer library of the GPU image's own versions (what vLLM there reads the files with).
TOKENIZERS = "tokenizers==0.23.2"


def build_models() -> Path:
    """The model folders, cached under a key of the script that writes them."""
    key = hashlib.sha256(MODELS_SCRIPT.read_bytes() + TOKENIZERS.encode()).hexdigest()[:12]
    out = bundle.cache_dir() / f"models-{key}"
    if (out / "llama-3.1-8b" / "tokenizer.json").exists():
        return out
    venv = bundle.cache_dir() / "build-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([bundle.find_python312(), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", TOKENIZERS], check=True)
    partial = out.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([str(python), str(MODELS_SCRIPT), str(partial)], check=True)
    partial.rename(out)
    return out


def ignore_stage(repo: Path, stage: str) -> None:
    """``/<stage>/`` in the repository's shared ``info/exclude``, once."""
    common = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--git-common-dir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    exclude = (repo / common if not os.path.isabs(common) else Path(common)) / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if f"/{stage}/" not in lines:
        exclude.write_text("\n".join([*lines, f"/{stage}/"]) + "\n")


def stage(
    repo: Path, built: bundle.Bundle, models: Path, name: str = calls.STAGE
) -> dict[str, int]:
    """Parts, checksum and models into ``repo/<name>/c1`` and ``c2``; returns bytes per folder."""
    root = repo / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "c2").mkdir(parents=True)
    packed = root / "c2" / "models.tar.xz"
    with tarfile.open(packed, "w:xz", preset=9) as tar:
        tar.add(models, arcname="models")
    # The models ride with part 2, so part 1 takes their size more: both calls send the same.
    models_bytes = packed.stat().st_size
    first = (built.size + models_bytes + 1) // 2
    sizes = [first, built.size - first]
    meta = {"sha256": built.sha256, "bytes": built.size, "key": built.key, "parts": sizes}
    with built.path.open("rb") as source:
        for index, size in enumerate(sizes, start=1):
            folder = root / f"c{index}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"site.tar.xz.part{index}").write_bytes(source.read(size))
            (folder / "bundle.json").write_text(json.dumps(meta, indent=1))
    ignore_stage(repo, name)
    return {
        f"{name}/{f.name}": sum(p.stat().st_size for p in f.rglob("*") if p.is_file())
        for f in sorted(root.iterdir())
    }


def checkout_bytes(repo: Path) -> int:
    """Tracked plus untracked-but-not-ignored files: what every call sends besides its carry."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    paths = [repo / p.decode() for p in listed if p]
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def print_calls(plan: list[calls.DeviceCall], checkout: int, carried: dict[str, int]) -> None:
    for call in plan:
        size = calls.travel_bytes(checkout, carried, call)
        print(
            f"\n{call.name} (kind {call.kind}, timeout_s {call.timeout_s}, "
            f"~{call.minutes} min, sends {size / calls.MiB:.1f} MiB)"
        )
        print(f"  command: {call.command}")
        print(f"  carry:   {json.dumps(list(call.carry))}")
        print(f"  $OUT:    {', '.join(call.writes)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, default=HERE.parents[1], help="checkout that travels")
    parser.add_argument("--x2", action="store_true", help="also print the two-GPU calls")
    parser.add_argument(
        "--simfit", action="store_true", help="also print the simulator-only calls (issue 20)"
    )
    parser.add_argument(
        "--fidelity-all",
        action="store_true",
        help="also print the calls that measure real engines and calibrated sims in one run",
    )
    parser.add_argument(
        "--eager-pin",
        action="store_true",
        help="also print the calls that time the eager engine unpinned and pinned to CPUs",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the bundle")
    args = parser.parse_args(argv)
    built = bundle.build(force=args.rebuild)
    print(f"bundle: {built.path} ({built.size / calls.MiB:.1f} MiB, sha256 {built.sha256[:16]})")
    models = build_models()
    print(f"models: {models}")
    carried = stage(args.repo, built, models)
    checkout = checkout_bytes(args.repo)
    print(
        f"staged in {args.repo}: "
        + ", ".join(f"{k} {v / calls.MiB:.1f} MiB" for k, v in carried.items())
    )
    print(f"checkout (tracked + untracked, not ignored): {checkout / calls.MiB:.2f} MiB")
    plan = calls.one_gpu_calls() + (calls.two_gpu_calls() if args.x2 else [])
    plan += calls.sim_fit_calls() if args.simfit else []
    plan += calls.fidelity_all_calls() if args.fidelity_all else []
    plan += calls.eager_pin_calls() if args.eager_pin else []
    problems = calls.check_plan(plan, checkout, carried)
    print_calls(plan, checkout, carried)
    (args.repo / calls.STAGE / "calls.json").write_text(
        json.dumps([call.__dict__ for call in plan], indent=1, default=list)
    )
    if problems:
        print("\nDOES NOT FIT:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("\nIssue the calls back to back (within ~30 s of each return), in this order.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
