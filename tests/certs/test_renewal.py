"""Renewal with short-lived certificates (Pebble issues 20-second ones here): the sweep
renews when the set share of the lifetime remains (60% here, a third in production) and
the new certificate takes over; a renewal that fails leaves the old certificate in use and
warns before it expires."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from services.certs.store import parse_leaf
from shared.messages import DeploymentSucceeded
from shared.models import Site
from tests.certs.conftest import ELSEWHERE, CertsStack, StackFactory
from tests.fixtures.platform import wait_until

pytestmark = pytest.mark.slow

LIFETIME = 20
# Due for renewal after ~8 s, with ~12 s left to run (production's third: after ~13 s).
RENEW_FRACTION = 0.6


@pytest.fixture(scope="module")
async def stack(certs_stacks: StackFactory) -> CertsStack:
    return await certs_stacks(
        "renewal",
        validity_seconds=LIFETIME,
        env={
            "SITEFLEET_CERT_RENEW_FRACTION": str(RENEW_FRACTION),
            # Warn when less than 11 s remain (soon after the renewal is due), again every
            # second while it is not renewed.
            "SITEFLEET_CERT_WARN_BEFORE": "11",
            "SITEFLEET_CERT_WARN_REPEAT": "1",
        },
    )


async def served_der(stack: CertsStack, name: str) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection(
        "127.0.0.1", stack.host.tls_port, ssl=context, server_hostname=name
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return der


async def issue(stack: CertsStack, site: Site) -> None:
    await stack.publisher.emit(
        DeploymentSucceeded(
            deployment_id="dep_1",
            tenant_id=site.tenant_id,
            site_id=site.id,
            domain=site.domain,
            generation=1,
            status="live",
        )
    )
    await stack.wait_event("cert.issued", site.id)


async def test_sweep_renews_a_certificate_that_is_due(stack: CertsStack) -> None:
    site = await stack.new_site()
    await issue(stack, site)
    [first] = await stack.rows(site.id)
    assert first.not_before and first.not_after
    assert (first.not_after - first.not_before).total_seconds() <= LIFETIME

    async def renewed() -> bool:
        rows = await stack.rows(site.id)
        return [r.status for r in rows] == ["superseded", "installed"]

    await wait_until(renewed, timeout=60, what="the renewal to take over")
    old, new = await stack.rows(site.id)
    assert old.id == first.id
    assert new.not_after and new.not_after > first.not_after
    assert new.private_key_pem != first.private_key_pem  # a fresh key per certificate
    assert new.certificate_pem is not None
    assert await served_der(stack, site.domain) == parse_leaf(new.certificate_pem).der
    assert len(stack.events_of("cert.issued", site.id)) == 2


async def test_failed_renewal_keeps_the_old_certificate_and_warns(stack: CertsStack) -> None:
    site = await stack.new_site()
    await issue(stack, site)
    [first] = await stack.rows(site.id)
    # The customer moves the domain elsewhere: the renewal's preflight refuses to order.
    await stack.zones.point(site.domain, ELSEWHERE)

    failed = await stack.wait_event("cert.failed", site.id)
    assert failed.payload["error"]["code"] == "dns_not_pointing_here"

    async def warned() -> list[dict]:
        return [
            e.payload
            for e in stack.events_of("cert.expiring", site.id)
            if "the last renewal failed" in e.payload["error"]["message"]
        ]

    [warning, *_] = await wait_until(warned, timeout=30, what="an expiry warning with why")
    assert warning["error"]["code"] == "certificate_expiring"
    assert "does not resolve" in warning["error"]["message"] or ELSEWHERE in str(warning)
    assert warning["not_after"].startswith(first.not_after.isoformat()[:19])
    rows = await stack.rows(site.id)
    assert [r.status for r in rows] == ["installed", "failed"]
    assert rows[0].id == first.id
