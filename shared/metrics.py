"""Prometheus metrics endpoint for the consuming services (the API serves /metrics itself)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(host: str, port: int) -> None:
    """Serve ``/metrics`` on a background thread; port 0 turns it off."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics served", extra={"host": host, "port": port})
