"""The ``bunny`` CDN provider: one bunny.net pull zone per site, pulling from
``proxy.<domain>``, serving the site's hostnames; purge by URL.

bunny.net API (``AccessKey`` header): ``GET /pullzone?search=``, ``POST /pullzone``,
``POST /pullzone/{id}/addHostname``, ``DELETE /pullzone/{id}``, ``POST /purge?url=``.
Errors: unreachable -> Unavailable, 429/5xx -> Transient, other 4xx -> Permanent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from services.dns.cdn import origin_hostname, site_hosts, site_urls
from services.dns.metrics import API_CALLS, PURGES, RATE_LIMITED
from services.dns.records import CdnTargets
from services.dns.settings import DnsSettings
from shared.domains import domain_slug, normalize_domain
from shared.errors import Invalid, Permanent, Transient, Unavailable


class BunnyCdn:
    name = "bunny"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_url: str,
        api_key: str,
        prefix: str = "sf-",
        cdn_domain: str = "b-cdn.net",
        scheme: str = "https",
        timeout: float = 10.0,
    ) -> None:
        self.http = http
        self.base = api_url.rstrip("/")
        self._headers = {"AccessKey": api_key, "Accept": "application/json"}
        self.prefix = prefix
        self.cdn_domain = cdn_domain
        self.scheme = scheme
        self._timeout = timeout

    @classmethod
    def from_settings(cls, http: httpx.AsyncClient, settings: DnsSettings) -> BunnyCdn:
        if not settings.bunny_api_key:
            raise Invalid("cdn_provider=bunny needs SITEFLEET_BUNNY_API_KEY")
        return cls(
            http,
            api_url=settings.bunny_api_url,
            api_key=settings.bunny_api_key,
            prefix=settings.bunny_pull_zone_prefix,
            cdn_domain=settings.bunny_cdn_domain,
            scheme=settings.cdn_purge_scheme,
        )

    def pull_zone_name(self, domain: str) -> str:
        return self.prefix + domain_slug(normalize_domain(domain))

    def targets(self, domain: str) -> CdnTargets:
        edge = f"{self.pull_zone_name(domain)}.{self.cdn_domain}"
        return CdnTargets(edge=edge, media=edge)

    async def ensure_site(self, domain: str) -> None:
        zone = await self._find(domain)
        if zone is None:
            response = await self._request(
                "POST",
                "/pullzone",
                json={
                    "Name": self.pull_zone_name(domain),
                    "OriginUrl": f"http://{origin_hostname(domain).rstrip('.')}",
                },
            )
            zone = response.json()
        have = {str(h.get("Value", "")).lower() for h in zone.get("Hostnames") or []}
        for host in site_hosts(domain):
            if host not in have:
                await self._request(
                    "POST", f"/pullzone/{zone['Id']}/addHostname", json={"Hostname": host}
                )

    async def purge(self, domain: str, paths: Sequence[str] | None) -> None:
        # A whole-site purge is the wildcard URL bunny.net documents ("/*").
        for url in site_urls(domain, paths if paths is not None else ["/*"], self.scheme):
            await self._request("POST", "/purge", params={"url": url, "async": "false"})
        PURGES.labels(self.name).inc()

    async def remove_site(self, domain: str) -> None:
        zone = await self._find(domain)
        if zone is not None:
            await self._request("DELETE", f"/pullzone/{zone['Id']}", expected=(404,))

    async def _find(self, domain: str) -> dict[str, Any] | None:
        name = self.pull_zone_name(domain)
        page = 0
        while True:
            response = await self._request(
                "GET", "/pullzone", params={"search": name, "page": page, "perPage": 100}
            )
            data = response.json()
            items = data.get("Items", []) if isinstance(data, dict) else data
            for zone in items:
                if zone.get("Name") == name:
                    return dict(zone)
            if not (isinstance(data, dict) and data.get("HasMoreItems")):
                return None
            page += 1

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        expected: tuple[int, ...] = (),
    ) -> httpx.Response:
        try:
            response = await self.http.request(
                method,
                self.base + path,
                json=json,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
            )
        except httpx.TransportError as exc:
            API_CALLS.labels(self.name, "unreachable").inc()
            raise Unavailable(
                f"bunny.net API unreachable ({method} {path}): {type(exc).__name__}: {exc}",
                code="cdn_provider_unavailable",
            ) from exc
        status = response.status_code
        API_CALLS.labels(self.name, str(status)).inc()
        if status < 400 or status in expected:
            return response
        message = f"bunny.net {method} {path} -> HTTP {status}: {response.text[:300]}"
        if status == 429:
            RATE_LIMITED.labels(self.name).inc()
        if status == 429 or status >= 500:
            raise Transient(message, code="cdn_provider_error", details={"status": status})
        raise Permanent(message, code="cdn_provider_rejected", details={"status": status})
