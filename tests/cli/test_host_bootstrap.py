"""`sitefleet host bootstrap` against a real sshd (logged in as root) on this machine, with
every path in a temp dir and nginx already installed: it makes a throwaway deploy user,
the layout and the catch-all config (disabling a stock default site), checks nginx serves,
registers the host; a second run changes nothing; then a site created through the API is
deployed there over SSH as the deploy user and served by that nginx."""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import httpx
import pytest
from sqlalchemy import select

from cli.devstack import procs
from shared.broker import Publisher
from shared.db import create_engine, create_sessionmaker
from shared.ids import new_id
from shared.messages import CertificateInstallRequested
from shared.models import Certificate, WebHost
from tests.deployer.test_tls_hosts import LocalCa
from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.components import world_readable_tempdir
from tests.fixtures.platform import PlatformFactory
from tests.fixtures.sshd import Sshd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates a user: needs root (CI runs as root)"),
]

# Debian's stock layout, in small: a main config that includes conf.d and sites-enabled.
MAIN_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/conf.d/*.conf;
    include {prefix}/sites-enabled/*;
}}
"""
STOCK_SITE = "server {{ listen 127.0.0.1:{port} default_server; return 418; }}\n"


@dataclass
class Machine:
    """The 'fresh web host': an sshd, an nginx running the stock config, a user name."""

    root: Path
    sshd: Sshd
    user: str
    http_port: int
    nginx_prefix: Path
    https_port: int

    def bootstrap_args(self) -> list[str]:
        conf = self.nginx_prefix / "nginx.conf"
        return [
            *("host", "bootstrap", f"root@127.0.0.1:{self.sshd.port}"),
            *("--key", str(self.sshd.client_key), "--name", "web-boot"),
            *("--deploy-user", self.user, "--deploy-home", str(self.root / "home" / self.user)),
            *("--sites-root", str(self.root / "srv" / "sites")),
            *("--listen", f"127.0.0.1:{self.http_port}"),
            # This nginx runs its workers as nobody:nogroup (started as root, no `user`).
            *("--https-listen", f"127.0.0.1:{self.https_port}", "--nginx-group", "nogroup"),
            *("--http", f"127.0.0.1:{self.http_port}"),
            *("--nginx-conf", str(self.nginx_prefix / "conf.d" / "sitefleet.conf")),
            *("--nginx-default-site", str(self.nginx_prefix / "sites-enabled" / "default")),
            *("--nginx-command", f"nginx -p {self.nginx_prefix} -c {conf}"),
        ]


@pytest.fixture
def machine() -> Iterator[Machine]:
    root = world_readable_tempdir("bootstrap")
    user = f"sft{uuid.uuid4().hex[:8]}"
    (root / "sshd").mkdir()
    sshd = Sshd(root / "sshd", extra_users=(user,))
    prefix = root / "nginx"
    for sub in ("conf.d", "sites-enabled", "sites-available", "tmp"):
        (prefix / sub).mkdir(parents=True)
    http_port = procs.free_port()
    (prefix / "nginx.conf").write_text(MAIN_CONF.format(prefix=prefix))
    (prefix / "sites-available" / "default").write_text(STOCK_SITE.format(port=http_port))
    (prefix / "sites-enabled" / "default").symlink_to(prefix / "sites-available" / "default")
    nginx = procs.start(
        ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        log=prefix / "stdout.log",
    )
    sshd.start()
    try:
        procs.wait_for_port(http_port, proc=nginx)
        yield Machine(root, sshd, user, http_port, prefix, procs.free_port())
    finally:
        sshd.stop()
        procs.stop(nginx)
        # --force: the deployer may still hold an SSH session as the user.
        subprocess.run(["userdel", "--force", user], capture_output=True)
        subprocess.run(["groupdel", user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


async def get_over_tls(ca: LocalCa, port: int, domain: str) -> httpx.Response:
    async with httpx.AsyncClient(verify=ca.context(), timeout=5) as tls:
        return await tls.get(
            f"https://127.0.0.1:{port}/",
            headers={"Host": domain},
            extensions={"sni_hostname": domain},
        )


def sitefleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [".venv/bin/sitefleet", *args],
        text=True,
        capture_output=True,
        env={**os.environ, **env},
        timeout=300,
    )


async def test_bootstrap_prepares_registers_is_idempotent_and_the_host_serves_a_deploy(
    platforms: PlatformFactory, machine: Machine
) -> None:
    platform = await platforms.start("bootstrap", services=("api", "deployer"))
    async with httpx.AsyncClient(timeout=5) as web:
        stock = await web.get(f"http://127.0.0.1:{machine.http_port}/")
    assert stock.status_code == 418  # the stock default site answers before

    first = await asyncio.to_thread(sitefleet, platform.env, *machine.bootstrap_args())
    assert first.returncode == 0, first.stdout + first.stderr
    changed = {
        line.split()[1].rstrip(":")
        for line in first.stdout.splitlines()
        if line.startswith("changed")
    }
    assert {"deploy", "directories", "nginx", "register"} <= changed, first.stdout
    assert "ok       packages: nginx, python3 already installed" in first.stdout
    assert "nginx -t passed" in first.stdout

    account = pwd.getpwnam(machine.user)
    assert account.pw_shell == "/bin/sh" and account.pw_uid != 0
    sites_root = machine.root / "srv" / "sites"
    for directory in (sites_root, sites_root / ".objects", sites_root / ".acme-challenge"):
        assert directory.stat().st_uid == account.pw_uid
    tls = (sites_root / ".tls").stat()
    assert (tls.st_uid, tls.st_gid, tls.st_mode & 0o7777) == (
        account.pw_uid,
        grp.getgrnam("nogroup").gr_gid,
        0o2750,
    )
    assert not (machine.nginx_prefix / "sites-enabled" / "default").exists()
    assert (machine.nginx_prefix / "sites-available" / "default").exists()  # only disabled

    second = await asyncio.to_thread(sitefleet, platform.env, *machine.bootstrap_args())
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing changed: web host web-boot was already bootstrapped" in second.stdout
    assert not [line for line in second.stdout.splitlines() if line.startswith("changed")]

    listed = await asyncio.to_thread(sitefleet, platform.env, "host", "list")
    assert f"web-boot  {machine.user}@127.0.0.1:{machine.sshd.port}" in listed.stdout

    async with platform.client(await platform.new_tenant()) as api:
        domain = "bootstrapped.example"
        created = await api.post(
            "/v1/sites",
            json={"domain": domain, "template": "landing", "params": landing_params("Boot")},
        )
        assert created.status_code == 201, created.text
        dep = await wait_deployment(api, created.json()["latest_deployment_id"])
        assert dep["status"] == "live", (dep, platform.log_tail("deployer"))
    async with httpx.AsyncClient(timeout=5) as web:
        page = await web.get(f"http://127.0.0.1:{machine.http_port}/", headers={"Host": domain})
    assert page.status_code == 200 and dep["id"] in page.text
    # Written over SSH as the deploy user, not as the account that bootstrapped the host.
    release = (sites_root / domain / "current").resolve()
    assert release.stat().st_uid == account.pw_uid

    # A certificate, written by the unprivileged deploy user, that nginx's workers read.
    ca = LocalCa(machine.root)
    issued = ca.issue([domain, f"www.{domain}"])
    certificate_id = new_id("cert")
    engine = create_engine(platform.database_url, application_name="tests", pool_size=1)
    async with create_sessionmaker(engine).begin() as session:
        session.add(
            Certificate(
                id=certificate_id,
                site_id=created.json()["id"],
                tenant_id="ten_boot",
                domain=domain,
                names=[domain, f"www.{domain}"],
                challenge="http-01",
                status="issued",
                private_key_pem=issued.key_pem,
                certificate_pem=issued.chain_pem,
            )
        )
    await engine.dispose()
    connection = await aio_pika.connect_robust(platform.amqp_url)
    async with connection:
        publisher = await Publisher.open(connection)
        await publisher.submit(
            CertificateInstallRequested(
                site_id=created.json()["id"], domain=domain, certificate_id=certificate_id
            )
        )
    pem = sites_root / ".tls" / f"{domain}.pem"
    async with asyncio.timeout(60):
        while not pem.exists():
            await asyncio.sleep(0.1)
    info = pem.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (
        account.pw_uid,
        grp.getgrnam("nogroup").gr_gid,
        0o640,
    )
    secure = await get_over_tls(ca, machine.https_port, domain)
    assert secure.status_code == 200 and dep["id"] in secure.text
    async with httpx.AsyncClient(timeout=5) as web:
        moved = await web.get(f"http://127.0.0.1:{machine.http_port}/", headers={"Host": domain})
    assert moved.status_code == 301

    # Bootstrapped again with TLS on another port: the config and the registration follow.
    machine.https_port = procs.free_port()
    third = await asyncio.to_thread(sitefleet, platform.env, *machine.bootstrap_args())
    assert third.returncode == 0, third.stdout + third.stderr
    moved_to = f"now listens on 127.0.0.1:{machine.http_port}, TLS on port {machine.https_port}"
    assert f"changed  register: web-boot {moved_to}" in third.stdout, third.stdout
    engine = create_engine(platform.database_url, application_name="tests", pool_size=1)
    async with create_sessionmaker(engine)() as session:
        row = await session.scalar(select(WebHost).where(WebHost.name == "web-boot"))
        assert row is not None and row.https_port == machine.https_port
    await engine.dispose()
    secure = await get_over_tls(ca, machine.https_port, domain)
    assert secure.status_code == 200 and dep["id"] in secure.text


async def test_bootstrap_refuses_a_deploy_user_that_could_be_a_shell_trick(
    machine: Machine,
) -> None:
    args = machine.bootstrap_args()
    args[args.index("--deploy-user") + 1] = "x; touch /tmp/pwned"
    refused = await asyncio.to_thread(sitefleet, {}, *args)
    assert refused.returncode == 1
    assert "is not an unprivileged user name" in refused.stderr


async def test_a_config_nginx_rejects_is_rolled_back_and_the_stock_site_keeps_serving(
    machine: Machine, database_url: str
) -> None:
    # Another default server on the port (not loaded yet): `nginx -t` will refuse ours.
    (machine.nginx_prefix / "conf.d" / "other.conf").write_text(
        f"server {{ listen 127.0.0.1:{machine.http_port} default_server; return 419; }}\n"
    )
    env = {"SITEFLEET_DATABASE_URL": database_url}
    failed = await asyncio.to_thread(sitefleet, env, *machine.bootstrap_args())
    assert failed.returncode == 1
    assert "installing the nginx config failed" in failed.stderr
    assert "duplicate default server" in failed.stderr  # nginx's own message
    assert not (machine.nginx_prefix / "conf.d" / "sitefleet.conf").exists()
    assert (machine.nginx_prefix / "sites-enabled" / "default").is_symlink()  # back
    async with httpx.AsyncClient(timeout=5) as web:
        stock = await web.get(f"http://127.0.0.1:{machine.http_port}/")
    assert stock.status_code == 418
    listed = await asyncio.to_thread(sitefleet, env, "host", "list")
    assert "web-boot" not in listed.stdout  # not registered
