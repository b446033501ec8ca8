"""The web hosts a site lives on, as the certs service checks them: where each answers
HTTP (the challenge) and TLS (the installed certificate), and its public addresses.

Reads ``site_hosts`` and ``web_hosts`` (written by the deployer) only. A site with no
placement lives on the local web host of settings, as the deployer does it."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.certs.settings import CertsSettings
from shared.models import SiteHost, WebHost


@dataclass(frozen=True)
class HostAddress:
    name: str
    http_host: str
    http_port: int
    # Its nginx's TLS listener at http_host.
    https_port: int
    public_addresses: tuple[str, ...]


async def site_hosts(
    session: AsyncSession, site_id: str, settings: CertsSettings
) -> list[HostAddress]:
    rows = (
        await session.scalars(
            select(WebHost)
            .join(SiteHost, SiteHost.host_id == WebHost.id)
            .where(SiteHost.site_id == site_id)
            .order_by(WebHost.name)
        )
    ).all()
    if rows:
        return [
            HostAddress(
                name=row.name,
                http_host=row.http_host,
                http_port=row.http_port,
                https_port=row.https_port or settings.https_port,
                public_addresses=tuple(str(a) for a in row.public_addresses or ()),
            )
            for row in rows
        ]
    return [
        HostAddress(
            name="local",
            http_host=settings.http_host,
            http_port=settings.http_port,
            https_port=settings.https_port,
            public_addresses=tuple(settings.web_host_addresses),
        )
    ]


async def challenge_served(
    http: httpx.AsyncClient, host: HostAddress, server_name: str, token: str, expected: str
) -> str | None:
    """None when ``host`` answers the key authorization for ``server_name``, else what it
    answered."""
    url = f"http://{_bracket(host.http_host)}:{host.http_port}/.well-known/acme-challenge/{token}"
    try:
        response = await http.get(url, headers={"Host": server_name})
    except httpx.HTTPError as exc:
        return f"{host.name}: {type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return f"{host.name}: HTTP {response.status_code}"
    if response.text.strip() != expected:
        return f"{host.name}: serves another key authorization"
    return None


async def served_certificate(host: HostAddress, server_name: str, *, within: float) -> bytes:
    """The DER of the leaf certificate ``host`` presents for ``server_name`` (SNI). Nothing
    is trusted here: the caller compares it with the certificate it issued."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            host.http_host, host.https_port, ssl=context, server_hostname=server_name.rstrip(".")
        ),
        within,
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), within)
        except (OSError, TimeoutError, ssl.SSLError):
            pass
    if not der:
        raise ConnectionError(f"{host.name}: no certificate presented")
    del reader
    return bytes(der)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
