"""Command line: ``python -m testbed.cluster install|up|down|status|load-image|kubectl``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import Settings
from .gobuild import BuildError
from .install import PrerequisiteError, install
from .lifecycle import down, load_image, status, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.cluster",
        description="A real single-node Kubernetes cluster built from source (docs/cluster.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="build/fetch every pinned component into the cache")
    p_install.add_argument(
        "--skip",
        action="append",
        default=[],
        help="skip a step by its first word (e.g. prometheus-adapter)",
    )
    sub.add_parser("up", help="install (cached: seconds), then start the cluster")
    sub.add_parser("down", help="stop everything and remove what up created (images stay)")
    sub.add_parser("status", help="component processes, apiserver, node; exit 0 only if healthy")
    p_load = sub.add_parser("load-image", help="import image archives into the node's containerd")
    p_load.add_argument("archives", nargs="+", type=Path)
    sub.add_parser("kubectl", help="run the cached kubectl against the cluster: kubectl ARGS...")
    argv = sys.argv[1:] if argv is None else argv
    settings = Settings.from_env()
    if argv[:1] == ["kubectl"]:
        kubectl = str(settings.tool("kubectl"))
        os.execv(kubectl, [kubectl, f"--kubeconfig={settings.kubeconfig}", *argv[1:]])
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            timings = install(settings, skip=frozenset(args.skip))
            print(" ".join(f"{k}={v}s" for k, v in timings.items()))
        elif args.command == "up":
            install(settings, skip=frozenset({"prometheus-adapter"}))
            marks = up(settings)
            print(f"cluster up in {marks['total']}s; export KUBECONFIG={settings.kubeconfig}")
        elif args.command == "down":
            for line in down(settings):
                print(line)
            print("cluster down")
        elif args.command == "status":
            healthy, lines = status(settings)
            print("\n".join(lines))
            return 0 if healthy else 3
        elif args.command == "load-image":
            for archive in args.archives:
                load_image(settings, archive)
                print(f"imported {archive}")
    except (PrerequisiteError, BuildError, RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
