"""``disagg operator``: run the kopf operator.

By default it watches every namespace (cluster-wide RBAC); ``--namespace`` (repeatable)
restricts it to listed namespaces, for the least-privilege mode with Roles.
It runs standalone (no kopf peering): the chart deploys one replica with the
``Recreate`` strategy, so two operators never act at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="disagg operator",
        description="Reconcile InferencePools and DisaggDeployments (disagg.dev/v1alpha1).",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        dest="namespaces",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    parser.add_argument(
        "--prometheus-url",
        default=None,
        help="Prometheus base URL: observed queue depth and disaggregated share in status, and "
        "KEDA triggers (default: no observed metrics; KEDA uses "
        "http://prometheus.monitoring.svc:9090)",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL served by the operator (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.kubeconfig:
        # Before anything imports the Kubernetes client: it reads KUBECONFIG at import time,
        # and kopf's login handler relies on that default.
        os.environ["KUBECONFIG"] = args.kubeconfig

    import kopf

    from disagg.controller import handlers
    from disagg.controller.kube import Kube
    from disagg.controller.reconcile import Reconciler

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    kube = Kube.from_environment(args.kubeconfig)
    reconciler = Reconciler(kube, args.prometheus_url) if args.prometheus_url else Reconciler(kube)
    handlers.configure(reconciler)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not args.namespaces,
            namespaces=list(args.namespaces),
            liveness_endpoint=args.liveness,
        )
    )
    return 0
