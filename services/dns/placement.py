"""Where a site lives, as the DNS service needs it: the public addresses of its web hosts
(``site_hosts`` and ``web_hosts``, written by the deployer; read here only)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import SiteHost, WebHost


async def placed_addresses(session: AsyncSession, site_ids: Iterable[str]) -> dict[str, list[str]]:
    """Per site, the sorted public addresses of the web hosts it lives on; sites with no
    placement yet (or only hosts without public addresses) are absent."""
    ids = list(site_ids)
    if not ids:
        return {}
    rows = await session.execute(
        select(SiteHost.site_id, WebHost.public_addresses)
        .join(WebHost, WebHost.id == SiteHost.host_id)
        .where(SiteHost.site_id.in_(ids))
    )
    found: dict[str, set[str]] = {}
    for site_id, addresses in rows:
        found.setdefault(site_id, set()).update(str(a) for a in addresses or [])
    return {site_id: sorted(a) for site_id, a in found.items() if a}


async def site_addresses(session: AsyncSession, site_id: str) -> list[str] | None:
    """The site's web host addresses, or None to fall back to settings."""
    return (await placed_addresses(session, [site_id])).get(site_id)
