"""The whole deployer process (``python -m services.deployer``) against real RabbitMQ,
Postgres and nginx: jobs in through the jobs exchange, outcomes out as events."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection
from cryptography import x509
from sqlalchemy import delete

from services.deployer.health import release_marker
from shared.broker import API_EVENTS, CERTS_EVENTS, DEPLOYER_JOBS, Publisher, declare_topology
from shared.db import create_engine, create_sessionmaker
from shared.ids import new_id
from shared.messages import (
    AcmeHttpChallengeRequested,
    CertificateInstallRequested,
    DeploymentRequested,
    Envelope,
    SiteRemovalRequested,
)
from shared.models import Certificate, Deployment, Site, TemplateVersion, Tenant
from shared.settings import PROJECT_ROOT
from shared.template_packs import load_pack
from tests.deployer.conftest import Fetch, Nginx
from tests.deployer.test_tls_hosts import THUMBPRINT, LocalCa

pytestmark = pytest.mark.slow

RETRY_DELAYS = [1.0, 2.0]
DELIVERY_LIMIT = 5
DEADLINE = 60.0


@pytest.fixture
async def broker(deployer_amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(deployer_amqp_url)
    async with connection.channel() as channel:
        await declare_topology(channel, RETRY_DELAYS, DELIVERY_LIMIT)
    yield connection
    await connection.close()


@pytest.fixture
def service(
    deployer_amqp_url: str,
    database_url: str,
    settings_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path / "deployer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.deployer"],
            cwd=PROJECT_ROOT,
            env={
                **os.environ,
                **settings_env,
                "SITEFLEET_AMQP_URL": deployer_amqp_url,
                "SITEFLEET_DATABASE_URL": database_url,
                "SITEFLEET_RETRY_DELAYS": json.dumps(RETRY_DELAYS),
                "SITEFLEET_DELIVERY_LIMIT": str(DELIVERY_LIMIT),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.returncode not in (0, None):
        print(log.read_text())


@pytest.fixture
def settings_env(settings, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "SITEFLEET_SITES_ROOT": str(settings.sites_root),
        "SITEFLEET_HTTP_HOST": settings.http_host,
        "SITEFLEET_HTTP_PORT": str(settings.http_port),
        "SITEFLEET_HTTPS_PORT": str(settings.https_port),
        "SITEFLEET_WORK_ROOT": str(tmp_path / "work"),
        "SITEFLEET_TEMPLATES_DIR": str(settings.templates_dir),
        "SITEFLEET_LOG_LEVEL": "INFO",
        "SITEFLEET_PROGRESS_REPORT_DELAY": str(settings.progress_report_delay),
    }


@pytest.fixture
async def site_rows(
    database_url: str, domain: str, templates_dir: Path
) -> AsyncIterator[dict[str, str]]:
    """What the API writes before it sends a deploy job: the template version's published
    hash, tenant, site, deployment."""
    engine = create_engine(database_url, application_name="sitefleet-deployer-tests")
    ids = {"tenant_id": new_id("ten"), "site_id": new_id("site"), "deployment_id": new_id("dep")}
    pack = load_pack(templates_dir / "demo" / "1.0.0")
    async with create_sessionmaker(engine).begin() as session:
        await session.merge(
            TemplateVersion(
                name=pack.name,
                version=pack.version,
                title=pack.title,
                description=pack.description,
                params_schema=pack.params_schema,
                content_hash=pack.content_hash,
            )
        )
        session.add(Tenant(id=ids["tenant_id"], name=f"tenant {ids['tenant_id']}"))
        await session.flush()
        session.add(
            Site(
                id=ids["site_id"],
                tenant_id=ids["tenant_id"],
                domain=domain,
                template="demo",
                template_version="1.0.0",
                params={"title": "From the queue"},
                generation=1,
            )
        )
        await session.flush()
        session.add(
            Deployment(
                id=ids["deployment_id"],
                site_id=ids["site_id"],
                tenant_id=ids["tenant_id"],
                generation=1,
                template_version="1.0.0",
                params={"title": "From the queue"},
            )
        )
    yield ids
    async with engine.begin() as conn:
        await conn.execute(delete(Tenant).where(Tenant.id == ids["tenant_id"]))
    await engine.dispose()


async def next_event(queue: AbstractQueue, *types: str) -> Envelope:
    """The next event of one of ``types`` on ``queue`` (others are consumed and skipped)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            envelope = Envelope.model_validate_json(message.body)
            if envelope.type in types:
                return envelope


async def test_the_service_deploys_removes_and_stops_cleanly(
    broker: AbstractRobustConnection,
    service: subprocess.Popen[bytes],
    site_rows: dict[str, str],
    domain: str,
    fetch: Fetch,
) -> None:
    publisher = await Publisher.open(broker)
    events = await (await broker.channel()).get_queue(API_EVENTS.name)

    await publisher.submit(
        DeploymentRequested(
            **site_rows,
            domain=domain,
            generation=1,
            template="demo",
            template_version="1.0.0",
            params={"title": "From the queue"},
        )
    )
    seen: list[str] = []
    while True:
        envelope = await next_event(
            events,
            "deployment.progressed",
            "deployment.succeeded",
            "deployment.failed",
            "deployment.superseded",
        )
        assert envelope.payload["deployment_id"] == site_rows["deployment_id"]
        seen.append(envelope.payload["status"])
        if envelope.type != "deployment.progressed":
            break
    assert seen == ["building", "uploading", "activating", "activating", "live"]
    assert envelope.payload["stats"]["files"] == 5
    page = await fetch(domain)
    assert "<h1>From the queue</h1>" in page.text
    assert release_marker(page.text) == site_rows["deployment_id"]

    await publisher.submit(
        SiteRemovalRequested(
            tenant_id=site_rows["tenant_id"], site_id=site_rows["site_id"], domain=domain
        )
    )
    removed = await next_event(events, "site.files_removed")
    assert removed.payload["site_id"] == site_rows["site_id"]
    assert (await fetch(domain)).status_code == 404

    jobs = await (await broker.channel()).get_queue(DEPLOYER_JOBS.parked)
    assert await jobs.get(no_ack=True, fail=False) is None  # nothing was parked

    service.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(service.wait, DEADLINE) == 0
    await publisher.channel.close()


async def test_a_job_for_an_unknown_template_fails_and_is_not_parked(
    broker: AbstractRobustConnection,
    service: subprocess.Popen[bytes],
    site_rows: dict[str, str],
    domain: str,
) -> None:
    publisher = await Publisher.open(broker)
    events = await (await broker.channel()).get_queue(API_EVENTS.name)

    await publisher.submit(
        DeploymentRequested(
            **site_rows,
            domain=domain,
            generation=1,
            template="no-such-template",
            template_version="1.0.0",
            params={},
        )
    )
    failed = await next_event(events, "deployment.failed", "deployment.succeeded")
    assert failed.type == "deployment.failed"
    assert failed.payload["deployment_id"] == site_rows["deployment_id"]
    assert failed.payload["error"]["code"] == "template_not_found"

    service.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(service.wait, DEADLINE) == 0
    parked = await (await broker.channel()).get_queue(DEPLOYER_JOBS.parked)
    assert await parked.get(no_ack=True, fail=False) is None
    await publisher.channel.close()


async def test_the_service_serves_acme_answers_and_installs_certificates_from_the_queue(
    broker: AbstractRobustConnection,
    service: subprocess.Popen[bytes],
    site_rows: dict[str, str],
    domain: str,
    fetch: Fetch,
    nginx: Nginx,
    database_url: str,
    tmp_path: Path,
) -> None:
    publisher = await Publisher.open(broker)
    certs_events = await (await broker.channel()).get_queue(CERTS_EVENTS.name)
    token = "c2VydmljZXRlc3R0b2tlbmFhYWFhYWFhYWFhYWFhYWFh"
    path = f"/.well-known/acme-challenge/{token}"
    await publisher.submit(
        AcmeHttpChallengeRequested(
            site_id=site_rows["site_id"],
            domain=domain,
            token=token,
            key_authorization=f"{token}.{THUMBPRINT}",
            action="publish",
        )
    )
    async with asyncio.timeout(DEADLINE):
        while (answer := await fetch(domain, path)).status_code != 200:
            await asyncio.sleep(0.05)
    assert answer.text == f"{token}.{THUMBPRINT}"

    ca = LocalCa(tmp_path)
    issued = ca.issue([domain, f"www.{domain}"])
    certificate_id = new_id("cert")
    engine = create_engine(database_url, application_name="sitefleet-deployer-tests")
    async with create_sessionmaker(engine).begin() as session:
        session.add(
            Certificate(
                id=certificate_id,
                site_id=site_rows["site_id"],
                tenant_id=site_rows["tenant_id"],
                domain=domain,
                names=[domain, f"www.{domain}"],
                challenge="http-01",
                status="issued",
                private_key_pem=issued.key_pem,
                certificate_pem=issued.chain_pem,
            )
        )
    await engine.dispose()
    await publisher.submit(
        CertificateInstallRequested(
            site_id=site_rows["site_id"], domain=domain, certificate_id=certificate_id
        )
    )
    installed = await next_event(certs_events, "cert.installed")
    assert installed.payload["certificate_id"] == certificate_id
    assert installed.payload["host_ids"] == ["local"]

    def handshake() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", nginx.https_port), timeout=5) as sock,
            ca.context().wrap_socket(sock, server_hostname=f"www.{domain}") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    served = x509.load_der_x509_certificate(await asyncio.to_thread(handshake))
    assert served.serial_number == issued.serial
    parked = await (await broker.channel()).get_queue(DEPLOYER_JOBS.parked)
    assert await parked.get(no_ack=True, fail=False) is None
    service.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(service.wait, DEADLINE) == 0
    await publisher.channel.close()
