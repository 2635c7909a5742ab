"""The engines one GPU-tier run starts on one GPU, with their ports and KV-cache sizes.

Two families, all from the tier's two resources:

* protocol engines (``bench/gpu/disaggdeployment.yaml``, the tiny model, eager start): a
  prefill worker ``p``, the decode worker ``d`` (the resource's ``recompute`` policy), ``d_fail``
  (the same with ``loadFailurePolicy: fail``) and ``d_victim`` (killed mid-stream);
* timing engines (Llama-3.1-8B shape, vLLM's defaults): ``graphs`` (``bench/gpu/inferencepool.yaml``
  as it is), ``eager`` (``enforceEager``), ``chunk2048`` (``maxNumBatchedTokens: 2048``), and the
  P/D pair ``p8``/``d8`` (the deployment's pools).

Memory on one 141 GB H200 (139 GiB usable): five 8B engines hold 5 x 15 GiB of weights, the KV
caches below (35 GiB) and ~2-3 GiB each of activations and CUDA graphs; the four tiny engines
~1.5 GiB each.  ~125 GiB in all.  On two GPUs (``two_gpu.py``) each engine gets a GPU of its own.
"""

from __future__ import annotations

from bench.gpu.engines import EnginePlan, port

GiB = 1 << 30
DEPLOYMENT = "bench/gpu/disaggdeployment.yaml"
POOL = "bench/gpu/inferencepool.yaml"
FAIL = "spec.kvTransfer.loadFailurePolicy=fail"


def protocol_engines() -> list[EnginePlan]:
    common = {"resource": DEPLOYMENT, "model": "tiny", "kv_cache_bytes": 1 * GiB}
    return [
        EnginePlan(
            "p",
            role="prefill",
            port=port(8100),
            side_channel_port=port(5600),
            eager_startup=True,
            **common,
        ),
        EnginePlan(
            "d",
            role="decode",
            port=port(8200),
            side_channel_port=port(5601),
            eager_startup=True,
            **common,
        ),
        EnginePlan(
            "d_fail",
            role="decode",
            port=port(8201),
            side_channel_port=port(5602),
            sets=(FAIL,),
            eager_startup=True,
            **common,
        ),
        EnginePlan(
            "d_victim",
            role="decode",
            port=port(8202),
            side_channel_port=port(5603),
            eager_startup=True,
            **common,
        ),
    ]


def timing_engines() -> list[EnginePlan]:
    eight_b = {"model": "llama-3.1-8b"}
    return [
        EnginePlan(
            "graphs", POOL, "aggregated", port=port(9100), kv_cache_bytes=12 * GiB, **eight_b
        ),
        EnginePlan(
            "eager",
            POOL,
            "aggregated",
            port=port(9101),
            kv_cache_bytes=6 * GiB,
            sets=("spec.engine.enforceEager=true",),
            **eight_b,
        ),
        EnginePlan(
            "chunk2048",
            POOL,
            "aggregated",
            port=port(9102),
            kv_cache_bytes=4 * GiB,
            sets=("spec.engine.maxNumBatchedTokens=2048",),
            **eight_b,
        ),
        EnginePlan(
            "p8",
            DEPLOYMENT,
            "prefill",
            port=port(9200),
            side_channel_port=port(5610),
            kv_cache_bytes=3 * GiB,
            **eight_b,
        ),
        EnginePlan(
            "d8",
            DEPLOYMENT,
            "decode",
            port=port(9201),
            side_channel_port=port(5611),
            kv_cache_bytes=3 * GiB,
            **eight_b,
        ),
    ]


def by_name(plans: list[EnginePlan]) -> dict[str, EnginePlan]:
    return {plan.name: plan for plan in plans}
