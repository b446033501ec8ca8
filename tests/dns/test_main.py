"""``python -m services.dns`` as ops run it: it creates the local CDN zone, consumes DNS jobs
from RabbitMQ and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from cli.devstack import procs
from services.dns.powerdns import PowerDnsClient
from shared import broker
from shared.db import SessionMaker
from shared.messages import DnsReconcileRequested
from shared.models import DnsRecord
from shared.settings import PROJECT_ROOT
from tests.dns.conftest import WEB_HOSTS, Dig, PowerDns, Site, wait_until


@pytest.mark.slow
async def test_the_service_reconciles_a_site_and_stops_on_sigterm(
    pdns: PowerDns,
    pdns_client: PowerDnsClient,
    amqp_url: str,
    database_url: str,
    sessionmaker: SessionMaker,
    site: Site,
    dig: Dig,
) -> None:
    # A CDN zone of its own, so only the service can have created it.
    cdn_zone = f"cdn-{uuid.uuid4().hex[:8]}.test"
    env = {
        "SITEFLEET_DATABASE_URL": database_url,
        "SITEFLEET_AMQP_URL": amqp_url,
        "SITEFLEET_PDNS_API_URL": pdns.api_url,
        "SITEFLEET_PDNS_API_KEY": pdns.api_key,
        "SITEFLEET_DNS_PORT": str(pdns.dns_port),
        "SITEFLEET_LOCAL_CDN_ZONE": cdn_zone,
        "SITEFLEET_CDN_EDGE_PATTERN": "{slug}.edge." + cdn_zone,
        "SITEFLEET_CDN_MEDIA_PATTERN": "{slug}.media." + cdn_zone,
        "SITEFLEET_WEB_HOST_ADDRESSES": json.dumps(WEB_HOSTS),
        "SITEFLEET_RETRY_DELAYS": "[0.5, 1]",
        "SITEFLEET_VERIFY_INTERVAL": "0.1",
        # The site has no domain row (tests/dns/test_domain_purchases.py tests the gate).
        "SITEFLEET_DOMAIN_OWNERSHIP": "off",
    }
    logs = Path(tempfile.mkdtemp(prefix="sitefleet-dns-main-"))
    proc = procs.start(
        [sys.executable, "-m", "services.dns"], log=logs / "dns.log", env=env, cwd=PROJECT_ROOT
    )
    try:
        connection = await broker.connect(amqp_url, name="tests-dns-main")
        async with connection:
            # Declared here too (idempotent), so the job is routable even before the
            # service has started.
            channel = await connection.channel()
            await broker.declare_topology(channel, [0.5, 1], delivery_limit=10)
            publisher = await broker.Publisher.open(connection)
            await publisher.submit(
                DnsReconcileRequested(
                    tenant_id=site.tenant_id, site_id=site.site_id, domain=site.domain
                )
            )

        async def verified() -> bool:
            assert proc.poll() is None, (logs / "dns.log").read_text()
            async with sessionmaker() as session:
                statuses = list(
                    await session.scalars(
                        select(DnsRecord.status).where(DnsRecord.site_id == site.site_id)
                    )
                )
            return len(statuses) == 5 and set(statuses) == {"verified"}

        try:
            await wait_until(verified, "the site's records to be verified", timeout=90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(logs / 'dns.log').read_text()}") from None
        apex = await dig(site.zone, "A")
        assert apex.get(site.zone, "A") == WEB_HOSTS  # through the service's own CDN zone

        procs.stop(proc)
        assert proc.returncode == 0, (logs / "dns.log").read_text()
    finally:
        procs.stop(proc)
        await pdns_client.delete_zone(cdn_zone + ".")
        shutil.rmtree(logs, ignore_errors=True)
