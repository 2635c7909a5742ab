"""disagg: disaggregated prefill/decode LLM serving on Kubernetes.

The package is split into layers (see docs/architecture.md and .importlinter):
``api`` (the CRD types), ``render`` (pure manifests), ``planner`` (pure capacity
arithmetic), ``controller`` (kopf handlers; the only layer that talks to the
Kubernetes API), ``gateway`` (the KV-routing data path) and ``sim`` (a
vLLM-compatible engine simulator).
"""

__version__ = "0.1.0"
