"""ACME orders against Pebble: a certificate through HTTP-01 and through DNS-01, served on
the host afterwards; no order for a valid certificate; no order for a domain that does not
point at us."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess

import pytest
from sqlalchemy import update

from cli.certs import list_certificates, request_renewal
from shared.errors import NotFound
from shared.messages import CertificateRequested, DeploymentSucceeded, SiteFilesRemoved
from shared.models import Site
from shared.settings import CommonSettings
from tests.certs.conftest import CertsStack, StackFactory
from tests.fixtures.platform import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def stack(certs_stacks: StackFactory) -> CertsStack:
    return await certs_stacks("orders")


def deployed(site: Site) -> DeploymentSucceeded:
    return DeploymentSucceeded(
        deployment_id="dep_1",
        tenant_id=site.tenant_id,
        site_id=site.id,
        domain=site.domain,
        generation=1,
        status="live",
    )


async def handshake(stack: CertsStack, name: str) -> dict:
    """Connect to the host's TLS port trusting only Pebble's root, checking the name."""
    assert stack.pebble is not None
    context = ssl.create_default_context(cadata=stack.pebble.root_pem)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", stack.host.tls_port, ssl=context, server_hostname=name
    )
    cert = writer.get_extra_info("peercert")
    writer.close()
    return cert


async def test_http01_certificate_after_deployment(stack: CertsStack) -> None:
    site = await stack.new_site()
    await stack.publisher.emit(deployed(site))

    issued = await stack.wait_event("cert.issued", site.id)
    assert issued.payload["challenge"] == "http-01"
    assert set(issued.payload["names"]) == {
        site.domain,
        f"www.{site.domain}",
        f"proxy.{site.domain}",
    }
    [row] = await stack.rows(site.id)
    assert row.status == "installed" and row.installed_at is not None
    assert row.private_key_pem and "BEGIN PRIVATE KEY" in row.private_key_pem
    assert row.certificate_pem and row.certificate_pem.count("BEGIN CERTIFICATE") >= 2
    assert "Pebble" in (row.issuer or "")
    # Served on the host, valid for every name under Pebble's root (and only under it).
    for name in row.names:
        cert = await handshake(stack, name)
        assert ("DNS", name) in cert["subjectAltName"]
    # The challenge files were withdrawn once the CA had decided.
    assert stack.host.challenges == {}


async def test_no_new_order_while_the_certificate_is_valid(stack: CertsStack) -> None:
    site = await stack.new_site()
    await stack.publisher.emit(deployed(site))
    await stack.wait_event("cert.issued", site.id)
    assert stack.pebble is not None
    orders = stack.pebble.orders_seen()
    skipped = stack.log_text().count("valid certificate not due; no order")

    # A redeploy does not even ask; an explicit request is answered "valid, not due".
    await stack.publisher.emit(deployed(site))
    await stack.publisher.submit(
        CertificateRequested(
            tenant_id=site.tenant_id, site_id=site.id, domain=site.domain, reason="deployed"
        )
    )
    await stack.wait_log("valid certificate not due; no order", skipped + 1)
    assert stack.pebble.orders_seen() == orders
    assert [r.status for r in await stack.rows(site.id)] == ["installed"]


async def test_domain_not_pointing_here_sends_no_order(stack: CertsStack) -> None:
    site = await stack.new_site(pointing=False)
    assert stack.pebble is not None
    orders = stack.pebble.orders_seen()
    await stack.publisher.emit(deployed(site))

    failed = await stack.wait_event("cert.failed", site.id)
    assert failed.payload["error"]["code"] == "dns_not_pointing_here"
    assert "198.51.100.7" in failed.payload["error"]["message"]
    assert failed.payload["retry_at"] is not None
    assert stack.pebble.orders_seen() == orders
    [row] = await stack.rows(site.id)
    assert row.status == "failed"
    assert row.error and row.error["code"] == "dns_not_pointing_here"
    assert row.next_attempt_at is not None and row.order_url is None

    # Asked again before the backoff is over: still no order (the sweep waits too).
    await stack.publisher.submit(
        CertificateRequested(
            tenant_id=site.tenant_id, site_id=site.id, domain=site.domain, reason="deployed"
        )
    )
    await stack.wait_log("the last order failed; waiting before the next")
    assert stack.pebble.orders_seen() == orders
    assert len(stack.events_of("cert.failed", site.id)) == 1


async def test_dns01_certificate(certs_stacks: StackFactory) -> None:
    stack = await certs_stacks("dns01", env={"SITEFLEET_ACME_CHALLENGE": "dns-01"})
    # DNS-01 needs no address pointing at us: the TXT record proves control.
    site = await stack.new_site(pointing=False)
    await stack.publisher.emit(deployed(site))

    issued = await stack.wait_event("cert.issued", site.id)
    assert issued.payload["challenge"] == "dns-01"
    sets = [
        e
        for e in stack.jobs_seen
        if e.type == "dns.acme_challenge_requested" and e.payload["site_id"] == site.id
    ]
    names = {e.payload["name"] for e in sets}
    assert names == {
        f"_acme-challenge.{site.domain}.",
        f"_acme-challenge.www.{site.domain}.",
        f"_acme-challenge.proxy.{site.domain}.",
    }
    # Set, then cleared once the CA had decided.
    assert {e.payload["action"] for e in sets} == {"set", "clear"}
    cert = await handshake(stack, f"www.{site.domain}")
    assert ("DNS", f"www.{site.domain}") in cert["subjectAltName"]


async def test_wildcard_certificate_goes_through_dns01(certs_stacks: StackFactory) -> None:
    """SITEFLEET_ACME_WILDCARD: apex + ``*.<domain>``, always DNS-01 (even with HTTP-01
    configured); both challenges share one TXT name; www and proxy serve the wildcard."""
    stack = await certs_stacks(
        "wildcard", env={"SITEFLEET_ACME_CHALLENGE": "http-01", "SITEFLEET_ACME_WILDCARD": "1"}
    )
    site = await stack.new_site(pointing=False)
    await stack.publisher.emit(deployed(site))

    issued = await stack.wait_event("cert.issued", site.id)
    assert issued.payload["challenge"] == "dns-01"
    assert sorted(issued.payload["names"]) == sorted([site.domain, f"*.{site.domain}"])
    sets = [
        e
        for e in stack.jobs_seen
        if e.type == "dns.acme_challenge_requested"
        and e.payload["site_id"] == site.id
        and e.payload["action"] == "set"
    ]
    assert {e.payload["name"] for e in sets} == {f"_acme-challenge.{site.domain}."}
    assert len({v for e in sets for v in e.payload["values"]}) == 2  # apex's and wildcard's
    assert not [e for e in stack.jobs_seen if e.type == "site.acme_challenge_requested"]
    for name in (f"www.{site.domain}", f"proxy.{site.domain}"):
        cert = await handshake(stack, name)
        assert ("DNS", f"*.{site.domain}") in cert["subjectAltName"]


async def test_ops_force_a_renewal(stack: CertsStack) -> None:
    """`sitefleet certs renew DOMAIN`: a new certificate now, though the old one is valid."""
    site = await stack.new_site()
    await stack.publisher.emit(deployed(site))
    await stack.wait_event("cert.issued", site.id)
    settings = CommonSettings(
        database_url=stack.env["SITEFLEET_DATABASE_URL"], amqp_url=stack.env["SITEFLEET_AMQP_URL"]
    )
    assert await request_renewal(settings, site.domain) == site.id

    async def replaced() -> bool:
        return [r.status for r in await stack.rows(site.id)] == ["superseded", "installed"]

    await wait_until(replaced, timeout=60, what="the forced renewal to take over")
    listed = await list_certificates(settings, site.domain)
    assert [(line.status, line.error) for line in listed] == [("installed", None)]
    shown = await asyncio.to_thread(
        subprocess.run,
        [".venv/bin/sitefleet", "certs", "list", "--domain", site.domain],
        capture_output=True,
        text=True,
        env={**os.environ, **stack.env, "COLUMNS": "300"},
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert site.domain in shown.stdout and "installed" in shown.stdout
    with pytest.raises(NotFound):
        await request_renewal(settings, "no-such-site.example")


async def test_deployments_racing_an_order_make_one_order(stack: CertsStack) -> None:
    """Redeploys while the site's order is on its way ask for nothing more."""
    site = await stack.new_site()
    assert stack.pebble is not None
    orders = stack.pebble.orders_seen()
    for _ in range(3):
        await stack.publisher.emit(deployed(site))
    await stack.wait_event("cert.issued", site.id)

    # One deployment asked; each other one found the order on its way, or the certificate
    # already valid.
    # (The sweep may have asked first: then every deployment declined.)
    async def answered() -> bool:
        lines = [line for line in stack.log_text().splitlines() if site.id in line]
        asked = sum('"reason": "deployed"' in line for line in lines)
        declined = sum("no new certificate request" in line for line in lines)
        return asked + declined == 3 and asked <= 1

    await wait_until(answered, what="every deployment event handled")
    assert stack.pebble.orders_seen() == orders + 1
    assert [r.status for r in await stack.rows(site.id)] == ["installed"]


async def test_no_order_before_the_sites_dns_is_verified(stack: CertsStack) -> None:
    """The DNS service has not verified the records yet: the retry ladder waits (its first
    steps are short), and a site whose DNS never gets there is parked with an alert."""
    site = await stack.new_site(dns_verified=False)
    assert stack.pebble is not None
    orders = stack.pebble.orders_seen()
    await stack.publisher.submit(
        CertificateRequested(
            tenant_id=site.tenant_id, site_id=site.id, domain=site.domain, reason="deployed"
        )
    )
    parked = await stack.wait_event("cert.parked", site.id)
    assert parked.payload["error"]["code"] == "dns_not_ready"
    assert "3 of the site's DNS records are not verified yet" in parked.payload["error"]["message"]
    assert stack.pebble.orders_seen() == orders
    [row] = await stack.rows(site.id)
    assert row.status == "failed" and row.error and row.error["code"] == "dns_not_ready"


async def test_installed_means_served(stack: CertsStack) -> None:
    """``cert.installed`` from a deployer that did not write the files: the TLS check sees
    another certificate, so the certificate is not called installed (retried, then parked
    with an alert); nothing announces it as issued."""
    site = await stack.new_site()
    stack.lie_about.add(site.domain)
    await stack.publisher.emit(deployed(site))

    parked = await stack.wait_event("cert.parked", site.id)
    assert parked.payload["job_type"] == "cert.installed"
    assert parked.payload["error"]["code"] == "certificate_not_served"
    [row] = await stack.rows(site.id)
    assert row.status == "issued" and row.installed_at is None
    assert stack.events_of("cert.issued", site.id) == []


async def test_removed_site_forgets_its_certificates(stack: CertsStack) -> None:
    site = await stack.new_site()
    await stack.publisher.emit(deployed(site))
    await stack.wait_event("cert.issued", site.id)
    # As the API does on DELETE, before the deployer removes the files (else the sweep
    # would rightly order a certificate for a live site that has none).
    async with stack.sessionmaker.begin() as session:
        await session.execute(update(Site).where(Site.id == site.id).values(status="deleting"))
    await stack.publisher.emit(
        SiteFilesRemoved(tenant_id=site.tenant_id, site_id=site.id, domain=site.domain)
    )

    async def forgotten() -> bool:
        return await stack.rows(site.id) == []

    await wait_until(forgotten, what="the site's certificates (and keys) deleted")
