"""``make run``: the whole platform on this machine, with a demo site.

Starts a private nginx and PowerDNS (state under var/), migrates the database, runs the five
services, creates the demo tenant, brings and verifies the demo domain and creates the demo
site through the public API, prints how to look at it, and stops everything it started on
Ctrl-C. Domain ownership is enforced as in production: the runner plays the demo domain's
DNS host, publishing the challenge TXT record in the local PowerDNS.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import httpx
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console

from cli.devstack import procs
from cli.devstack.nginx import nginx_command, start_nginx
from cli.devstack.pdns import start_pdns
from services.api import identity
from shared.db import create_engine, create_sessionmaker
from shared.migrate import upgrade
from shared.settings import PROJECT_ROOT

console = Console(soft_wrap=True, highlight=False)
SERVICES = ("api", "deployer", "dns", "notifier", "certs")
DEMO_TENANT = "demo"
DEMO_DOMAIN = "demo.sitefleet.test"
CDN_ZONE = "cdn.sitefleet.test"


class DevSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/sitefleet"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    api_port: int = 8000
    http_port: int = 8080
    https_port: int = 8443
    hsts_max_age: int = 0
    dns_port: int = 5354
    pdns_api_port: int = 8081
    pdns_api_key: str = "sitefleet-dev-key"
    var_dir: Path = PROJECT_ROOT / "var"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # Like the servers themselves: connections in TIME_WAIT do not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def _ensure_database(url: str) -> None:
    base, name = url.replace("postgresql+asyncpg://", "postgresql://").rsplit("/", 1)
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        if not await conn.fetchval("select 1 from pg_database where datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _demo_token(url: str) -> str:
    engine = create_engine(url, application_name="sitefleet-dev", pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            tenant = await identity.get_tenant_by_name(session, DEMO_TENANT)
            if tenant is None:
                tenant = await identity.create_tenant(session, DEMO_TENANT)
            _, secret = await identity.create_token(session, tenant.id, f"make run {time.ctime()}")
            return secret
    finally:
        await engine.dispose()


def _wait_ready(
    api: str, procs_by_name: dict[str, subprocess.Popen[bytes]], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs_by_name.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see var/log/{name}.log")
        try:
            if httpx.get(f"{api}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the API did not become ready; see var/log/api.log")


def _enable_broker_plugins() -> None:
    """The management UI is how ops watch the queues; enabling is idempotent. Needs the
    broker on this machine (and root); elsewhere enable it where the broker runs."""
    try:
        subprocess.run(
            [
                "rabbitmq-plugins",
                "enable",
                "--quiet",
                "rabbitmq_management",
                "rabbitmq_consistent_hash_exchange",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        console.print(f"[yellow]could not enable the RabbitMQ management plugin: {exc}[/]")


def _demo_domain(api: str, token: str, pdns_api: str, pdns_key: str) -> None:
    """Bring the demo domain and prove we own it, the way a customer would: publish the
    challenge TXT record at the domain's DNS host (here: the local PowerDNS), then verify."""
    headers = {"Authorization": f"Bearer {token}"}
    found = httpx.get(f"{api}/v1/domains/{DEMO_DOMAIN}", headers=headers)
    if found.status_code == 404:
        found = httpx.post(
            f"{api}/v1/domains",
            headers=headers,
            json={"name": DEMO_DOMAIN, "bring_your_own": True},
        )
    found.raise_for_status()
    domain = found.json()
    if domain["status"] == "active":
        return
    challenge = domain["verification"]
    zones = f"{pdns_api}/api/v1/servers/localhost/zones"
    pdns = {"X-API-Key": pdns_key}
    zone = httpx.post(
        zones,
        headers=pdns,
        json={
            "name": f"{DEMO_DOMAIN}.",
            "kind": "Native",
            "nameservers": challenge["nameservers"],
        },
    )
    if zone.status_code != 409:  # already there from an earlier run
        zone.raise_for_status()
    httpx.patch(
        f"{zones}/{DEMO_DOMAIN}.",
        headers=pdns,
        json={
            "rrsets": [
                {
                    "name": f"{challenge['txt_name']}.",
                    "type": "TXT",
                    "ttl": 300,
                    "changetype": "REPLACE",
                    "records": [{"content": f'"{challenge["txt_value"]}"', "disabled": False}],
                }
            ]
        },
    ).raise_for_status()
    verified = httpx.post(f"{api}/v1/domains/{DEMO_DOMAIN}/verify", headers=headers)
    verified.raise_for_status()
    if verified.json()["status"] != "active":
        raise RuntimeError(f"the demo domain did not verify: {verified.json()['failure']}")


def _demo_site(api: str, token: str) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    sites = httpx.get(f"{api}/v1/sites", headers=headers, params={"limit": 500}).json()
    site = next((s for s in sites["items"] if s["domain"] == DEMO_DOMAIN), None)
    if site is None:
        response = httpx.post(
            f"{api}/v1/sites",
            headers=headers,
            json={
                "domain": DEMO_DOMAIN,
                "template": "landing",
                "params": {
                    "title": "Sitefleet demo",
                    "tagline": "A site built from a template, deployed atomically, with DNS.",
                    "contact_email": "hello@demo.sitefleet.test",
                    "sections": [
                        {
                            "heading": "Built in isolation",
                            "body": "Every deployment renders in its own work directory.",
                        },
                        {
                            "heading": "Switched atomically",
                            "body": "A symlink swap makes the new release live: no nginx reload.",
                        },
                        {
                            "heading": "DNS done right",
                            "body": "proxy A, apex ALIAS, www and media CNAMEs, verified.",
                        },
                    ],
                },
            },
        )
        response.raise_for_status()
        site = response.json()
    deadline = time.monotonic() + 60
    while site["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.3)
        site = httpx.get(f"{api}/v1/sites/{site['id']}", headers=headers).json()
    return dict(site)


def _stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    threads = [threading.Thread(target=procs.stop, args=(proc,)) for proc in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run() -> int:
    s = DevSettings()
    var = s.var_dir
    for name, port in (
        ("API", s.api_port),
        ("nginx", s.http_port),
        ("nginx TLS", s.https_port),
        ("PowerDNS", s.dns_port),
        ("PowerDNS API", s.pdns_api_port),
    ):
        if not _port_free(port):
            console.print(
                f"[red]port {port} ({name}) is in use[/] - is another `make run` "
                "running? Stop it, or choose other ports (see README)."
            )
            return 1
    components: list[subprocess.Popen[bytes]] = []  # nginx, PowerDNS
    services: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # rabbitmq-plugins takes seconds (an Erlang node of its own starts) and nothing else
    # waits on it: it runs while the rest starts, and is done before the banner.
    plugins = threading.Thread(target=_enable_broker_plugins, name="rabbitmq-plugins")
    try:
        console.print("[bold]Sitefleet[/] starting…")
        plugins.start()
        asyncio.run(_ensure_database(s.database_url))
        upgrade(s.database_url)
        sites_root = var / "www" / "sites"
        components.append(
            start_nginx(
                var / "nginx",
                port=s.http_port,
                sites_root=sites_root,
                https_port=s.https_port,
                hsts_max_age=s.hsts_max_age,
            )
        )
        components.append(
            start_pdns(
                var / "pdns", dns_port=s.dns_port, api_port=s.pdns_api_port, api_key=s.pdns_api_key
            )
        )
        env = {
            "SITEFLEET_DATABASE_URL": s.database_url,
            "SITEFLEET_AMQP_URL": s.amqp_url,
            "SITEFLEET_API_PORT": str(s.api_port),
            "SITEFLEET_HTTP_PORT": str(s.http_port),
            "SITEFLEET_HTTPS_PORT": str(s.https_port),
            "SITEFLEET_DNS_PORT": str(s.dns_port),
            "SITEFLEET_SITES_ROOT": str(sites_root),
            "SITEFLEET_NGINX_COMMAND": json.dumps(nginx_command(var / "nginx")),
            "SITEFLEET_WORK_ROOT": str(var / "work"),
            "SITEFLEET_PDNS_API_URL": f"http://127.0.0.1:{s.pdns_api_port}",
            "SITEFLEET_PDNS_API_KEY": s.pdns_api_key,
            "SITEFLEET_LOCAL_CDN_ZONE": CDN_ZONE,
            # Brought domains are checked against the local PowerDNS (the demo domain's
            # "DNS host"); a real install leaves this empty (the system resolver).
            "SITEFLEET_DOMAIN_RESOLVER": f"127.0.0.1:{s.dns_port}",
        }
        for name in SERVICES:
            services[name] = procs.start(
                [sys.executable, "-m", f"services.{name}"],
                log=var / "log" / f"{name}.log",
                env=env,
                cwd=PROJECT_ROOT,
            )
        api = f"http://127.0.0.1:{s.api_port}"
        _wait_ready(api, services)
        token = asyncio.run(_demo_token(s.database_url))
        _demo_domain(api, token, f"http://127.0.0.1:{s.pdns_api_port}", s.pdns_api_key)
        site = _demo_site(api, token)
        plugins.join()
        dig = f"dig @127.0.0.1 -p {s.dns_port} +noall +answer"
        console.print(f"""
[bold green]Sitefleet is running.[/]  Demo site [bold]{DEMO_DOMAIN}[/] is {site["status"]}.

  API        {api}   (docs: {api}/docs)
  token      {token}   (tenant "{DEMO_TENANT}", shown once)
  the site   curl -H 'Host: {DEMO_DOMAIN}' http://127.0.0.1:{s.http_port}/
  HTTPS      nginx also listens on 127.0.0.1:{s.https_port} with TLS; the demo has no
             certificate (the handshake fails) unless ACME is configured, then:
             curl --resolve {DEMO_DOMAIN}:{s.https_port}:127.0.0.1 https://{DEMO_DOMAIN}:{s.https_port}/
  its DNS    {dig} proxy.{DEMO_DOMAIN} A
             {dig} {DEMO_DOMAIN} A        (apex ALIAS, expanded)
             {dig} www.{DEMO_DOMAIN} CNAME
             {dig} media.{DEMO_DOMAIN} CNAME
  try        curl -H 'Authorization: Bearer {token}' {api}/v1/sites
             curl -H 'Authorization: Bearer {token}' {api}/v1/domains
  RabbitMQ   http://127.0.0.1:15672   (management UI, guest/guest)
  logs       {var}/log/

Press Ctrl-C to stop.""")
        while not stopping:
            for name, proc in services.items():
                if proc.poll() is not None:
                    console.print(
                        f"[red]{name} exited with {proc.returncode}[/]; see {var}/log/{name}.log"
                    )
                    return 1
            time.sleep(0.5)
        return 0
    except Exception as exc:
        console.print(f"[red]could not start: {exc}[/]")
        return 1
    finally:
        console.print("stopping…")
        # The services side by side (each drains for a while on SIGTERM), then nginx and
        # PowerDNS, which their last jobs may still need.
        _stop_all(list(services.values()))
        _stop_all(components)
        if plugins.ident is not None:
            plugins.join()
