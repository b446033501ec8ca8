"""A small client for the PowerDNS Authoritative HTTP API: zones and atomic RRset changes.

Errors (shared/errors.py):
    connection error, timeout      -> Unavailable (a Transient)   code dns_provider_unavailable
    HTTP 5xx, 429                  -> Transient                   code dns_provider_error
    other HTTP 4xx                 -> Permanent                   code dns_provider_rejected
except the expected ones: 404 from ``get_zone`` (None) and ``delete_zone`` (already gone),
409 from ``create_zone`` (already exists).

One writer per PowerDNS backend: with the sqlite3 backend two concurrent writers get HTTP
500 "database is locked" on about a third of their calls (DESIGN.md §5). Inside a process,
every write to one API URL goes through one ``asyncio.Lock``; across processes the DNS jobs
must be consumed by a single consumer with prefetch 1 (services/dns/__main__.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from services.dns.metrics import API_CALLS
from services.dns.provider import (
    ACCOUNT,
    ChangeErrors,
    RRsetChange,
    Zone,
    ZoneRRset,
    marker_text,
    owner_in,
)
from services.dns.records import RRset, make_rrset
from services.dns.settings import DnsSettings
from shared.errors import Invalid, Permanent, Transient, Unavailable

# Writes are serialized per API URL for the whole process (see the module docstring).
_write_locks: dict[str, asyncio.Lock] = {}


def change_json(change: RRsetChange) -> dict[str, Any]:
    """One item of a PowerDNS PATCH body."""
    rrset = change.rrset
    body: dict[str, Any] = {"name": rrset.name, "type": rrset.type, "changetype": change.changetype}
    if change.changetype == "REPLACE":
        body["ttl"] = rrset.ttl
        body["records"] = [{"content": c, "disabled": False} for c in rrset.contents]
        body["comments"] = [{"content": marker_text(change.owner), "account": ACCOUNT}]
    return body


def owner_of(comments: list[dict[str, Any]]) -> str | None:
    for comment in comments:
        if comment.get("account") == ACCOUNT:
            owner = owner_in(str(comment.get("content", "")))
            if owner is not None:
                return owner
    return None


def parse_zone(data: dict[str, Any]) -> Zone:
    rrsets: dict[tuple[str, str], ZoneRRset] = {}
    for raw in data.get("rrsets", []):
        records = raw.get("records", [])
        rrset = make_rrset(
            raw["name"],
            raw["type"],
            int(raw.get("ttl", 0)),
            [r["content"] for r in records if not r.get("disabled")],
        )
        rrsets[rrset.key] = ZoneRRset(
            rrset=rrset,
            owner=owner_of(raw.get("comments", [])),
            has_disabled=any(r.get("disabled") for r in records),
        )
    return Zone(
        name=data["name"],
        kind=data.get("kind", ""),
        account=data.get("account", ""),
        rrsets=rrsets,
    )


class PowerDnsClient:
    """The ``powerdns`` DNS provider (services/dns/provider.py)."""

    name = "powerdns"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_url: str,
        api_key: str,
        server_id: str = "localhost",
        timeout: float = 10.0,
    ) -> None:
        self.http = http
        self.base = f"{api_url.rstrip('/')}/api/v1/servers/{server_id}"
        self._headers = {"X-API-Key": api_key, "Accept": "application/json"}
        self._timeout = timeout
        self._lock = _write_locks.setdefault(self.base, asyncio.Lock())
        # Zones as last read, with the SOA serial they had: PowerDNS bumps the serial on
        # every API edit (soa_edit_api DEFAULT), so an unchanged serial means an unchanged
        # zone and the sweep skips re-reading it (``zone_versions``).
        self._seen: dict[str, tuple[int, Zone]] = {}

    @classmethod
    def from_settings(cls, http: httpx.AsyncClient, settings: DnsSettings) -> PowerDnsClient:
        return cls(
            http,
            api_url=settings.pdns_api_url,
            api_key=settings.pdns_api_key,
            server_id=settings.pdns_server_id,
            timeout=settings.pdns_timeout,
        )

    async def get_zone(self, name: str, *, version: int | None = None) -> Zone | None:
        """The zone, or None; with ``version`` (a serial from ``zone_versions``) the copy
        read at that serial is returned without asking PowerDNS again."""
        seen = self._seen.get(name)
        if version is not None and seen is not None and seen[0] == version:
            return seen[1]
        response = await self._request("GET", f"/zones/{name}", expected=(404,))
        if response.status_code == 404:
            self._seen.pop(name, None)
            return None
        return self._remember(response.json())

    async def zone_versions(self) -> dict[str, int]:
        """Every zone's SOA serial, in one call."""
        response = await self._request("GET", "/zones")
        return {z["name"]: int(z.get("serial") or 0) for z in response.json()}

    def _remember(self, data: dict[str, Any]) -> Zone:
        zone = parse_zone(data)
        self._seen[zone.name] = (int(data.get("serial") or 0), zone)
        return zone

    async def create_zone(
        self,
        name: str,
        *,
        nameservers: Sequence[str],
        account: str = ACCOUNT,
        negative_ttl: int = 300,
        changes: Sequence[RRsetChange] = (),
    ) -> bool:
        """Create a Native zone holding ``changes``' RRsets (one write for a new site);
        False when it already exists (whoever created it; ``changes`` are not applied)."""
        if not nameservers:
            raise Invalid(f"zone {name} needs at least one nameserver (settings.nameservers)")
        soa = f"{nameservers[0]} hostmaster.{name} 1 10800 3600 604800 {negative_ttl}"
        body = {
            "name": name,
            "kind": "Native",
            "nameservers": list(nameservers),
            "account": account,
            # Our own SOA instead of the "a.misconfigured.dns.server.invalid" default; the
            # serial is bumped by PowerDNS on every API edit (soa_edit_api DEFAULT).
            "rrsets": [
                {
                    "name": name,
                    "type": "SOA",
                    "ttl": 3600,
                    "records": [{"content": soa, "disabled": False}],
                }
            ]
            + [
                {k: v for k, v in change_json(c).items() if k != "changetype"}
                for c in changes
                if c.changetype == "REPLACE"
            ],
        }
        async with self._lock:
            response = await self._request("POST", "/zones", json=body, expected=(409,))
        if response.status_code == 409:
            return False
        self._remember(response.json())
        return True

    async def create_zone_with(
        self,
        name: str,
        changes: Sequence[RRsetChange],
        *,
        nameservers: Sequence[str],
        negative_ttl: int = 300,
    ) -> ChangeErrors | None:
        """One POST creates the zone with its RRsets: a new site costs one write."""
        created = await self.create_zone(
            name, nameservers=nameservers, negative_ttl=negative_ttl, changes=changes
        )
        return {} if created else None

    def compile(self, rrsets: Sequence[RRset]) -> list[RRset]:
        """PowerDNS serves our records as they are (ALIAS with ``expand-alias``)."""
        return list(rrsets)

    async def apply_changes(self, zone: str, changes: Sequence[RRsetChange]) -> ChangeErrors:
        """One atomic PATCH: all changes are written, or the call raises."""
        await self.patch_rrsets(zone, changes)
        return {}

    async def patch_rrsets(self, zone: str, changes: Sequence[RRsetChange]) -> None:
        """All changes of one zone in one PATCH: PowerDNS applies them atomically."""
        if not changes:
            return
        # Deletions first, so a replaced type at the same name never conflicts with them.
        ordered = sorted(changes, key=lambda c: c.changetype != "DELETE")
        self._seen.pop(zone, None)
        async with self._lock:
            await self._request(
                "PATCH", f"/zones/{zone}", json={"rrsets": [change_json(c) for c in ordered]}
            )

    async def delete_zone(self, name: str) -> None:
        self._seen.pop(name, None)
        async with self._lock:
            await self._request("DELETE", f"/zones/{name}", expected=(404,))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        expected: tuple[int, ...] = (),
    ) -> httpx.Response:
        try:
            response = await self.http.request(
                method, self.base + path, json=json, headers=self._headers, timeout=self._timeout
            )
        except httpx.TransportError as exc:
            API_CALLS.labels(self.name, "unreachable").inc()
            raise Unavailable(
                f"PowerDNS API unreachable ({method} {path}): {type(exc).__name__}: {exc}",
                code="dns_provider_unavailable",
            ) from exc
        status = response.status_code
        API_CALLS.labels(self.name, str(status)).inc()
        if status < 400 or status in expected:
            return response
        message = f"PowerDNS {method} {path} -> HTTP {status}: {_error_text(response)}"
        details = {"status": status}
        if status >= 500 or status == 429:
            error = Transient(message, code="dns_provider_error", details=details)
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.isdigit():
                error.retry_after = float(retry_after)
            raise error
        raise Permanent(message, code="dns_provider_rejected", details=details)


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])[:500]
    return response.text[:500]
