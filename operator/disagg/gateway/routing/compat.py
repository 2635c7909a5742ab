"""Which prefill worker's KV a decode worker can load: the pairing rule of a rollout.

While a change to the KV layout rolls out (a new model revision, dtype, block size...), old and
new workers serve side by side; a decode worker that loads KV computed under another layout
answers wrong, silently.  The operator labels every worker pod with a hash of the fields that
decide the layout (``disagg.dev/kv-layout``) and its tensor-parallel size; two workers pair when
the hashes are equal and the decode side's tensor-parallel size is a multiple of the prefill
side's (NIXL maps a smaller prefill TP onto a larger decode TP).  Workers whose labels are
unknown (static discovery) pair only with each other.
"""

from __future__ import annotations

from disagg.gateway.routing.contracts import Endpoint


def kv_compatible(prefill: Endpoint, decode: Endpoint) -> bool:
    """Whether ``decode`` can load KV that ``prefill`` computed."""
    if prefill.kv_layout != decode.kv_layout:
        return False
    p_tp, d_tp = prefill.tensor_parallel, decode.tensor_parallel
    if p_tp is None or d_tp is None:
        return p_tp == d_tp
    return p_tp <= d_tp and d_tp % p_tp == 0
