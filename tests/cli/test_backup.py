"""`sitefleet backup` and `sitefleet restore` through the real platform: two sites (a plain
landing page and an spa with nginx rules) live on two web hosts (one on this machine, one
over SSH, each behind its own nginx); a backup; a damaged or truncated backup is refused
and changes nothing; then the database is dropped and both hosts wiped, and the restore
brings every page back, byte for byte, with its rules and its HTTPS certificate, without a
rebuild, and the API shows the sites again (the same token works); a second restore changes
nothing; a site deployed after the backup is left alone unless --yes."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import shlex
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from cryptography import x509

from cli.devstack import procs
from services.deployer.layout import TLS, served_names, write_certificates
from shared.migrate import alembic_config, upgrade
from shared.template_packs import TemplateCatalog
from tests.deployer.test_tls_hosts import LocalCa
from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.components import run_nginx, world_readable_tempdir
from tests.fixtures.isolation import PG_ADMIN_URL, drop_database
from tests.fixtures.platform import Platform, PlatformFactory, wait_until
from tests.fixtures.sshd import Sshd
from tests.templates.conftest import TEMPLATES

pytestmark = pytest.mark.slow

# A client-side path no page was rendered for: the spa's rules answer it with the app
# shell; without them nginx says 404.
DEEP_LINK = "/app/settings/a-view-only-the-browser-knows"
PATHS = {"shop.example": ("/",), "app.example": ("/", "/app/settings/", DEEP_LINK)}


def sitefleet(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [".venv/bin/sitefleet", *args],
        text=True,
        capture_output=True,
        env={**os.environ, **platform.env},
        timeout=300,
    )


def on_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (what a person sees); its exit code and stderr."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.wait(timeout=300), seen.decode(errors="replace")


async def fetch(http: tuple[int, int], domain: str, path: str) -> httpx.Response:
    """GET as a visitor would: over HTTP, then, when redirected to HTTPS, over the host's
    TLS listener (SNI and Host = the site)."""
    port, tls_port = http
    # verify=False: served_serial checks the certificates; this only reads the pages.
    async with httpx.AsyncClient(timeout=5, verify=False, trust_env=False) as web:  # noqa: S501
        page = await web.get(f"http://127.0.0.1:{port}{path}", headers={"Host": domain})
        if page.status_code == 301 and page.headers["location"].startswith(f"https://{domain}"):
            page = await web.get(
                f"https://127.0.0.1:{tls_port}{path}",
                headers={"Host": domain},
                extensions={"sni_hostname": domain},
            )
        return page


async def pages(
    hosts: tuple[tuple[int, int], ...], domains: list[str]
) -> dict[tuple[int, str, str], str]:
    """What each host serves for each site and path: "<status> <scheme> <body>"."""
    seen = {}
    for http in hosts:
        for domain in domains:
            for path in PATHS[domain]:
                page = await fetch(http, domain, path)
                seen[(http[0], domain, path)] = f"{page.status_code} {page.url.scheme} {page.text}"
    return seen


def wipe(sites_root: Path, nginx_command: list[str]) -> None:
    """The web host loses everything: sites, object store, rules (and nginx forgets them),
    certificates. Only the empty ``.tls`` directory stays, with the group nginx's workers
    read it as, as ``sitefleet host bootstrap`` makes it again on a new machine."""
    for entry in sites_root.iterdir():
        if entry.name == TLS:
            for pem in entry.iterdir():
                pem.unlink()
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    subprocess.run([*nginx_command, "-s", "reload"], check=True, capture_output=True)


def served_serial(ca: LocalCa, port: int, name: str) -> int | None:
    """The serial of the certificate the TLS listener presents for ``name`` (SNI), if it
    presents one this test's CA signed for that name."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ca.context().wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (ssl.SSLError, OSError):
        return None
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_backup_then_restore_onto_a_wiped_database_and_wiped_hosts(
    platforms: PlatformFactory, sshd: Sshd, private_sshd: Sshd, tmp_path: Path
) -> None:
    root = world_readable_tempdir("backup-b")
    second, second_proc = run_nginx(root)
    try:
        platform = await platforms.start(
            "backup", services=("api", "deployer"), extra_env={"SITEFLEET_HOSTS_PER_SITE": "2"}
        )
        first_nginx = json.loads(platform.env["SITEFLEET_NGINX_COMMAND"])
        ports = (platform.http_port, second.port)
        web_a = ("web-a", "--sites-root", str(platform.sites_root))
        web_b = (
            *("web-b", "--ssh", f"{sshd.username}@127.0.0.1:{sshd.port}"),
            *("--key", str(sshd.client_key), "--sites-root", str(second.sites_root)),
            *("--https-port", str(second.https_port)),  # its own TLS listener
        )
        for args, port, nginx in (
            (web_a, ports[0], first_nginx),
            (web_b, ports[1], second.command),
        ):
            added = sitefleet(
                platform,
                *("host", "add", *args),
                *("--http", f"127.0.0.1:{port}", "--nginx-command", shlex.join(nginx)),
            )
            assert added.returncode == 0, added.stderr

        token = await platform.new_tenant()
        spa_params = TemplateCatalog(TEMPLATES).get("spa").preview_params
        wanted = {
            "shop.example": ("landing", landing_params("Backed up")),
            "app.example": ("spa", spa_params),
        }
        sites = {}
        async with platform.client(token) as api:
            for domain, (template, params) in wanted.items():
                created = await api.post(
                    "/v1/sites", json={"domain": domain, "template": template, "params": params}
                )
                assert created.status_code == 201, created.text
                sites[domain] = created.json()
            for site in sites.values():
                dep = await wait_deployment(api, site["latest_deployment_id"], timeout=120)
                assert dep["status"] == "live", dep
        # Both hosts serve shop.example over HTTPS too (certificate files as the deployer
        # installs them; a CA of the test's own).
        ca = LocalCa(tmp_path)
        issued = ca.issue(served_names("shop.example")[:2])
        tls_ports = (int(platform.env["SITEFLEET_HTTPS_PORT"]), second.https_port)
        hosts = tuple(zip(ports, tls_ports, strict=True))
        for sites_root in (platform.sites_root, second.sites_root):
            pem = (issued.key_pem + issued.chain_pem).encode()
            write_certificates(sites_root, served_names("shop.example")[:2], pem)
        for port in tls_ports:
            assert await asyncio.to_thread(served_serial, ca, port, "shop.example") == issued.serial
        before = await pages(hosts, list(wanted))
        assert all(seen.startswith("200 ") for seen in before.values()), before
        assert all(
            (" https " in seen) == (domain == "shop.example")
            for (_, domain, _), seen in before.items()
        ), before

        # A third host, registered after the sites were placed, is down during the backup:
        # the backup is still written (database and the other hosts) but exits 1.
        added = sitefleet(
            platform,
            *("host", "add", "web-c"),
            *("--ssh", f"{private_sshd.username}@127.0.0.1:{private_sshd.port}"),
            *("--key", str(private_sshd.client_key), "--sites-root", str(root / "c")),
        )
        assert added.returncode == 0, added.stderr
        private_sshd.stop()
        made = sitefleet(platform, "backup", str(tmp_path / "backups"))
        assert made.returncode == 1 and "web-c" in made.stderr, made.stderr
        (backup,) = (tmp_path / "backups").iterdir()
        assert backup.name.startswith("sitefleet-backup-")
        manifest = json.loads((backup / "manifest.json").read_text())
        assert manifest["alembic_revision"] and manifest["sitefleet_version"]
        assert [h["name"] for h in manifest["hosts"]] == ["web-a", "web-b", "web-c"]
        assert manifest["hosts"][2]["status"] == "failed"
        for host in manifest["hosts"][:2]:
            assert host["status"] == "ok" and set(host["sites"]) == set(wanted)
            assert host["sites"]["app.example"]["rules"] is True

        # A damaged copy of the backup is refused before anything is touched.
        damaged = tmp_path / "damaged"
        shutil.copytree(backup, damaged)
        assert not list((tmp_path / "backups").glob("*.partial"))
        archive = damaged / "hosts" / "web-b.tar.gz"
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
        refused = sitefleet(platform, "restore", str(damaged), "--yes")
        assert refused.returncode == 1 and "SHA-256" in refused.stderr, refused.stderr
        with open(damaged / "database.dump", "r+b") as dump:
            dump.truncate(dump.seek(0, os.SEEK_END) // 2)
        refused = sitefleet(platform, "restore", str(damaged), "--db-only", "--yes")
        assert refused.returncode == 1 and "truncated" in refused.stderr, refused.stderr
        # With the platform running a restore of the database is refused too.
        refused = sitefleet(platform, "restore", str(backup), "--db-only", "--yes")
        assert refused.returncode == 1 and "sitefleet-api" in refused.stderr, refused.stderr
        assert await pages(hosts, list(wanted)) == before
        async with platform.client(token) as api:
            assert (await api.get(f"/v1/sites/{sites['shop.example']['id']}")).status_code == 200

        # Disaster: the services stop, the database and both hosts' files are gone.
        for service in ("api", "deployer"):
            platform.stop_service(service)
        await drop_database(platform.database_url.rsplit("/", 1)[1])
        wipe(platform.sites_root, first_nginx)
        wipe(second.sites_root, second.command)

        async def all_gone() -> bool:
            return all(s.startswith("404 ") for s in (await pages(hosts, list(wanted))).values())

        await wait_until(all_gone, timeout=30, what="the wiped hosts to serve nothing")
        for port in tls_ports:
            assert await asyncio.to_thread(served_serial, ca, port, "www.shop.example") is None

        restored = sitefleet(platform, "restore", str(backup))
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "warning: web host web-c was not in the backup" in restored.stderr
        assert "2 site(s) switched" in restored.stdout and "nginx reloaded" in restored.stdout
        # restore checked each site through nginx before it returned; pages are the same,
        # and so are the certificates (nginx reads them per handshake: no reload needed).
        assert await pages(hosts, list(wanted)) == before
        assert restored.stdout.count("2 certificate file(s) written") == 2, restored.stdout
        for port in tls_ports:
            for name in served_names("shop.example")[:2]:
                assert await asyncio.to_thread(served_serial, ca, port, name) == issued.serial

        platform.start_service("api")
        await platforms.wait_api(platform)
        async with platform.client(token) as api:
            for domain, site in sites.items():
                shown = (await api.get(f"/v1/sites/{site['id']}")).json()
                assert shown["domain"] == domain and shown["status"] == "live", shown
                assert shown["live_deployment_id"] == site["latest_deployment_id"]

        # Again, with the API running: only the hosts (the database would be refused), and
        # nothing changes.
        again = sitefleet(platform, "restore", str(backup), "--hosts-only")
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("0 site(s) switched") == 2, again.stdout
        assert again.stdout.count("0 object(s) stored") == 2, again.stdout
        assert "nginx reloaded" not in again.stdout
        assert await pages(hosts, list(wanted)) == before

        # The control plane is lost after a site was deployed again: its hosts serve a
        # release the restored database does not know. Restore leaves it alone unless --yes.
        platform.start_service("deployer")
        async with platform.client(token) as api:
            shop = sites["shop.example"]["id"]
            patched = await api.patch(
                f"/v1/sites/{shop}", json={"params": landing_params("Changed after the backup")}
            )
            assert patched.status_code in (200, 202), patched.text
            dep = await wait_deployment(api, patched.json()["latest_deployment_id"])
            assert dep["status"] == "live", dep
        newer = await pages(hosts, list(wanted))
        assert newer != before
        for service in ("api", "deployer"):
            platform.stop_service(service)
        lost = sitefleet(platform, "restore", str(backup), "--db-only", "--yes")
        assert lost.returncode == 0, lost.stderr
        kept = sitefleet(platform, "restore", str(backup), "--hosts-only")
        assert kept.returncode == 1 and "shop.example" in kept.stderr, kept.stderr
        assert "app.example" not in kept.stderr
        assert await pages(hosts, list(wanted)) == newer
        switched = sitefleet(platform, "restore", str(backup), "--hosts-only", "--yes")
        assert switched.returncode == 0, switched.stderr
        assert switched.stdout.count("1 site(s) switched") == 2, switched.stdout
        assert await pages(hosts, list(wanted)) == before
    finally:
        procs.stop(second_proc)  # type: ignore[arg-type]
        shutil.rmtree(root, ignore_errors=True)


async def test_an_older_backup_goes_into_a_new_database_and_is_migrated(
    run_id: str, tmp_path: Path
) -> None:
    """No web host registered: the settings' local host is backed up. The backup comes from
    an older schema: restored into a database that does not exist yet, then migrated; a
    second restore needs --yes; a backup from a schema this code does not know is refused."""
    name = f"sitefleet_test_{run_id}_backup_old"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{url}/{name}"
    env = {
        **os.environ,
        "SITEFLEET_DATABASE_URL": url,
        "SITEFLEET_SITES_ROOT": str(tmp_path),
        "COLUMNS": "120",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [".venv/bin/sitefleet", *args]
        return subprocess.run(argv, text=True, capture_output=True, env=env, timeout=300)

    async def revision() -> str:
        conn = await asyncpg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        try:
            return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
        finally:
            await conn.close()

    try:
        await asyncio.to_thread(upgrade, url, "0006")
        backup = tmp_path / "old-backup"
        code, shown = on_terminal([".venv/bin/sitefleet", "backup", "--output", str(backup)], env)
        assert code == 0, shown
        assert "backed up web host local" in shown  # the progress bar, on a terminal
        manifest = json.loads((backup / "manifest.json").read_text())
        assert manifest["alembic_revision"] == "0006"
        assert [(h["name"], h["id"], h["status"]) for h in manifest["hosts"]] == [
            ("local", None, "ok")
        ]
        await drop_database(name)

        restored = cli("restore", str(backup))
        assert restored.returncode == 0, restored.stderr
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert f"migrated to {head}" in restored.stdout
        assert await revision() == head

        again = cli("restore", str(backup), "--db-only")
        assert again.returncode == 1 and "--yes" in again.stderr, again.stderr
        assert await revision() == head
        again = cli("restore", str(backup), "--db-only", "--yes")
        assert again.returncode == 0, again.stderr
        assert await revision() == head

        manifest["alembic_revision"] = "9999"
        (backup / "manifest.json").write_text(json.dumps(manifest))
        newer = cli("restore", str(backup), "--db-only", "--yes")
        assert newer.returncode == 1 and "unknown to this Sitefleet" in newer.stderr
    finally:
        await drop_database(name)
