"""The certs service against real parts: its own process (``python -m services.certs``),
RabbitMQ, PostgreSQL, PowerDNS and Pebble. The test plays the other services through the
message contract: a fake deployer answers ``site.acme_challenge_requested`` and
``site.certificate_install_requested`` with a small web host of its own (HTTP for the
challenge, TLS with SNI for the certificates), and a fake DNS service sets the
``_acme-challenge`` TXT records in PowerDNS. tests/e2e/test_https.py runs the real ones."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import ssl
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from cli.devstack import procs
from services.certs.orders import served_names
from shared import broker
from shared.consumer import Consumer
from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.ids import new_id
from shared.messages import (
    AcmeDnsChallengeRequested,
    AcmeHttpChallengeRequested,
    CertificateInstalled,
    CertificateInstallRequested,
    Envelope,
    Message,
)
from shared.models import Certificate, DnsRecord, Site, Tenant
from shared.settings import PROJECT_ROOT
from tests.fixtures.components import PowerDns, world_readable_tempdir
from tests.fixtures.isolation import create_database, create_vhost, drop_database, drop_vhost
from tests.fixtures.pebble import Pebble, start_pebble
from tests.fixtures.platform import wait_until

OURS = "127.0.0.1"
ELSEWHERE = "198.51.100.7"  # RFC 5737 documentation address: not one of our hosts


def _self_signed_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "default")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem + cert.public_bytes(serialization.Encoding.PEM).decode()


class FakeWebHost:
    """A web host as the deployer keeps it: ``/.well-known/acme-challenge/<token>`` over
    HTTP for any Host, and over TLS the certificate of the name the client asks for (SNI)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.challenges: dict[str, str] = {}
        # Serve this for every token (a host that answers with another key authorization).
        self.wrong_answer: str | None = None
        self.contexts: dict[str, ssl.SSLContext] = {}
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                prefix = "/.well-known/acme-challenge/"
                token = self.path[len(prefix) :] if self.path.startswith(prefix) else None
                answer = host.challenges.get(token) if token else None
                if token and host.wrong_answer is not None:
                    answer = host.wrong_answer
                if answer is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = answer.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http_port = self.http.server_address[1]
        # shutdown() waits for the loop's next poll: 0.05 s, not the default 0.5 s.
        threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self.tls_port = procs.free_port()
        self._tls: asyncio.AbstractServer | None = None

    def _context(self, pem: str) -> ssl.SSLContext:
        path = self.root / f"{uuid.uuid4().hex}.pem"
        path.write_text(pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(path)
        return context

    async def start_tls(self) -> None:
        default = self._context(_self_signed_pem())

        def pick(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
            if name and name in self.contexts:
                sock.context = self.contexts[name]

        default.sni_callback = pick  # type: ignore[assignment]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        self._tls = await asyncio.start_server(handle, "127.0.0.1", self.tls_port, ssl=default)

    def install(self, names: list[str], key_and_chain: str) -> None:
        context = self._context(key_and_chain)
        for name in names:
            self.contexts[name] = context

    async def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        if self._tls is not None:
            self._tls.close()


class PowerDnsZones:
    """Records of test domains, written straight to PowerDNS (the test plays the DNS
    service)."""

    def __init__(self, pdns: PowerDns) -> None:
        self.pdns = pdns
        self.base = f"{pdns.api_url}/api/v1/servers/localhost/zones"
        self.headers = {"X-API-Key": pdns.api_key}

    async def point(self, domain: str, address: str) -> None:
        """Create the zone of ``domain`` (or update it): apex, www and proxy A ``address``."""
        rrsets = [
            {
                "name": f"{name}.",
                "type": "A",
                "ttl": 60,
                "changetype": "REPLACE",
                "records": [{"content": address, "disabled": False}],
            }
            for name in (domain, f"www.{domain}", f"proxy.{domain}")
        ]
        async with httpx.AsyncClient(headers=self.headers, timeout=10) as http:
            found = await http.get(f"{self.base}/{domain}.")
            if found.status_code == 404:
                created = await http.post(
                    self.base,
                    json={
                        "name": f"{domain}.",
                        "kind": "Native",
                        "nameservers": [],
                        "rrsets": [
                            {k: v for k, v in r.items() if k != "changetype"} for r in rrsets
                        ],
                    },
                )
                created.raise_for_status()
                return
            patched = await http.patch(f"{self.base}/{domain}.", json={"rrsets": rrsets})
            patched.raise_for_status()

    async def set_txt(self, zone: str, name: str, values: list[str]) -> None:
        rrset: dict[str, Any] = {"name": name, "type": "TXT", "ttl": 60}
        if values:
            rrset |= {
                "changetype": "REPLACE",
                "records": [{"content": f'"{v}"', "disabled": False} for v in values],
            }
        else:
            rrset["changetype"] = "DELETE"
        async with httpx.AsyncClient(headers=self.headers, timeout=10) as http:
            response = await http.patch(f"{self.base}/{zone}.", json={"rrsets": [rrset]})
            response.raise_for_status()


@dataclass
class CertsStack:
    """One certs service process with everything around it."""

    name: str
    env: dict[str, str]
    sessionmaker: SessionMaker
    host: FakeWebHost
    zones: PowerDnsZones
    publisher: broker.Publisher
    logs: Path
    pebble: Pebble | None
    events: list[Envelope] = field(default_factory=list)
    # Domains whose certificates the fake deployer claims to install but does not.
    lie_about: set[str] = field(default_factory=set)
    # Domains whose HTTP-01 answers the fake deployer does not publish (yet).
    hold_challenges: set[str] = field(default_factory=set)
    jobs_seen: list[Envelope] = field(default_factory=list)
    proc: Any = None

    def start_service(self) -> None:
        self.proc = procs.start(
            [sys.executable, "-m", "services.certs"],
            log=self.logs / "certs.log",
            env=self.env,
            cwd=PROJECT_ROOT,
        )

    def stop_service(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def log_text(self) -> str:
        path = self.logs / "certs.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def new_site(
        self, domain: str | None = None, *, pointing: bool = True, dns_verified: bool = True
    ) -> Site:
        domain = domain or f"s{uuid.uuid4().hex[:8]}.example"
        async with self.sessionmaker.begin() as session:
            tenant = Tenant(id=new_id("ten"), name=f"t-{uuid.uuid4().hex[:8]}")
            session.add(tenant)
            await session.flush()
            site = Site(
                id=new_id("site"),
                tenant_id=tenant.id,
                domain=domain,
                template="landing",
                template_version="1.0.0",
                params={},
                status="live",
            )
            session.add(site)
            # As the DNS service records them once served (the certs service waits for it).
            for name in (domain, f"www.{domain}", f"proxy.{domain}"):
                session.add(
                    DnsRecord(
                        site_id=site.id,
                        tenant_id=tenant.id,
                        zone=f"{domain}.",
                        name=f"{name}.",
                        type="A",
                        content=OURS if pointing else ELSEWHERE,
                        ttl=60,
                        status="verified" if dns_verified else "applied",
                    )
                )
        await self.zones.point(domain, OURS if pointing else ELSEWHERE)
        return site

    async def rows(self, site_id: str) -> list[Certificate]:
        async with self.sessionmaker() as session:
            return list(
                (
                    await session.scalars(
                        select(Certificate)
                        .where(Certificate.site_id == site_id)
                        .order_by(Certificate.created_at)
                    )
                ).all()
            )

    def events_of(self, type_: str, site_id: str) -> list[Envelope]:
        return [e for e in self.events if e.type == type_ and e.payload.get("site_id") == site_id]

    async def wait_event(self, type_: str, site_id: str, *, timeout: float = 60) -> Envelope:
        async def seen() -> Envelope | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("certs service exited:\n" + self.log_text()[-3000:])
            found = self.events_of(type_, site_id)
            return found[-1] if found else None

        event: Envelope = await wait_until(seen, timeout=timeout, what=f"{type_} for {site_id}")
        return event

    async def wait_log(self, text: str, count: int = 1, *, timeout: float = 30) -> None:
        async def seen() -> bool:
            return self.log_text().count(text) >= count

        await wait_until(seen, timeout=timeout, what=f"{count}x {text!r} in the certs log")


class FakeDeployerAndDns:
    """Answers the certs service's jobs as the deployer and the DNS service would."""

    def __init__(self, stack: CertsStack) -> None:
        self.stack = stack

    async def deployer(self, envelope: Envelope, payload: Message) -> None:
        self.stack.jobs_seen.append(envelope)
        host = self.stack.host
        if isinstance(payload, AcmeHttpChallengeRequested):
            if payload.domain in self.stack.hold_challenges:
                return
            if payload.action == "publish":
                host.challenges[payload.token] = payload.key_authorization
            else:
                host.challenges.pop(payload.token, None)
        elif isinstance(payload, CertificateInstallRequested):
            async with self.stack.sessionmaker() as session:
                row = await session.get(Certificate, payload.certificate_id)
            assert row is not None and row.private_key_pem and row.certificate_pem
            if payload.domain not in self.stack.lie_about:
                # As the deployer writes it: a wildcard under the site's www and proxy names.
                names = served_names(row.domain, list(row.names))
                host.install(names, row.private_key_pem + row.certificate_pem)
            await self.stack.publisher.emit(
                CertificateInstalled(
                    site_id=payload.site_id,
                    domain=payload.domain,
                    certificate_id=payload.certificate_id,
                    host_ids=["local"],
                )
            )

    async def dns(self, envelope: Envelope, payload: Message) -> None:
        self.stack.jobs_seen.append(envelope)
        if isinstance(payload, AcmeDnsChallengeRequested):
            values = payload.values if payload.action == "set" else []
            await self.stack.zones.set_txt(payload.domain, payload.name, values)


StackFactory = Callable[..., Awaitable[CertsStack]]


@pytest.fixture(scope="module")
async def certs_stacks(run_id: str, pdns_server: PowerDns) -> AsyncIterator[StackFactory]:
    """Start certs stacks: ``await certs_stacks("name", pebble=True, env={...})``."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(
        name: str,
        *,
        pebble: bool = True,
        validity_seconds: int | None = None,
        pebble_http_port: int | None = None,
        env: dict[str, str] | None = None,
        service: bool = True,
    ) -> CertsStack:
        root = world_readable_tempdir(f"certs-{name}")
        # rabbitmqctl can take long on a loaded machine: never block the loop (and the
        # heartbeats of the stacks already running) on it.
        vhost, amqp_url = await asyncio.to_thread(
            create_vhost, f"sitefleet-test-{run_id}-certs-{name}"
        )
        db_name = f"sitefleet_test_{run_id}_certs_{name}"
        database_url = await create_database(db_name)
        engine = create_engine(database_url, application_name="tests", pool_size=2)
        host = FakeWebHost(root)
        await host.start_tls()
        ca = (
            start_pebble(
                root / "pebble",
                http_port=pebble_http_port or host.http_port,
                dns_port=pdns_server.dns_port,
                validity_seconds=validity_seconds,
            )
            if pebble
            else None
        )
        connection = await aio_pika.connect_robust(amqp_url)
        channel = await connection.channel()
        await broker.declare_topology(channel, [0.2, 0.4], 10)
        publisher = await broker.Publisher.open(connection)
        stack = CertsStack(
            name=name,
            env={
                "SITEFLEET_DATABASE_URL": database_url,
                "SITEFLEET_AMQP_URL": amqp_url,
                "SITEFLEET_ACME_DIRECTORY_URL": ca.directory_url if ca else "",
                "SITEFLEET_ACME_CA_BUNDLE": str(ca.ca_bundle) if ca else "",
                "SITEFLEET_ACME_CONTACT_EMAIL": "ops@example.com",
                "SITEFLEET_ACME_POLL_INTERVAL": "0.2",
                "SITEFLEET_DNS_PORT": str(pdns_server.dns_port),
                "SITEFLEET_HTTP_PORT": str(host.http_port),
                "SITEFLEET_HTTPS_PORT": str(host.tls_port),
                "SITEFLEET_WEB_HOST_ADDRESSES": f'["{OURS}"]',
                "SITEFLEET_RETRY_DELAYS": "[0.2, 0.4]",
                "SITEFLEET_CHALLENGE_TIMEOUT": "10",
                "SITEFLEET_CHALLENGE_POLL_INTERVAL": "0.1",
                "SITEFLEET_CERT_SWEEP_INTERVAL": "1",
                "SITEFLEET_CERT_RETRY_BACKOFF": "[3600]",
                "SITEFLEET_LOG_LEVEL": "INFO",
                **(env or {}),
            },
            sessionmaker=create_sessionmaker(engine),
            host=host,
            zones=PowerDnsZones(pdns_server),
            publisher=publisher,
            logs=root / "logs",
            pebble=ca,
        )
        fakes = FakeDeployerAndDns(stack)
        # prefetch 1 for DNS: PowerDNS's sqlite backend takes one writer at a time.
        for spec, handler, prefetch in (
            (broker.DEPLOYER_JOBS, fakes.deployer, 4),
            (broker.DNS_JOBS, fakes.dns, 1),
        ):
            consumer = Consumer(spec, handler, publisher, [0.2, 0.4], emit_parked=False)
            await consumer.start(await connection.channel(), prefetch)
        watch = await channel.declare_queue(exclusive=True, auto_delete=True)
        await watch.bind(broker.EVENTS_EXCHANGE, routing_key="cert.*")

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                stack.events.append(Envelope.model_validate_json(message.body))

        await watch.consume(on_event)

        async def cleanup() -> None:
            stack.stop_service()
            if ca is not None:
                ca.stop()
            await connection.close()
            await host.close()
            await engine.dispose()
            await drop_database(db_name)
            await asyncio.to_thread(drop_vhost, vhost)
            kept = Path(tempfile.gettempdir()) / "sitefleet-test-logs" / f"{run_id}-certs-{name}"
            if stack.logs.exists():
                shutil.copytree(stack.logs, kept, dirs_exist_ok=True)
                if ca is not None:
                    shutil.copy(ca.log, kept / "pebble.log")
            shutil.rmtree(root, ignore_errors=True)  # the logs are kept above

        cleanups.append(cleanup)
        if service:
            stack.start_service()
        return stack

    yield start
    for cleanup in reversed(cleanups):
        await cleanup()
