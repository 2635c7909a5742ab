"""What a user may add to a worker's command line and environment, and what not.

``extraArgs`` and ``env`` are appended after what the operator renders, so a repeated
flag or variable silently wins (vLLM's parser keeps the last value; Kubernetes keeps the
last of two same-named variables) or is silently lost (the RDMA variables come after the
user's).  Either way the pod no longer matches what the operator, the gateway and the
probes assume: ``--port 9000`` makes vLLM listen where no probe or Service looks,
``--block-size`` breaks the gateway's prefix hashing, ``VLLM_NIXL_SIDE_CHANNEL_HOST``
sends decode to ``localhost``.  Those are refused at admission, naming the field to set
instead.

vLLM's parser (0.33, ``FlexibleArgumentParser``) reads ``--tensor_parallel_size`` as
``--tensor-parallel-size``, ``--kv-transfer-config.kv_role=x`` as part of the JSON flag,
and, since ``allow_abbrev`` is on, any unambiguous prefix (``--tensor-par 2``) as the whole
flag.  So each refused flag is matched with ``_`` for ``-``, with ``=``/``.`` suffixes, and
by every prefix of its name; a prefix that vLLM would find ambiguous fails there anyway.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from disagg.api.base import cel, validations
from disagg.api.formats import cel_list, cel_string

#: Flags the operator renders from fields, or that cut the probes and the gateway off.
RENDERED_FLAGS = (
    "model",
    "served-model-name",
    "host",
    "port",
    "uds",
    "tensor-parallel-size",
    "pipeline-parallel-size",
    "data-parallel-size",
    "block-size",
    "api-key",
    "ssl-keyfile",
    "ssl-certfile",
)
#: vLLM's one-dash aliases of those flags (``-t`` is the unambiguous prefix of ``-tp``).
SHORT_FLAGS = ("t", "tp", "pp", "dp")
#: Variables the operator sets on every worker (the NIXL side channel on the pod IP, the
#: keep-alive the gateway's connection pool relies on) or that lock the probes out.
OPERATOR_ENV = (
    "VLLM_NIXL_SIDE_CHANNEL_HOST",
    "VLLM_NIXL_SIDE_CHANNEL_PORT",
    "VLLM_HTTP_TIMEOUT_KEEP_ALIVE",
    "VLLM_API_KEY",
)


def _prefixes(flag: str) -> str:
    """A regex matching every non-empty prefix of ``flag``, ``_`` allowed for ``-``."""
    out = ""
    for char in reversed(flag):
        atom = "[-_]" if char == "-" else char
        out = f"{atom}({out})?" if out else atom
    return out


def flag_regex(flags: tuple[str, ...], short: tuple[str, ...] = ()) -> str:
    """A regex matching an argv item that sets one of ``flags`` (or a one-dash alias)."""
    long_form = "|".join(_prefixes(f) for f in flags)
    pattern = f"^--({long_form})([=.].*)?$"
    if short:
        pattern += f"|^-({'|'.join(short)})(=.*)?$"
    return pattern


RENDERED_FLAGS_REGEX = flag_regex(RENDERED_FLAGS, SHORT_FLAGS)
KV_TRANSFER_FLAG_REGEX = flag_regex(("kv-transfer-config",))

ExtraArgs = Annotated[
    # 2,048 characters an item: the rule's regex runs over every one, and the API server
    # refuses a CRD whose worst case (64 x 2,048) costs more than its budget allows.
    list[Annotated[str, Field(max_length=2048)]],
    Field(
        max_length=64,
        json_schema_extra=validations(
            cel(
                f"self.all(a, !a.matches({cel_string(RENDERED_FLAGS_REGEX)}))",
                "must not set a flag the operator renders or one that hides the server from "
                "its probes and the gateway: --model, --served-model-name, --host, --port, "
                "--uds, --tensor/pipeline/data-parallel-size (-tp/-pp/-dp), --block-size, "
                "--api-key, --ssl-keyfile, --ssl-certfile (in any spelling or prefix); set "
                "model, engine.port, parallelism or engine.blockSize instead",
            ),
        ),
    ),
]


def env_names_rule() -> dict[str, Any]:
    return validations(
        cel(
            f"self.all(e, !(e.name in {cel_list(OPERATOR_ENV)}))",
            "must not set VLLM_NIXL_SIDE_CHANNEL_HOST or VLLM_NIXL_SIDE_CHANNEL_PORT (the "
            "operator points the NIXL side channel at the pod IP and kvTransfer.sideChannelPort), "
            "VLLM_HTTP_TIMEOUT_KEEP_ALIVE (the gateway's connection pool relies on it) or "
            "VLLM_API_KEY (it locks the probes and the gateway out)",
        ),
        cel(
            "self.all(e, self.exists_one(f, f.name == e.name))",
            "must not name a variable twice (Kubernetes keeps only the last)",
        ),
    )


#: Variables ``rdma`` renders, per what turns them on (render/rdma.py); they come after the
#: user's, so a user's value would be silently ignored.
RDMA_ENV_RULE = (
    "!self.rdma.enabled || !has(self.engine.env) || !self.engine.env.exists(e, "
    "e.name in ['UCX_TLS', 'UCX_NET_DEVICES'] || "
    "(self.rdma.transport in ['ib', 'roce'] && "
    "e.name in ['UCX_RNDV_SCHEME', 'UCX_RNDV_THRESH']) || "
    "(has(self.rdma.gidIndex) && e.name in ['UCX_IB_GID_INDEX', 'NCCL_IB_GID_INDEX']) || "
    "(has(self.rdma.hcas) && size(self.rdma.hcas) > 0 && e.name == 'NCCL_IB_HCA'))"
)


def spec_override_rules(extra_args_paths: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    """Rules across a spec's engine, model, kvTransfer and rdma: a pool's, or a
    DisaggDeployment's, whose per-side flags live at ``extra_args_paths``."""
    kv_flag = cel_string(KV_TRANSFER_FLAG_REGEX)
    kv_rules = tuple(
        cel(
            f"self.kvTransfer.connector == 'None' || !has({path}) || "
            f"!{path}.exists(a, a.matches({kv_flag}))",
            "must not set --kv-transfer-config while kvTransfer.connector renders it; "
            "configure kvTransfer (extraConfig carries connector settings), or, on an "
            "aggregated pool, set the connector to None and pass your own",
            path.removeprefix("self"),
        )
        for path in ("self.engine.extraArgs", *extra_args_paths)
    )
    return (
        *kv_rules,
        cel(
            "!has(self.model.tokenSecretRef) || !has(self.engine.env) || "
            "!self.engine.env.exists(e, e.name == 'HF_TOKEN')",
            "must not set HF_TOKEN when model.tokenSecretRef sets it",
            ".engine.env",
        ),
        cel(
            RDMA_ENV_RULE,
            "must not set the UCX_*/NCCL_* variables rdma renders (UCX_TLS, UCX_NET_DEVICES, "
            "UCX_RNDV_*, *_GID_INDEX, NCCL_IB_HCA): they would be ignored; set rdma.transport, "
            "rdma.hcas or rdma.gidIndex instead",
            ".engine.env",
        ),
    )
