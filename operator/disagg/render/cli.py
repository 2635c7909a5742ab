"""``disagg render``: what the operator would apply for a custom resource, without a cluster.

    disagg render examples/disaggdeployment-h200.yaml             # every object, as YAML
    disagg render examples/disaggdeployment-h200.yaml --workers   # each vLLM container, as JSON
    disagg render FILE --workers --role decode --set spec.kvTransfer.loadFailurePolicy=recompute

It runs the controller's own rendering chain (:mod:`disagg.render.objects`), so the output is what
a cluster would run.  ``--workers`` prints, per worker pool, the vLLM command, args and environment
and the vLLM release they were rendered for: the GPU tier starts real vLLM from exactly this.
``--set`` edits the custom resource before it is validated and rendered (a dotted path of wire
names, a YAML value), to see what a spec change would do without editing the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from disagg.render.objects import RenderError, render_custom_resource, render_workers


class UsageError(ValueError):
    """Bad input to the command (the message says which and why)."""


def apply_setting(doc: dict[str, Any], assignment: str) -> None:
    """Apply ``path.to.field=value`` to ``doc`` in place; the value is read as YAML."""
    path, sep, raw = assignment.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        raise UsageError(f"--set wants PATH=VALUE with a dotted PATH, got {assignment!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {path}: the value is not YAML: {exc}") from None
    node = doc
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise UsageError(f"--set {path}: {key!r} is not an object in the resource")
        node = child
    node[keys[-1]] = value


def load_documents(source: str) -> list[dict[str, Any]]:
    """The non-empty YAML (or JSON) documents of a file, ``-`` meaning standard input."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise UsageError(f"{source} is not YAML: {exc}") from None
    if not docs:
        raise UsageError(f"{source} holds no resource")
    for doc in docs:
        if not isinstance(doc, dict):
            raise UsageError(f"{source}: every document must be an object")
    return docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="disagg render",
        description="Print what the operator renders for a DisaggDeployment or InferencePool.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML/JSON file, - for stdin")
    parser.add_argument(
        "--workers",
        action="store_true",
        help="print each worker pool's vLLM command, args and env as JSON",
    )
    parser.add_argument(
        "--role",
        choices=["prefill", "decode", "aggregated"],
        help="with --workers: only pools of this role",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="change the resource first, e.g. spec.engine.vllmVersion=0.26.0 (repeatable)",
    )
    parser.add_argument("--namespace", default="default", help="namespace of the rendered objects")
    return parser


def render(args: argparse.Namespace) -> str:
    docs = [doc for source in args.files for doc in load_documents(source)]
    for doc in docs:
        for assignment in args.set:
            apply_setting(doc, assignment)
    if args.workers:
        workers = [w for doc in docs for w in render_workers(doc, args.namespace)]
        chosen = [w.to_json() for w in workers if args.role in (None, w.role)]
        return json.dumps(chosen, indent=2) + "\n"
    objects = [obj for doc in docs for obj in render_custom_resource(doc, args.namespace)]
    return yaml.safe_dump_all(objects, sort_keys=False)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'resource'}: {e['msg']}" for e in exc.errors()
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        sys.stdout.write(render(args))
    except ValidationError as exc:
        print(f"disagg render: invalid resource: {_problems(exc)}", file=sys.stderr)
        return 2
    except (UsageError, RenderError) as exc:
        print(f"disagg render: {exc}", file=sys.stderr)
        return 2
    return 0
