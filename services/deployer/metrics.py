"""The deployer's Prometheus metrics: deployments by outcome, phase durations, bytes sent,
nginx reloads."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.messages import DeploymentReport

DEPLOYMENTS = Counter(
    "sitefleet_deployments_total",
    "Deployments finished by this deployer, by outcome",
    ["outcome"],
)
PHASE_SECONDS = Histogram(
    "sitefleet_deployment_phase_seconds",
    "Duration of deployment phases",
    ["phase", "status"],
    buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300),
)
UPLOADED_BYTES = Counter(
    "sitefleet_deployment_uploaded_bytes_total", "Bytes written to web hosts by deployments"
)

NGINX_RELOADS = Counter(
    "sitefleet_nginx_reloads_total",
    "nginx reloads asked of web hosts (per-site rules changed), after coalescing",
    ["host"],
)


def observe_outcome(report: DeploymentReport) -> None:
    DEPLOYMENTS.labels(outcome=report.status).inc()
    for phase in report.phases:
        if phase.finished_at is not None:
            PHASE_SECONDS.labels(phase=phase.name, status=phase.status).observe(
                (phase.finished_at - phase.started_at).total_seconds()
            )
    if report.stats is not None:
        UPLOADED_BYTES.inc(report.stats.uploaded_bytes)
