"""Prometheus + prometheus-adapter beside the local cluster (see ``stack``)."""

from testbed.monitoring.stack import PROMETHEUS_URL, down, is_up, up

__all__ = ["PROMETHEUS_URL", "down", "is_up", "up"]
