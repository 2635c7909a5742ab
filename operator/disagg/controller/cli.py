"""``disagg operator``: run the operator.

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
import sys
from pathlib import Path

_EPILOG = """\
The operator reads the cluster only through watches and writes only what differs from
what it would render; failures show in each object's status (Degraded) and as one
Warning Event per distinct failure.  Worker pods may not be privileged, use host
namespaces, hostPath, host ports, added capabilities (IPC_LOCK with RDMA excepted),
another ServiceAccount, or Secrets other than the model token Secret the spec names,
unless --worker-policy allows it for their namespace (docs/security.md).
"""


def _policies(path: str | None) -> object:
    from disagg.render.podpolicy import PolicySet

    if not path:
        return PolicySet()
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return PolicySet.from_dict(raw)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SystemExit(f"disagg operator: --worker-policy {path}: {exc}") from None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="disagg operator",
        description="Reconcile InferencePools and DisaggDeployments (disagg.dev/v1alpha1).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--workers",
        type=int,
        default=8,
        help="concurrent reconciles, which bounds the operator's concurrent API requests "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--worker-policy",
        metavar="FILE",
        help="YAML {default: {...}, namespaces: {NS: {...}}} of what worker pods may do beyond "
        "the safe default, e.g. allowHostNamespaces, allowedSecrets (docs/security.md)",
    )
    parser.add_argument(
        "--gateway-image",
        action="append",
        default=[],
        metavar="IMAGE",
        help="a gateway image every namespace may run besides the default one (repeatable); "
        "others need allowAnyGatewayImage in --worker-policy",
    )
    parser.add_argument(
        "--gateway-cluster-role",
        metavar="NAME",
        help="bind this ClusterRole (pods: get, list, watch; the chart installs it) for each "
        "gateway instead of creating a Role per DisaggDeployment (default: a Role each)",
    )
    parser.add_argument(
        "--metrics-interval",
        type=float,
        default=30.0,
        help="seconds between Prometheus reads (default: %(default)s)",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL served by the operator (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-address",
        default="",
        metavar="HOST:PORT",
        help="serve the operator's own Prometheus metrics (reconciles, API requests by verb, "
        "queue) on /metrics there, e.g. 0.0.0.0:8081 (default: off)",
    )
    parser.add_argument(
        "--fault-apply-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="fault injection for tests: sleep before every write of children (default: 0)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    policies = _policies(args.worker_policy)
    if args.kubeconfig:
        # Before anything imports the Kubernetes client: it reads KUBECONFIG at import time,
        # and kopf's login handler relies on that default.
        os.environ["KUBECONFIG"] = args.kubeconfig

    import kopf

    from disagg.controller import kopftoggles
    from disagg.controller.handlers import build_registry
    from disagg.controller.kube import Kube
    from disagg.controller.runtime import Controller, Settings
    from disagg.render.podpolicy import PolicySet

    assert isinstance(policies, PolicySet)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopftoggles.install()  # a start that is linear in the objects listed
    kube = Kube.from_environment(args.kubeconfig)
    controller = Controller(
        kube,
        Settings(
            workers=args.workers,
            prometheus_url=args.prometheus_url,
            metrics_interval=args.metrics_interval,
            policies=policies,
            fault_apply_delay=args.fault_apply_delay,
            trusted_gateway_images=frozenset(args.gateway_image),
            gateway_cluster_role=args.gateway_cluster_role,
        ),
    )
    if args.metrics_address:
        from disagg.controller.telemetry import serve

        host, _, port = args.metrics_address.rpartition(":")
        serve(controller, host or "0.0.0.0", int(port))
    asyncio.run(
        kopf.operator(
            registry=build_registry(controller),
            standalone=True,
            clusterwide=not args.namespaces,
            namespaces=list(args.namespaces),
            liveness_endpoint=args.liveness,
        )
    )
    return 0
