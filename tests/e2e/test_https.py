"""Acceptance of issue 8 (HTTPS): with Debian's Pebble as the CA (its root trusted only
inside this test), a new site gets a certificate through HTTP-01 and another through DNS-01,
`curl --cacert <pebble root> --resolve` serves each over the test nginx's TLS port, and the
renewal of a short-lived certificate replaces it on the host without an nginx reload.

Every part is the real one: the API, the deployer (challenge files, certificate files), the
DNS service (records, the DNS-01 TXT record), the certs service, nginx, PowerDNS, Pebble."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cli.certs import request_renewal
from services.certs.store import parse_leaf
from shared.db import create_engine, create_sessionmaker
from shared.models import Certificate
from shared.settings import CommonSettings
from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.platform import Platform, PlatformFactory, wait_until

pytestmark = pytest.mark.slow

# Pebble issues certificates this short-lived here, and the certs service renews them when
# 70% of that remains (production: a third): each is due for renewal after ~12 s, and
# still has ~28 s to run then.
LIFETIME = 40
RENEW_FRACTION = 0.7


@pytest.fixture(scope="module")
async def https(platforms: PlatformFactory) -> Platform:
    return await platforms.start(
        "https",
        pebble=True,
        pebble_validity=LIFETIME,
        extra_env={"SITEFLEET_CERT_RENEW_FRACTION": str(RENEW_FRACTION)},
    )


@pytest.fixture(scope="module")
def pebble_root(https: Platform, tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert https.pebble is not None
    path = tmp_path_factory.mktemp("pebble") / "root.pem"
    path.write_text(https.pebble.root_pem)
    return path


async def certificates(platform: Platform, site_id: str) -> list[Certificate]:
    engine = create_engine(platform.database_url, application_name="tests", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await session.scalars(
                select(Certificate)
                .where(Certificate.site_id == site_id)
                .order_by(Certificate.created_at)
            )
            return list(rows.all())
    finally:
        await engine.dispose()


async def installed(platform: Platform, site_id: str) -> Certificate:
    async def done() -> Certificate | None:
        rows = [r for r in await certificates(platform, site_id) if r.status == "installed"]
        return rows[-1] if rows else None

    row: Certificate = await wait_until(
        done, timeout=120, interval=0.5, what=f"a certificate installed for {site_id}"
    )
    return row


async def create_site(platform: Platform, title: str) -> dict[str, Any]:
    """A site through the API, live; the tenant's token is in ``site["token"]``."""
    token = await platform.new_tenant()
    domain = f"tls-{uuid.uuid4().hex[:8]}.example"
    async with platform.client(token) as api:
        created = await api.post(
            "/v1/sites",
            json={"domain": domain, "template": "landing", "params": landing_params(title)},
        )
        assert created.status_code == 201, created.text
        site: dict[str, Any] = created.json()
        deployment = await wait_deployment(api, site["latest_deployment_id"])
        assert deployment["status"] == "live", deployment
    return {**site, "token": token}


def curl(platform: Platform, root: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`curl --cacert <pebble root> --resolve NAME:PORT:127.0.0.1 https://NAME:PORT/`."""
    port = platform.https_port
    return subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "10",
            "--cacert",
            str(root),
            "--resolve",
            f"{name}:{port}:127.0.0.1",
            f"https://{name}:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


async def served_der(platform: Platform, name: str) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection(
        "127.0.0.1", platform.https_port, ssl=context, server_hostname=name
    )
    der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return der


def nginx_workers(platform: Platform) -> set[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(platform.nginx_pid)], capture_output=True, text=True, check=False
    )
    return {int(pid) for pid in out.stdout.split()}


async def reloads_counted(platform: Platform) -> float:
    """``sitefleet_nginx_reloads_total`` summed over hosts, from the deployer's /metrics."""
    port = platform.metrics_ports["deployer"]
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sitefleet_nginx_reloads_total{")
    )


async def test_http01_site_served_over_https_then_renewed_without_reload(
    https: Platform, pebble_root: Path
) -> None:
    site = await create_site(https, "Rosa's Bakery over TLS")
    domain = site["domain"]
    first = await installed(https, site["id"])
    assert first.challenge == "http-01"
    assert set(first.names) == {domain, f"www.{domain}", f"proxy.{domain}"}
    async with https.client(site["token"]) as api:
        tls = (await api.get(f"/v1/sites/{site['id']}")).json()["tls"]
    assert tls["status"] in ("active", "renewing"), tls  # renewals come fast here
    assert "Pebble" in tls["issuer"] and tls["expires_at"] and tls["error"] is None

    for name in (domain, f"www.{domain}"):
        page = curl(https, pebble_root, name)
        assert page.returncode == 0, page.stderr
        assert "Rosa" in page.stdout and site["latest_deployment_id"] in page.stdout
    # Outside the test nobody trusts Pebble: without its root the handshake is refused.
    untrusted = subprocess.run(
        [
            "curl",
            "--silent",
            "--resolve",
            f"{domain}:{https.https_port}:127.0.0.1",
            f"https://{domain}:{https.https_port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert untrusted.returncode == 60  # SSL certificate problem

    # Renewal: the sweep finds the short-lived certificate due and replaces it on the host.
    workers = nginx_workers(https)
    assert workers, "nginx has worker processes"
    reloads = await reloads_counted(https)
    assert first.certificate_pem is not None
    assert await served_der(https, domain) == parse_leaf(first.certificate_pem).der

    async def renewed() -> Certificate | None:
        rows = await certificates(https, site["id"])
        older = {r.id: r.status for r in rows}
        newer = [r for r in rows if r.status == "installed" and r.id != first.id]
        return newer[-1] if newer and older[first.id] == "superseded" else None

    second: Certificate = await wait_until(
        renewed, timeout=120, interval=0.5, what="the renewed certificate to take over"
    )
    assert second.not_after and first.not_after and second.not_after > first.not_after
    assert second.certificate_pem is not None
    assert await served_der(https, domain) == parse_leaf(second.certificate_pem).der
    page = curl(https, pebble_root, domain)
    assert page.returncode == 0, page.stderr
    # No reload: the same nginx workers, and the deployer counted none.
    assert nginx_workers(https) == workers
    assert await reloads_counted(https) == reloads


async def test_dns01_site_served_over_https(https: Platform, pebble_root: Path) -> None:
    # The certs service switches to DNS-01: the DNS service publishes the TXT records.
    https.stop_service("certs")
    https.start_service("certs", extra_env={"SITEFLEET_ACME_CHALLENGE": "dns-01"})
    try:
        site = await create_site(https, "DNS-01 Deli")
        row = await installed(https, site["id"])
        assert row.challenge == "dns-01"
        page = curl(https, pebble_root, f"www.{site['domain']}")
        assert page.returncode == 0, page.stderr
        assert "DNS-01 Deli" in page.stdout
    finally:
        https.stop_service("certs")
        https.start_service("certs")


async def test_wildcard_site_served_over_https(https: Platform, pebble_root: Path) -> None:
    # SITEFLEET_ACME_WILDCARD: apex + *.<domain> through DNS-01 (the DNS service's TXT
    # records), written by the deployer under www and proxy.
    https.stop_service("certs")
    https.start_service("certs", extra_env={"SITEFLEET_ACME_WILDCARD": "true"})
    try:
        site = await create_site(https, "Wildcard Works")
        row = await installed(https, site["id"])
        assert (row.challenge, sorted(row.names)) == (
            "dns-01",
            sorted([site["domain"], f"*.{site['domain']}"]),
        )
        for name in (site["domain"], f"www.{site['domain']}"):
            page = curl(https, pebble_root, name)
            assert page.returncode == 0, page.stderr
            assert "Wildcard Works" in page.stdout
    finally:
        https.stop_service("certs")
        https.start_service("certs")


async def test_renewal_racing_a_redeploy(https: Platform, pebble_root: Path) -> None:
    """A renewal and a redeploy of the site at the same moment: both land, and HTTPS serves
    the new release with the new certificate."""
    site = await create_site(https, "Racing Roastery")
    first = await installed(https, site["id"])
    settings = CommonSettings(database_url=https.database_url, amqp_url=https.amqp_url)
    async with https.client(site["token"]) as api:
        redeploy = await api.post(f"/v1/sites/{site['id']}/deployments", json={"reason": "race"})
        assert redeploy.status_code == 202, redeploy.text
        await request_renewal(settings, site["domain"])
        deployment = await wait_deployment(api, redeploy.json()["id"])
    assert deployment["status"] == "live", deployment

    async def replaced() -> Certificate | None:
        rows = await certificates(https, site["id"])
        newer = [r for r in rows if r.status == "installed" and r.created_at > first.created_at]
        return newer[-1] if newer else None

    await wait_until(replaced, timeout=120, interval=0.5, what="the renewed certificate")
    page = curl(https, pebble_root, site["domain"])
    assert page.returncode == 0, page.stderr
    assert deployment["id"] in page.stdout
