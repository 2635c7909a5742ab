"""Kubernetes pod discovery for a Prometheus built without it, over Prometheus' HTTP SD.

Debian's ``prometheus`` package is compiled without ``kubernetes_sd_configs`` (its Go client
dependencies are not packaged; ``promtool check config`` rejects the key). Rather than building
Prometheus from source, this small loopback server lists pods from the API server (admin
certificate, standard library only) and answers Prometheus' ``http_sd_configs`` with one target
group per pod, labelled with the same ``__meta_kubernetes_*`` names that ``kubernetes_sd_configs``
(role ``pod``) produces. The relabelling in ``stack.prometheus_config`` is therefore the one a
real cluster uses (docs/autoscaling.md), with only the discovery block swapped.

Run: ``python -m testbed.monitoring.pod_discovery --port 19091`` (``stack.up`` does it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from testbed.cluster.apiclient import ApiClient
from testbed.cluster.config import Settings

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def _label(name: str) -> str:
    return _INVALID.sub("_", name)


def target_groups(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One HTTP SD target group per pod that has an IP, with kubernetes_sd's meta labels."""
    groups = []
    for pod in pods:
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        ip = status.get("podIP")
        if not ip:
            continue
        annotations = meta.get("annotations") or {}
        port = annotations.get("prometheus.io/port", "80")
        labels = {
            "__meta_kubernetes_namespace": meta.get("namespace", ""),
            "__meta_kubernetes_pod_name": meta.get("name", ""),
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_phase": status.get("phase", ""),
            "__meta_kubernetes_pod_node_name": pod.get("spec", {}).get("nodeName", ""),
        }
        for key, value in annotations.items():
            labels["__meta_kubernetes_pod_annotation_" + _label(key)] = value
        for key, value in (meta.get("labels") or {}).items():
            labels["__meta_kubernetes_pod_label_" + _label(key)] = value
        groups.append({"targets": [f"{ip}:{port}"], "labels": labels})
    return groups


class _Handler(BaseHTTPRequestHandler):
    api: ApiClient

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/targets":
            self.send_error(404, "only /targets")
            return
        code, body = self.api.get("/api/v1/pods")
        if code != 200:
            self.send_error(502, f"listing pods failed: {code} {str(body)[:200]}")
            return
        data = json.dumps(target_groups(body.get("items", []))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one request every refresh interval: not worth a log line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.monitoring.pod_discovery")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    _Handler.api = ApiClient(Settings.from_env())
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
