"""The ``cdn`` provider interface: where a site's apex/``www``/``media`` names point, what
must exist at the CDN for them to work, and purging a site's cached pages.

    static      hostname patterns from settings (the default; nothing to create or purge)
    bunny       a pull zone per site pulling from ``proxy.<domain>`` (services/dns/bunny.py)
    cloudflare  the site's records proxied by Cloudflare; purge by URL or host
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import httpx

from services.dns.records import CdnTargets, edge_hostname, media_hostname, zone_of
from services.dns.settings import DnsSettings
from shared.domains import normalize_domain


class CdnProvider(Protocol):
    # "static" | "bunny" | "cloudflare": the label of its metrics.
    name: str

    def targets(self, domain: str) -> CdnTargets: ...

    async def ensure_site(self, domain: str) -> None:
        """Create whatever the CDN needs before DNS points at it (idempotent)."""
        ...

    async def purge(self, domain: str, paths: Sequence[str] | None) -> None:
        """Drop the cached copies of ``paths`` (site paths, "/blog/"); None: the whole site."""
        ...

    async def remove_site(self, domain: str) -> None: ...


def site_urls(domain: str, paths: Sequence[str], scheme: str = "https") -> list[str]:
    """Every public URL of ``paths``: on the apex and on ``www``."""
    host = normalize_domain(domain)
    return [
        f"{scheme}://{name}{path if path.startswith('/') else '/' + path}"
        for name in (host, f"www.{host}")
        for path in paths
    ]


def site_hosts(domain: str) -> list[str]:
    host = normalize_domain(domain)
    return [host, f"www.{host}"]


class StaticCdn:
    """Hostnames from settings patterns; the CDN behind them is configured elsewhere."""

    name = "static"

    def __init__(self, settings: DnsSettings) -> None:
        self.settings = settings

    def targets(self, domain: str) -> CdnTargets:
        return CdnTargets(
            edge_hostname(domain, self.settings), media_hostname(domain, self.settings)
        )

    async def ensure_site(self, domain: str) -> None:
        return None

    async def purge(self, domain: str, paths: Sequence[str] | None) -> None:
        return None

    async def remove_site(self, domain: str) -> None:
        return None


def origin_hostname(domain: str) -> str:
    """The name the CDN pulls from (``proxy.<domain>``, published by the DNS service)."""
    return "proxy." + zone_of(domain)


def open_cdn_provider(http: httpx.AsyncClient, settings: DnsSettings) -> CdnProvider:
    # Imported here: each provider module imports this one for its helpers.
    if settings.cdn_provider == "bunny":
        from services.dns.bunny import BunnyCdn

        return BunnyCdn.from_settings(http, settings)
    if settings.cdn_provider == "cloudflare":
        from services.dns.cloudflare import CloudflareCdn, CloudflareClient

        return CloudflareCdn(CloudflareClient.from_settings(http, settings), settings)
    return StaticCdn(settings)
