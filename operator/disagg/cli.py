"""The ``disagg`` command line.

Each subcommand lives in its own module and owns its argument parser; this
module only dispatches, importing the subcommand lazily so that ``disagg plan``
does not pay for kopf and ``disagg gateway`` does not import the Kubernetes
client.  A subcommand module exposes ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

#: name -> (module exposing ``main(argv)``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("disagg.controller.cli", "run the operator (kopf) against the current kubeconfig"),
    "crds": ("disagg.api.crdgen", "generate crds/*.yaml from the API models (--check to diff)"),
    "gateway": ("disagg.gateway.cli", "run the OpenAI-compatible KV-routing gateway"),
    "sim": ("disagg.sim.cli", "run a vLLM-compatible engine simulator (accepts vLLM's flags)"),
    "plan": ("disagg.planner.cli", "capacity planner: should you disaggregate, and how"),
    "render": ("disagg.render.cli", "print what the operator renders for a resource (no cluster)"),
}


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [
        "usage: disagg <command> [options]",
        "",
        "Disaggregated prefill/decode LLM serving on Kubernetes.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'disagg <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        from disagg import __version__

        print(f"disagg {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"disagg: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
