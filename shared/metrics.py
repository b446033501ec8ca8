"""Prometheus metrics endpoint for the consuming services (the API serves /metrics itself)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(host: str, port: int) -> None:
    """Serve ``/metrics`` on a background thread; port 0 turns it off."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # metrics must never keep a service from doing its work
        log.error("metrics endpoint unavailable", extra={"port": port, "error": str(exc)})
        return
    log.info("metrics served", extra={"host": host, "port": port})
