"""A real single-node Kubernetes cluster, built from source, for the e2e tests and the demo.

``python -m testbed.cluster install`` builds the pinned components into ``$DISAGG_CACHE``
(``~/.cache/disagg``); ``up``/``down``/``status`` manage one node (etcd, apiserver with the
aggregation layer, controller-manager, scheduler, kubelet on a private containerd, kube-proxy,
bridge CNI) whose fake GPUs and RDMA devices are extended resources. See docs/cluster.md.
"""

from .config import Settings

__all__ = ["Settings"]
