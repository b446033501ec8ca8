"""HTTPS on the web hosts (issue 8, deployer side): HTTP-01 answers and certificates written
through the deployer's handler to a site's two web hosts, one on this machine and one behind
the test sshd, each with its own real nginx (HTTP and TLS listeners, HSTS on). Certificates
come from a CA made here with ``cryptography``, trusted only by these tests' clients."""

from __future__ import annotations

import asyncio
import pwd
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from cli.devstack import procs
from services.deployer.consumer import DeployerHandler
from services.deployer.fence import DatabaseFence
from services.deployer.health import release_marker
from services.deployer.hosts import HostRegistry, SshSpec, add_host
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from services.deployer.tls import check_certificate
from shared.db import create_engine, create_sessionmaker
from shared.errors import Permanent, SitefleetError, Transient
from shared.ids import new_id
from shared.messages import (
    AcmeHttpChallengeRequested,
    CertificateInstalled,
    CertificateInstallRequested,
    DeploymentSucceeded,
    Message,
    SiteFilesRemoved,
    SiteRemovalRequested,
)
from shared.models import Certificate, Site, SiteHost, Tenant, WebHost
from shared.template_packs import TemplateCatalog
from tests.deployer.test_deploy import make_job
from tests.fixtures.components import run_nginx, world_readable_tempdir
from tests.fixtures.isolation import create_database, drop_database
from tests.fixtures.sshd import Sshd

HSTS_MAX_AGE = 300


# --- a test CA --------------------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@dataclass
class Issued:
    key_pem: str
    chain_pem: str
    serial: int


class LocalCa:
    """A root CA of the test's own; ``issue`` signs leaf certificates with it."""

    def __init__(self, root: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("Sitefleet test CA"))
            .issuer_name(_name("Sitefleet test CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = root / "test-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        names: list[str],
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        valid: timedelta = timedelta(days=7),
    ) -> Issued:
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=2))
            .not_valid_after(now + valid)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, self.cert))
        return Issued(key_pem, chain.decode(), leaf.serial_number)

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.path))


# --- two web hosts, a database, the handler ---------------------------------------------


@dataclass
class Box:
    """A web host's sites root and the nginx serving it over HTTP and HTTPS."""

    sites_root: Path
    port: int
    https_port: int
    proc: subprocess.Popen[bytes]
    # argv running its nginx (per-site rules: nginx -t, -s reload).
    command: list[str]

    async def get(self, domain: str, path: str = "/") -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await client.get(f"http://127.0.0.1:{self.port}{path}", headers={"Host": domain})

    async def get_tls(self, name: str, ca: LocalCa, path: str = "/") -> httpx.Response:
        """GET over TLS with SNI and Host ``name``, trusting only the test CA."""
        async with httpx.AsyncClient(verify=ca.context(), trust_env=False) as client:
            return await client.get(
                f"https://127.0.0.1:{self.https_port}{path}",
                headers={"Host": name},
                extensions={"sni_hostname": name},
            )

    async def served_serial(self, name: str, ca: LocalCa) -> int:
        """The serial of the certificate a new handshake for ``name`` gets (verified)."""

        def handshake() -> bytes:
            with (
                socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as sock,
                ca.context().wrap_socket(sock, server_hostname=name) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

        return x509.load_der_x509_certificate(await asyncio.to_thread(handshake)).serial_number

    def nginx_pids(self) -> tuple[int, set[int]]:
        """The master's pid and its workers' (a reload replaces the workers)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return self.proc.pid, {int(pid) for pid in out.stdout.split()}


def _box(name: str) -> Iterator[Box]:
    root = world_readable_tempdir(name)
    server, proc = run_nginx(root, hsts_max_age=HSTS_MAX_AGE)
    yield Box(server.sites_root, server.port, server.https_port, proc, server.command)  # type: ignore[arg-type]
    procs.stop(proc)  # type: ignore[arg-type]
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def box_a() -> Iterator[Box]:
    yield from _box("tls-a")


@pytest.fixture(scope="module")
def box_b() -> Iterator[Box]:
    yield from _box("tls-b")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCa:
    return LocalCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
async def tls_db(run_id: str) -> AsyncIterator[str]:
    name = f"sitefleet_test_{run_id}_tls_hosts"
    url = await create_database(name)
    yield url
    await drop_database(name)


@pytest.fixture
async def engine(tls_db: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(tls_db, application_name="sitefleet-tls-tests", pool_size=4)
    yield engine
    async with create_sessionmaker(engine).begin() as session:
        await session.execute(delete(SiteHost))
        await session.execute(delete(WebHost))
    await engine.dispose()


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[Message] = []

    async def emit(self, event: Message) -> None:
        self.events.append(event)


@dataclass
class Fleet:
    """The handler, its registry and what it published; the two boxes it deploys to."""

    handler: DeployerHandler
    registry: HostRegistry
    publisher: RecordingPublisher
    engine: AsyncEngine
    boxes: list[Box]
    host_ids: list[str] = field(default_factory=list)


async def register(
    engine: AsyncEngine, name: str, box: Box, sshd: Sshd | None = None, *, rules: bool = False
) -> str:
    async with create_sessionmaker(engine).begin() as session:
        row = await add_host(
            session,
            name,
            ssh=SshSpec(sshd.username, "127.0.0.1", sshd.port) if sshd else None,
            key_path=sshd.client_key if sshd else None,
            host_key=sshd.host_key if sshd else None,
            sites_root=str(box.sites_root),
            objects_root=None,
            http=("127.0.0.1", box.port),
            public_addresses=["127.0.0.1"],
            https_port=box.https_port,
            nginx_command=box.command if rules else None,
        )
        return row.id


async def make_fleet(
    engine: AsyncEngine,
    catalog: TemplateCatalog,
    settings: DeployerSettings,
    boxes: list[Box],
    ssh_server: Sshd,
    *,
    rules: bool = False,
) -> Fleet:
    """Host "a" local (box A), host "b-<n>" over SSH (box B); every site goes to both.
    ``rules``: the hosts can take per-site nginx rules (their nginx command is known)."""
    ids = [
        await register(engine, "a", boxes[0], rules=rules),
        await register(engine, f"b-{uuid.uuid4().hex[:6]}", boxes[1], ssh_server, rules=rules),
    ]
    both = settings.model_copy(update={"hosts_per_site": 2})
    registry = HostRegistry(engine, both, local=LocalHost(settings.sites_root))
    publisher = RecordingPublisher()
    handler = DeployerHandler(
        catalog=catalog,
        host=registry.local.host,
        hosts=registry,
        publisher=publisher,  # type: ignore[arg-type]
        fence=DatabaseFence(engine, lock_timeout=60),
        settings=both,
    )
    return Fleet(handler, registry, publisher, engine, boxes, sorted(ids))


@pytest.fixture
async def fleet(
    engine: AsyncEngine,
    catalog: TemplateCatalog,
    settings: DeployerSettings,
    box_a: Box,
    box_b: Box,
    sshd: Sshd,
) -> AsyncIterator[Fleet]:
    fleet = await make_fleet(engine, catalog, settings, [box_a, box_b], sshd)
    yield fleet
    await fleet.registry.close()


@dataclass
class SiteRef:
    site_id: str
    domain: str

    @property
    def names(self) -> list[str]:
        return [self.domain, f"www.{self.domain}"]


async def create_site(engine: AsyncEngine) -> SiteRef:
    """A site row (the API's) for a fresh domain, at generation 10."""
    created = SiteRef(new_id("site"), f"tls-{uuid.uuid4().hex[:10]}.example.com")
    tenant = new_id("ten")
    async with create_sessionmaker(engine).begin() as session:
        session.add(Tenant(id=tenant, name=tenant))
        await session.flush()
        session.add(
            Site(
                id=created.site_id,
                tenant_id=tenant,
                domain=created.domain,
                template="demo",
                template_version="1.0.0",
                params={},
                generation=10,
            )
        )
    return created


def remove_files(site: SiteRef, boxes: list[Box]) -> None:
    for box in boxes:
        shutil.rmtree(box.sites_root / site.domain, ignore_errors=True)
        for name in (site.domain, f"www.{site.domain}", f"proxy.{site.domain}"):
            (box.sites_root / ".tls" / f"{name}.pem").unlink(missing_ok=True)


@pytest.fixture
async def site(engine: AsyncEngine, box_a: Box, box_b: Box) -> AsyncIterator[SiteRef]:
    created = await create_site(engine)
    yield created
    remove_files(created, [box_a, box_b])


async def store_certificate(
    engine: AsyncEngine, site: SiteRef, issued: Issued, names: list[str] | None = None
) -> str:
    """A row as the certs service writes it once the CA issued the certificate."""
    certificate_id = new_id("cert")
    async with create_sessionmaker(engine).begin() as session:
        session.add(
            Certificate(
                id=certificate_id,
                site_id=site.site_id,
                tenant_id="ten_1",
                domain=site.domain,
                names=names or site.names,
                challenge="http-01",
                status="issued",
                private_key_pem=issued.key_pem,
                certificate_pem=issued.chain_pem,
            )
        )
    return certificate_id


def install_job(site: SiteRef, certificate_id: str) -> CertificateInstallRequested:
    return CertificateInstallRequested(
        site_id=site.site_id, domain=site.domain, certificate_id=certificate_id
    )


async def deploy(
    fleet: Fleet, site: SiteRef, generation: int, title: str, template: str = "demo"
) -> str:
    job = make_job(
        site.domain,
        site_id=site.site_id,
        generation=generation,
        params={"title": title},
        template=template,
    )
    await fleet.handler.deploy(job)
    outcome = fleet.publisher.events[-1]
    assert isinstance(outcome, DeploymentSucceeded), outcome
    return job.deployment_id


def challenge(
    site: SiteRef, token: str, key_authorization: str, action: str = "publish"
) -> AcmeHttpChallengeRequested:
    return AcmeHttpChallengeRequested(
        site_id=site.site_id,
        domain=site.domain,
        token=token,
        key_authorization=key_authorization,
        action=action,  # type: ignore[arg-type]
    )


THUMBPRINT = "n2nHQvrcw3aHjBn6AfnIGvHvqNZ-vaG34Wp0UeJ7BWs"  # 43 base64url characters


def challenge_files(box: Box) -> list[str]:
    root = box.sites_root / ".acme-challenge"
    return (
        sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        if root.exists()
        else []
    )


# --- HTTP-01 ----------------------------------------------------------------------------


async def test_a_published_challenge_is_served_over_http_by_every_host_then_withdrawn(
    fleet: Fleet, site: SiteRef, box_a: Box, box_b: Box
) -> None:
    await deploy(fleet, site, 10, "Challenged")
    token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
    key_authorization = f"{token}.{THUMBPRINT}"
    path = f"/.well-known/acme-challenge/{token}"
    await fleet.handler(None, challenge(site, token, key_authorization))  # type: ignore[arg-type]
    await fleet.handler.acme_challenge(challenge(site, token, key_authorization))  # idempotent

    for box in (box_a, box_b):
        for host in (site.domain, f"www.{site.domain}", "any-other-name.example"):
            answer = await box.get(host, path)
            assert answer.status_code == 200, (box, host)
            assert answer.text == key_authorization
            assert answer.headers["content-type"].startswith("text/plain")

    await fleet.handler.acme_challenge(challenge(site, token, key_authorization, "withdraw"))
    for box in (box_a, box_b):
        assert (await box.get(site.domain, path)).status_code == 404
        assert token not in challenge_files(box)
    # Withdrawing again is fine (a retried job).
    await fleet.handler.acme_challenge(challenge(site, token, key_authorization, "withdraw"))


@pytest.mark.parametrize(
    ("token", "key_authorization"),
    [
        ("../../etc/passwd-aaaaaaaaaaaaaaaaaaaaaaa", "x"),
        ("short", f"short.{THUMBPRINT}"),
        ("tok/en" + "a" * 30, f"tok/en{'a' * 30}.{THUMBPRINT}"),
        ("a" * 300, f"{'a' * 300}.{THUMBPRINT}"),
        ("b" * 43, f"{'c' * 43}.{THUMBPRINT}"),  # another token's key authorization
        ("b" * 43, f"{'b' * 43}.short"),
        ("b" * 43, f"{'b' * 43}.{THUMBPRINT}\n"),
        ("b" * 43, f"{'b' * 43}.{THUMBPRINT[:-1]}+"),
    ],
)
async def test_bad_tokens_and_key_authorizations_are_refused_and_nothing_is_written(
    fleet: Fleet, site: SiteRef, box_a: Box, box_b: Box, token: str, key_authorization: str
) -> None:
    before = [challenge_files(box) for box in (box_a, box_b)]
    with pytest.raises(Permanent) as refused:
        await fleet.handler.acme_challenge(challenge(site, token, key_authorization))
    assert refused.value.code == "invalid_acme_challenge"
    assert [challenge_files(box) for box in (box_a, box_b)] == before


# --- certificates -----------------------------------------------------------------------


async def test_an_installed_certificate_serves_https_redirects_http_and_sends_hsts(
    fleet: Fleet, site: SiteRef, ca: LocalCa, box_a: Box, box_b: Box
) -> None:
    release = await deploy(fleet, site, 10, "Secure")
    proxy = f"proxy.{site.domain}"
    issued = ca.issue([*site.names, proxy])
    certificate_id = await store_certificate(fleet.engine, site, issued, [*site.names, proxy])
    token = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"
    await fleet.handler.acme_challenge(challenge(site, token, f"{token}.{THUMBPRINT}"))

    await fleet.handler(None, install_job(site, certificate_id))  # type: ignore[arg-type]

    installed = fleet.publisher.events[-1]
    assert isinstance(installed, CertificateInstalled)
    assert installed.certificate_id == certificate_id and installed.site_id == site.site_id
    assert sorted(installed.host_ids) == fleet.host_ids
    nobody = pwd.getpwnam("nobody").pw_uid
    for box in (box_a, box_b):
        for name in site.names:
            page = await box.get_tls(name, ca)
            assert page.status_code == 200 and release_marker(page.text) == release
            assert page.headers["strict-transport-security"] == f"max-age={HSTS_MAX_AGE}"
            assert await box.served_serial(name, ca) == issued.serial
            info = (box.sites_root / ".tls" / f"{name}.pem").stat()
            assert (info.st_mode & 0o777, info.st_uid) == (0o600, nobody)
        # Plain HTTP goes to HTTPS, keeping the path, without HSTS (browsers ignore it there).
        moved = await box.get(site.domain, "/about/?x=1")
        assert moved.status_code == 301
        assert moved.headers["location"] == (f"https://{site.domain}:{box.https_port}/about/?x=1")
        assert "strict-transport-security" not in moved.headers
        # ... except ACME answers and the deployer's own paths.
        acme = await box.get(site.domain, f"/.well-known/acme-challenge/{token}")
        assert acme.status_code == 200 and acme.text == f"{token}.{THUMBPRINT}"
        assert (await box.get(site.domain, "/.well-known/sitefleet-rules")).status_code == 404
        # proxy.<domain> is the CDN's origin (it pulls over plain HTTP): served over HTTPS
        # too, but plain HTTP is never redirected there.
        assert await box.served_serial(proxy, ca) == issued.serial
        origin = await box.get(proxy)
        assert origin.status_code == 200 and release_marker(origin.text) == release
    # A redeploy's health check follows the redirect and sees the new release over HTTPS.
    second = await deploy(fleet, site, 11, "Secure again")
    for box in (box_a, box_b):
        assert release_marker((await box.get_tls(site.domain, ca)).text) == second


async def test_a_renewed_certificate_replaces_the_old_one_without_an_nginx_reload(
    fleet: Fleet, site: SiteRef, ca: LocalCa, box_a: Box, box_b: Box
) -> None:
    await deploy(fleet, site, 10, "Renewed")
    first = ca.issue(site.names)
    first_id = await store_certificate(fleet.engine, site, first)
    await fleet.handler.install_certificate(install_job(site, first_id))
    for box in (box_a, box_b):
        assert await box.served_serial(site.domain, ca) == first.serial
    pids = [box.nginx_pids() for box in (box_a, box_b)]
    assert all(workers for _, workers in pids)

    renewed = ca.issue(site.names)
    assert renewed.serial != first.serial
    renewed_id = await store_certificate(fleet.engine, site, renewed)
    await fleet.handler.install_certificate(install_job(site, renewed_id))

    for box in (box_a, box_b):
        for name in site.names:
            assert await box.served_serial(name, ca) == renewed.serial
        assert (await box.get_tls(site.domain, ca)).status_code == 200
    assert [box.nginx_pids() for box in (box_a, box_b)] == pids

    # The certs service marks the renewal installed; a late retry of the first install
    # (say, redelivered) must not put the older certificate back.
    async with create_sessionmaker(fleet.engine).begin() as session:
        row = await session.get(Certificate, renewed_id)
        assert row is not None
        row.status = "installed"
    events = len(fleet.publisher.events)
    await fleet.handler.install_certificate(install_job(site, first_id))
    assert len(fleet.publisher.events) == events  # nothing announced
    for box in (box_a, box_b):
        assert await box.served_serial(site.domain, ca) == renewed.serial


async def test_a_host_that_cannot_receive_the_certificate_is_retried_others_keep_serving(
    engine: AsyncEngine,
    catalog: TemplateCatalog,
    settings: DeployerSettings,
    site: SiteRef,
    ca: LocalCa,
    box_a: Box,
    box_b: Box,
    private_sshd: Sshd,
) -> None:
    fleet = await make_fleet(engine, catalog, settings, [box_a, box_b], private_sshd)
    other = await create_site(engine)
    try:
        await deploy(fleet, site, 10, "Patient")
        await deploy(fleet, other, 10, "Bystander")
        await fleet.registry.close()  # no pooled connection outlives the sshd
        issued = ca.issue(site.names)
        certificate_id = await store_certificate(engine, site, issued)
        private_sshd.stop()
        with pytest.raises(Transient) as failed:
            await fleet.handler.install_certificate(install_job(site, certificate_id))
        assert failed.value.code == "host_unreachable"
        assert "web host b-" in failed.value.message
        assert not any(isinstance(e, CertificateInstalled) for e in fleet.publisher.events)
        # The host that received it serves it; the other still serves the site over HTTP.
        assert await box_a.served_serial(site.domain, ca) == issued.serial
        assert (await box_b.get(site.domain)).status_code == 200
        assert not (box_b.sites_root / ".tls" / f"{site.domain}.pem").exists()
        for box in (box_a, box_b):
            assert "<h1>Bystander</h1>" in (await box.get(other.domain)).text

        private_sshd.start()
        await fleet.handler.install_certificate(install_job(site, certificate_id))  # the retry
        assert isinstance(fleet.publisher.events[-1], CertificateInstalled)
        for box in (box_a, box_b):
            assert await box.served_serial(site.domain, ca) == issued.serial
    finally:
        await fleet.registry.close()
        remove_files(other, [box_a, box_b])


async def test_a_certificate_install_racing_a_redeploy_of_the_site_both_complete(
    fleet: Fleet, site: SiteRef, ca: LocalCa, box_a: Box, box_b: Box
) -> None:
    await deploy(fleet, site, 10, "Before")
    issued = ca.issue(site.names)
    certificate_id = await store_certificate(fleet.engine, site, issued)
    job = make_job(site.domain, site_id=site.site_id, generation=11, params={"title": "After"})

    await asyncio.gather(
        fleet.handler.deploy(job),
        fleet.handler.install_certificate(install_job(site, certificate_id)),
    )

    kinds = [type(e) for e in fleet.publisher.events]
    assert CertificateInstalled in kinds
    assert any(
        isinstance(e, DeploymentSucceeded) and e.deployment_id == job.deployment_id
        for e in fleet.publisher.events
    )
    for box in (box_a, box_b):
        page = await box.get_tls(site.domain, ca)
        assert release_marker(page.text) == job.deployment_id
        assert await box.served_serial(site.domain, ca) == issued.serial


async def test_a_mismatched_foreign_or_expired_certificate_is_refused_and_nothing_changes(
    fleet: Fleet, site: SiteRef, ca: LocalCa, box_a: Box, box_b: Box
) -> None:
    await deploy(fleet, site, 10, "Careful")
    good = ca.issue(site.names)
    await fleet.handler.install_certificate(
        install_job(site, await store_certificate(fleet.engine, site, good))
    )
    other_key = ca.issue(site.names)
    mismatched = Issued(other_key.key_pem, ca.issue(site.names).chain_pem, 0)
    foreign = ca.issue(["evil.example.net", site.domain])
    expired = ca.issue(site.names, valid=timedelta(hours=-1))
    cases = [
        (mismatched, None, "certificate_key_mismatch"),
        (foreign, ["evil.example.net", site.domain], "certificate_name_foreign"),
        (ca.issue([site.domain]), site.names, "certificate_name_foreign"),  # www not covered
        (expired, None, "certificate_expired"),
        (Issued("not a key", good.chain_pem, 0), None, "invalid_certificate"),
    ]
    for issued, names, code in cases:
        certificate_id = await store_certificate(fleet.engine, site, issued, names)
        with pytest.raises(Permanent) as refused:
            await fleet.handler.install_certificate(install_job(site, certificate_id))
        assert refused.value.code == code, refused.value.message
    for box in (box_a, box_b):
        for name in site.names:
            assert await box.served_serial(name, ca) == good.serial
        assert not (box.sites_root / ".tls" / "evil.example.net.pem").exists()


async def test_a_site_with_its_own_nginx_rules_gets_the_same_https_acme_and_redirect(
    engine: AsyncEngine,
    catalog: TemplateCatalog,
    settings: DeployerSettings,
    site: SiteRef,
    ca: LocalCa,
    box_a: Box,
    box_b: Box,
    sshd: Sshd,
) -> None:
    """A single-page app (rule profile "spa", a server block of its own): its server block,
    not the catch-all, answers its names, so it must serve ACME answers, HTTPS, the redirect
    and HSTS itself."""
    fleet = await make_fleet(engine, catalog, settings, [box_a, box_b], sshd, rules=True)
    try:
        release = await deploy(fleet, site, 10, "Spa", template="app")
        token = "c3BhY2hhbGxlbmdldG9rZW5hYWFhYWFhYWFhYWFhYWFh"
        await fleet.handler.acme_challenge(challenge(site, token, f"{token}.{THUMBPRINT}"))
        issued = ca.issue(site.names)
        await fleet.handler.install_certificate(
            install_job(site, await store_certificate(engine, site, issued))
        )
        for box in (box_a, box_b):
            # The profile's own server answers: a client-side route gets index.html.
            route = await box.get_tls(site.domain, ca, "/app/settings")
            assert route.status_code == 200 and release_marker(route.text) == release
            assert route.headers["cache-control"] == "no-cache"
            assert route.headers["strict-transport-security"] == f"max-age={HSTS_MAX_AGE}"
            assert await box.served_serial(f"www.{site.domain}", ca) == issued.serial
            moved = await box.get(site.domain, "/app/settings")
            assert moved.status_code == 301
            assert moved.headers["location"] == (
                f"https://{site.domain}:{box.https_port}/app/settings"
            )
            acme = await box.get(site.domain, f"/.well-known/acme-challenge/{token}")
            assert acme.status_code == 200 and acme.text == f"{token}.{THUMBPRINT}"
            assert (await box.get(site.domain, "/.well-known/sitefleet-rules")).status_code == 200
    finally:
        await fleet.handler.remove_site(
            SiteRemovalRequested(tenant_id="ten_1", site_id=site.site_id, domain=site.domain)
        )
        await fleet.registry.close()


async def test_removing_a_site_removes_its_certificates_and_challenges(
    fleet: Fleet, site: SiteRef, ca: LocalCa, box_a: Box, box_b: Box
) -> None:
    await deploy(fleet, site, 10, "Leaving")
    await fleet.handler.install_certificate(
        install_job(site, await store_certificate(fleet.engine, site, ca.issue(site.names)))
    )
    token = "cmVtb3ZlZHdpdGh0aGVzaXRlYWFhYWFhYWFhYWFhYWFh"
    await fleet.handler.acme_challenge(challenge(site, token, f"{token}.{THUMBPRINT}"))

    await fleet.handler.remove_site(
        SiteRemovalRequested(tenant_id="ten_1", site_id=site.site_id, domain=site.domain)
    )

    assert isinstance(fleet.publisher.events[-1], SiteFilesRemoved)
    for box in (box_a, box_b):
        assert not list((box.sites_root / ".tls").glob(f"*{site.domain}.pem"))
        assert token not in challenge_files(box)
        assert (await box.get(site.domain)).status_code == 404


def test_a_wildcard_stands_for_www_and_proxy_and_the_pem_holds_key_then_chain(
    ca: LocalCa,
) -> None:
    domain = "wild.example.com"
    issued = ca.issue([domain, f"*.{domain}"])
    files = check_certificate(
        "cert_1",
        domain=domain,
        names=[domain, f"*.{domain}"],
        private_key_pem=issued.key_pem,
        chain_pem=issued.chain_pem,
    )
    assert files.names == sorted([domain, f"www.{domain}", f"proxy.{domain}"])
    text = files.pem.decode()
    assert text.startswith("-----BEGIN PRIVATE KEY-----")
    assert text.count("-----BEGIN CERTIFICATE-----") == 2
    with pytest.raises(SitefleetError):
        check_certificate(
            "cert_2",
            domain=domain,
            names=["*.example.com"],
            private_key_pem=issued.key_pem,
            chain_pem=issued.chain_pem,
        )


async def test_nothing_is_written_for_a_site_on_no_host_or_a_removed_one(
    fleet: Fleet, site: SiteRef, ca: LocalCa, box_a: Box, box_b: Box
) -> None:
    token = "bm90cGxhY2VkYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFh"
    certificate_id = await store_certificate(fleet.engine, site, ca.issue(site.names))
    # Never deployed, and web hosts are registered: it lives nowhere yet.
    with pytest.raises(Permanent) as nowhere:
        await fleet.handler.acme_challenge(challenge(site, token, f"{token}.{THUMBPRINT}"))
    assert nowhere.value.code == "site_not_placed"
    with pytest.raises(Permanent) as nowhere:
        await fleet.handler.install_certificate(install_job(site, certificate_id))
    assert nowhere.value.code == "site_not_placed"

    await deploy(fleet, site, 10, "Gone soon")
    async with create_sessionmaker(fleet.engine).begin() as session:
        row = await session.get(Site, site.site_id)
        assert row is not None
        row.files_removed = True
    await fleet.handler.install_certificate(install_job(site, certificate_id))  # acked: no-op
    assert not any(isinstance(e, CertificateInstalled) for e in fleet.publisher.events)
    for box in (box_a, box_b):
        assert token not in challenge_files(box)
        assert not (box.sites_root / ".tls" / f"{site.domain}.pem").exists()
