"""vLLM's own command line, KV-transfer config and environment, driven the way the server does.

Nothing here re-implements a vLLM rule: each check hands our rendered text to the pinned vLLM's
code and reports what vLLM says.

* ``vllm serve MODEL ...`` is parsed as ``vllm.entrypoints.cli.main.main`` parses it: a top-level
  :class:`FlexibleArgumentParser` (which rewrites ``--flag_name`` to ``--flag-name``, expands
  ``--json.key value`` and moves ``--model`` to the front) with the ``serve`` subcommand's parser
  built by ``ServeSubcommand.subparser_init`` (``make_arg_parser``), then
  ``ServeSubcommand.validate``.  Only ``serve`` is registered: the other subcommands' parsers
  cannot change how ``serve`` parses its arguments.
* ``python3 -m vllm.entrypoints.openai.api_server --model MODEL ...`` is parsed as that module's
  ``main`` does: ``make_arg_parser(FlexibleArgumentParser())`` then ``validate_parsed_serve_args``.
* The parsed namespace then builds ``AsyncEngineArgs.from_cli_args`` -- the first thing the
  server does with it -- so a value the dataclass rejects fails here too.  Going further
  (``create_engine_config``) needs the model's Hugging Face config, which this tier cannot
  download.

argparse reports errors by printing usage and exiting 2; :func:`parse_worker_argv` turns that into
:class:`VLLMRejected` carrying vLLM's own message, so a failing test says which flag and why.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import vllm.envs
from vllm.config.kv_transfer import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.cli.serve import ServeSubcommand

try:  # vLLM 0.33 moved the server's parser out of the OpenAI package
    from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:  # vLLM 0.26
    from vllm.entrypoints.openai.cli_args import (  # type: ignore[no-redef]
        make_arg_parser,
        validate_parsed_serve_args,
    )
from vllm.utils.argparse_utils import FlexibleArgumentParser

SERVE = ("vllm", "serve")
API_SERVER = ("python3", "-m", "vllm.entrypoints.openai.api_server")


class VLLMRejected(AssertionError):
    """vLLM refused what we rendered; the message is vLLM's own."""


@contextlib.contextmanager
def _argparse_errors(what: str) -> Iterator[None]:
    """Turn argparse's print-usage-and-exit into an exception carrying its message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            yield
    except SystemExit as exc:
        # argparse prints "usage: ..." then "<prog>: error: <message>" (possibly multi-line).
        text = stderr.getvalue()
        _, sep, message = text.partition(": error: ")
        raise VLLMRejected(f"{what}: {message.strip() if sep else text.strip() or exc}") from None
    except (ValueError, TypeError) as exc:
        raise VLLMRejected(f"{what}: {exc}") from exc


@functools.cache
def _serve_parser() -> tuple[FlexibleArgumentParser, ServeSubcommand]:
    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    command = ServeSubcommand()
    command.subparser_init(subparsers).set_defaults(dispatch_function=command.cmd)
    return parser, command


@functools.cache
def _api_server_parser() -> FlexibleArgumentParser:
    return make_arg_parser(FlexibleArgumentParser(description="vLLM OpenAI API server"))


def serve_actions() -> list[argparse.Action]:
    """The argparse actions of ``vllm serve`` (each flag with its default, type, choices)."""
    parser, _ = _serve_parser()
    subparsers = parser._subparsers
    assert subparsers is not None
    serve: argparse.ArgumentParser = subparsers._group_actions[0].choices["serve"]
    return list(serve._actions)


def serve_option_strings() -> frozenset[str]:
    """Every option string ``vllm serve`` declares (``--block-size``, ``-tp``, ...)."""
    return frozenset(s for action in serve_actions() for s in action.option_strings)


def parse_worker_argv(argv: list[str]) -> argparse.Namespace:
    """Parse a worker container's command+args exactly as the vLLM process would.

    Raises :class:`VLLMRejected` with vLLM's message on an unknown flag, a bad value, or a
    combination ``validate`` refuses; ``ValueError`` if the command is not a vLLM entrypoint.
    """
    args: argparse.Namespace
    if tuple(argv[:2]) == SERVE:
        parser, command = _serve_parser()
        with _argparse_errors("vllm serve rejected the command line"):
            args = parser.parse_args(argv[1:])
            command.validate(args)
        if args.model_tag is not None:
            args.model = args.model_tag  # what ServeSubcommand.cmd does before starting
    elif tuple(argv[:3]) == API_SERVER:
        with _argparse_errors("vllm api_server rejected the command line"):
            args = _api_server_parser().parse_args(argv[3:])
            validate_parsed_serve_args(args)
    else:
        raise ValueError(f"not a vLLM server command: {argv[:3]}")
    # The weights are not here, and with the hub offline EngineArgs resolves a hub id in the
    # local cache: an empty local directory stands in for the model, every other value is ours.
    offline = argparse.Namespace(**{**vars(args), "model": _placeholder_model_dir()})
    with _argparse_errors("vLLM's engine arguments rejected the parsed flags"):
        AsyncEngineArgs.from_cli_args(offline)
    return args


@functools.cache
def _placeholder_model_dir() -> str:
    path = tempfile.mkdtemp(prefix="disagg-conformance-model-")
    atexit.register(os.rmdir, path)
    return path


def registered_connectors() -> frozenset[str]:
    """Connector names vLLM's KVConnectorFactory can build."""
    return frozenset(KVConnectorFactory._registry)


def validate_kv_transfer_config(raw: str) -> KVTransferConfig:
    """Build vLLM's ``KVTransferConfig`` from our JSON and load its connector class.

    The class forbids unknown fields and checks ``kv_role``; ``get_connector_class`` is the
    registry lookup and import the engine makes when it starts (the connector's own transfer
    library, NIXL or Mooncake, is not needed to import the class).
    """
    try:
        fields = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise VLLMRejected(f"--kv-transfer-config is not JSON: {exc}") from exc
    try:
        config = KVTransferConfig(**fields)
    except (ValueError, TypeError) as exc:
        raise VLLMRejected(f"KVTransferConfig rejected {raw}: {exc}") from exc
    try:
        KVConnectorFactory.get_connector_class(config)
    except (ValueError, AttributeError, ImportError) as exc:
        raise VLLMRejected(
            f"vLLM's KVConnectorFactory cannot load kv_connector {config.kv_connector!r} "
            f"({exc}); registered: {sorted(registered_connectors())}"
        ) from exc
    return config


def known_env_vars() -> frozenset[str]:
    """Every ``VLLM_*`` variable vLLM reads (its ``envs`` module)."""
    return frozenset(vllm.envs.environment_variables)


def check_env_value(name: str, value: str) -> Any:
    """Read ``name=value`` through vLLM's own getter (type conversion, allowed choices)."""
    getter = vllm.envs.environment_variables[name]
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return getter()
    except (ValueError, TypeError) as exc:
        raise VLLMRejected(f"vLLM rejected {name}={value!r}: {exc}") from exc
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


#: A metric name as vLLM writes it in its source (``name="vllm:num_requests_waiting"``).
_METRIC_LITERAL = re.compile(r"""["'](vllm:[a-z0-9_:]+)["']""")
#: What prometheus_client appends to a declared name on the wire.
METRIC_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


@functools.cache
def metric_names() -> frozenset[str]:
    """Every ``vllm:*`` metric name literal in the installed vLLM package's sources.

    vLLM declares its Prometheus metrics with literal names scattered over ``v1/metrics`` and the
    connectors' stats modules; a scan of its own files finds them all without starting an engine.
    """
    package = Path(vllm.__file__).parent
    return frozenset(
        name
        for path in package.rglob("*.py")
        for name in _METRIC_LITERAL.findall(path.read_text(errors="replace"))
    )


def declared_metric(name: str) -> str | None:
    """The vLLM metric a scraped or queried ``name`` comes from, or None if vLLM has none."""
    declared = metric_names()
    if name in declared:
        return name
    for suffix in METRIC_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in declared:
            return name.removesuffix(suffix)
    return None
