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
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from services.dns.records import RRset, make_rrset
from services.dns.settings import DnsSettings
from shared.errors import Invalid, Permanent, Transient, Unavailable

ACCOUNT = "sitefleet"
# The ownership marker is an RRset comment "managed-by sitefleet <owner>" whose account is
# ACCOUNT; ``owner`` is "site=<site id>" for a site's records.
MARKER = "managed-by sitefleet"

# Writes are serialized per API URL for the whole process (see the module docstring).
_write_locks: dict[str, asyncio.Lock] = {}


@dataclass(frozen=True)
class ZoneRRset:
    """An RRset as PowerDNS holds it: normalized contents plus who owns it."""

    rrset: RRset
    # The owner tag of our marker comment ("site=<id>"), or None when we did not write it.
    owner: str | None
    # True when some record of the set is disabled (then it does not serve what we want).
    has_disabled: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.rrset.key


@dataclass(frozen=True)
class Zone:
    name: str
    kind: str
    account: str
    rrsets: dict[tuple[str, str], ZoneRRset] = field(default_factory=dict)


@dataclass(frozen=True)
class RRsetChange:
    changetype: Literal["REPLACE", "DELETE"]
    rrset: RRset
    # For REPLACE: the owner tag written into the marker comment.
    owner: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.rrset.name,
            "type": self.rrset.type,
            "changetype": self.changetype,
        }
        if self.changetype == "REPLACE":
            body["ttl"] = self.rrset.ttl
            body["records"] = [{"content": c, "disabled": False} for c in self.rrset.contents]
            body["comments"] = [{"content": f"{MARKER} {self.owner}", "account": ACCOUNT}]
        return body


def owner_of(comments: list[dict[str, Any]]) -> str | None:
    for comment in comments:
        content = str(comment.get("content", ""))
        if comment.get("account") == ACCOUNT and content.startswith(MARKER + " "):
            return content[len(MARKER) + 1 :].strip()
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

    @classmethod
    def from_settings(cls, http: httpx.AsyncClient, settings: DnsSettings) -> PowerDnsClient:
        return cls(
            http,
            api_url=settings.pdns_api_url,
            api_key=settings.pdns_api_key,
            server_id=settings.pdns_server_id,
            timeout=settings.pdns_timeout,
        )

    async def get_zone(self, name: str) -> Zone | None:
        response = await self._request("GET", f"/zones/{name}", expected=(404,))
        if response.status_code == 404:
            return None
        return parse_zone(response.json())

    async def create_zone(
        self,
        name: str,
        *,
        nameservers: Sequence[str],
        account: str = ACCOUNT,
        negative_ttl: int = 300,
    ) -> bool:
        """Create a Native zone; False when it already exists (whoever created it)."""
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
            ],
        }
        async with self._lock:
            response = await self._request("POST", "/zones", json=body, expected=(409,))
        return response.status_code != 409

    async def patch_rrsets(self, zone: str, changes: Sequence[RRsetChange]) -> None:
        """All changes of one zone in one PATCH: PowerDNS applies them atomically."""
        if not changes:
            return
        # Deletions first, so a replaced type at the same name never conflicts with them.
        ordered = sorted(changes, key=lambda c: c.changetype != "DELETE")
        async with self._lock:
            await self._request(
                "PATCH", f"/zones/{zone}", json={"rrsets": [c.to_json() for c in ordered]}
            )

    async def delete_zone(self, name: str) -> None:
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
            raise Unavailable(
                f"PowerDNS API unreachable ({method} {path}): {type(exc).__name__}: {exc}",
                code="dns_provider_unavailable",
            ) from exc
        status = response.status_code
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
