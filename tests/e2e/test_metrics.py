"""Every service exposes Prometheus metrics; the deployer counts outcomes and phase times."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.platform import Platform, wait_until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_deployer_metrics_count_outcomes_and_phase_durations(
    api: httpx.AsyncClient, platform: Platform
) -> None:
    created = await api.post(
        "/v1/sites",
        json={"domain": "metrics.example", "template": "landing", "params": landing_params("M")},
    )
    assert (await wait_deployment(api, created.json()["latest_deployment_id"]))["status"] == "live"
    async with httpx.AsyncClient(timeout=5) as http:
        deployer = samples(
            (await http.get(f"http://127.0.0.1:{platform.metrics_ports['deployer']}/metrics")).text
        )
        dns = await http.get(f"http://127.0.0.1:{platform.metrics_ports['dns']}/metrics")
    assert deployer[("sitefleet_deployments_total", (("outcome", "live"),))] >= 1
    assert (
        deployer[
            (
                "sitefleet_deployment_phase_seconds_count",
                (("phase", "build"), ("status", "succeeded")),
            )
        ]
        >= 1
    )
    assert deployer[("sitefleet_deployment_uploaded_bytes_total", ())] > 0
    assert dns.status_code == 200

    async def dns_verified() -> bool:
        async with httpx.AsyncClient(timeout=5) as http:
            text = (
                await http.get(f"http://127.0.0.1:{platform.metrics_ports['dns']}/metrics")
            ).text
        return (
            samples(text).get(("sitefleet_dns_reconciles_total", (("outcome", "verified"),)), 0)
            >= 1
        )

    await wait_until(dns_verified, timeout=60, what="a verified reconcile counted")
