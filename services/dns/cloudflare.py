"""The ``cloudflare`` DNS provider: Cloudflare API v4 zones and DNS records.

Cloudflare holds records, not RRsets: we read every record of a zone (paginated), group
them into normalized RRsets, and turn RRset changes back into record operations sent with
``POST /zones/{id}/dns_records/batch`` in chunks of ``cloudflare_batch_size`` (200, the
Free plan's limit). A batch is one transaction: when Cloudflare refuses a chunk (4xx) we
send its operations one by one, so only the records it really refuses fail.

Form of our records there (the diff reads them back the same way, so it stays empty):
    an apex ALIAS is a CNAME, which Cloudflare flattens (never a raw apex CNAME elsewhere);
    ``proxied`` records have ``ttl = 1`` ("automatic"), as Cloudflare forces;
    the ownership marker is the record's ``comment``.

Errors (shared/errors.py):
    connection error, timeout      -> Unavailable                 code dns_provider_unavailable
    429 after waiting Retry-After  -> RateLimited                 (the job's retry ladder)
    HTTP 5xx                       -> Transient                   code dns_provider_error
    other HTTP 4xx                 -> Permanent                   code dns_provider_rejected
Every call first takes a token from the account's bucket (services/dns/ratelimit.py).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from services.dns.cdn import origin_hostname, site_hosts, site_urls
from services.dns.metrics import API_CALLS, PURGES, RATE_LIMITED
from services.dns.provider import ChangeErrors, RRsetChange, Zone, ZoneRRset, marker_text, owner_in
from services.dns.ratelimit import TokenBucket, bucket_for
from services.dns.records import (
    NAME_TYPES,
    CdnTargets,
    RRset,
    fqdn,
    make_rrset,
    normalize_content,
    zone_of,
)
from services.dns.settings import DnsSettings
from shared.errors import Invalid, NotFound, Permanent, RateLimited, Transient, Unavailable

# Record types Cloudflare can proxy.
PROXIABLE = frozenset({"A", "AAAA", "CNAME"})
# TTL 1 means "automatic" to Cloudflare; proxied records always have it.
AUTO_TTL = 1
# What Cloudflare answers a request it refuses for its content (not for auth or load).
REFUSALS = frozenset({400, 409, 422})
# 429s answered in place (waiting Retry-After) before the job's retry ladder takes over.
MAX_429_WAITS = 5


def retry_after_seconds(response: httpx.Response, default: float = 1.0) -> float:
    value = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    errors = data.get("errors") if isinstance(data, dict) else None
    if errors:
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)[:500]
    return response.text[:500]


@dataclass(frozen=True)
class _Op:
    """One record operation of a batch, for the RRset it belongs to."""

    kind: str  # "deletes" | "puts" | "posts"
    key: tuple[str, str]
    record_id: str | None = None
    body: dict[str, Any] | None = None

    def batch_item(self) -> dict[str, Any]:
        if self.kind == "deletes":
            return {"id": self.record_id}
        if self.kind == "puts":
            return {"id": self.record_id, **(self.body or {})}
        return dict(self.body or {})


class CloudflareClient:
    """The ``cloudflare`` DNS provider (services/dns/provider.py)."""

    name = "cloudflare"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_url: str,
        api_token: str,
        account_id: str = "",
        bucket: TokenBucket,
        batch_size: int = 200,
        max_retry_after: float = 60.0,
        timeout: float = 10.0,
    ) -> None:
        self.http = http
        self.base = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_token}", "Accept": "application/json"}
        self.account_id = account_id
        self.bucket = bucket
        self.batch_size = batch_size
        self.max_retry_after = max_retry_after
        self._timeout = timeout
        self._zone_ids: dict[str, str] = {}
        # Raw records per zone and RRset key, from the last read: the ids a change needs.
        self._records: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {}

    @classmethod
    def from_settings(cls, http: httpx.AsyncClient, settings: DnsSettings) -> CloudflareClient:
        if not settings.cloudflare_api_token:
            raise Invalid("dns_provider=cloudflare needs SITEFLEET_CLOUDFLARE_API_TOKEN")
        # The limit is per user: one bucket per token, named by its hash (never the token).
        account = "cloudflare:" + hashlib.sha256(settings.cloudflare_api_token.encode()).hexdigest()
        return cls(
            http,
            api_url=settings.cloudflare_api_url,
            api_token=settings.cloudflare_api_token,
            account_id=settings.cloudflare_account_id,
            bucket=bucket_for(
                account[:24],
                calls=settings.cloudflare_rate_calls,
                per_seconds=settings.cloudflare_rate_period,
            ),
            batch_size=settings.cloudflare_batch_size,
            max_retry_after=settings.cloudflare_max_retry_after,
            timeout=settings.cloudflare_timeout,
        )

    # --- the provider interface ----------------------------------------------------------

    def compile(self, rrsets: Sequence[RRset]) -> list[RRset]:
        compiled = []
        for rrset in rrsets:
            rtype = "CNAME" if rrset.type == "ALIAS" else rrset.type  # flattened at the apex
            proxied = bool(rrset.proxied) and rtype in PROXIABLE
            compiled.append(
                make_rrset(
                    rrset.name,
                    rtype,
                    AUTO_TTL if proxied else rrset.ttl,
                    rrset.contents,
                    proxied=proxied,
                )
            )
        return compiled

    async def zone_versions(self) -> dict[str, int]:
        return {}  # Cloudflare zones carry no version that follows record edits

    async def get_zone(self, name: str, *, version: int | None = None) -> Zone | None:
        zone_id = await self.zone_id(name)
        if zone_id is None:
            return None
        records = await self._list_records(zone_id)
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            grouped[(fqdn(record["name"]), str(record["type"]).upper())].append(record)
        self._records[fqdn(name)] = dict(grouped)
        rrsets = {}
        for (rname, rtype), group in grouped.items():
            owners = {owner_in(str(r.get("comment") or "")) for r in group}
            ttls = {int(r.get("ttl", AUTO_TTL)) for r in group}
            rrset = make_rrset(
                rname,
                rtype,
                ttls.pop() if len(ttls) == 1 else -1,  # mixed TTLs never equal a desired set
                [str(r["content"]) for r in group],
                proxied=all(bool(r.get("proxied")) for r in group),
            )
            # A set only part of which carries our marker is not ours to rewrite.
            rrsets[rrset.key] = ZoneRRset(rrset, owners.pop() if len(owners) == 1 else None)
        return Zone(name=fqdn(name), kind="cloudflare", account="", rrsets=rrsets)

    async def create_zone(
        self, name: str, *, nameservers: Sequence[str], negative_ttl: int = 300
    ) -> bool:
        """Cloudflare assigns its own nameservers; ``nameservers`` is ignored."""
        if await self.zone_id(name) is not None:
            return False
        if not self.account_id:
            raise NotFound(
                f"zone {name} is not in the Cloudflare account and no "
                "SITEFLEET_CLOUDFLARE_ACCOUNT_ID is set to create it",
                code="dns_zone_not_found",
            )
        body = {"name": name.rstrip("."), "account": {"id": self.account_id}, "type": "full"}
        response = await self._request("POST", "/zones", json=body)
        self._zone_ids[fqdn(name)] = response.json()["result"]["id"]
        self._records[fqdn(name)] = {}
        return True

    async def create_zone_with(
        self,
        name: str,
        changes: Sequence[RRsetChange],
        *,
        nameservers: Sequence[str],
        negative_ttl: int = 300,
    ) -> ChangeErrors | None:
        if not await self.create_zone(name, nameservers=nameservers, negative_ttl=negative_ttl):
            return None
        return await self.apply_changes(name, changes)

    async def apply_changes(self, zone: str, changes: Sequence[RRsetChange]) -> ChangeErrors:
        if not changes:
            return {}
        zone = fqdn(zone)
        zone_id = await self.zone_id(zone)
        if zone_id is None:
            raise NotFound(
                f"zone {zone} is not in the Cloudflare account", code="dns_zone_not_found"
            )
        if zone not in self._records:
            await self.get_zone(zone)
        ops = self._ops(self._records[zone], changes)
        errors: dict[tuple[str, str], str] = {}
        for start in range(0, len(ops), self.batch_size):
            chunk = ops[start : start + self.batch_size]
            refused = await self._send_batch(zone_id, chunk)
            if refused is not None:
                errors.update(await self._send_one_by_one(zone_id, chunk))
        self._records.pop(zone, None)  # ids changed: read again before the next change
        return errors

    async def delete_zone(self, name: str) -> None:
        zone_id = await self.zone_id(name)
        if zone_id is not None:
            await self._request("DELETE", f"/zones/{zone_id}", expected=(404,))
        self._zone_ids.pop(fqdn(name), None)
        self._records.pop(fqdn(name), None)

    # --- Cloudflare specifics ------------------------------------------------------------

    async def zone_id(self, name: str) -> str | None:
        name = fqdn(name)
        if name not in self._zone_ids:
            response = await self._request("GET", "/zones", params={"name": name.rstrip(".")})
            found = [z for z in response.json().get("result") or [] if fqdn(z["name"]) == name]
            if not found:
                return None
            self._zone_ids[name] = str(found[0]["id"])
        return self._zone_ids[name]

    async def _list_records(self, zone_id: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        page = 1
        while True:
            response = await self._request(
                "GET", f"/zones/{zone_id}/dns_records", params={"page": page, "per_page": 100}
            )
            data = response.json()
            records += data.get("result") or []
            info = data.get("result_info") or {}
            if page >= int(info.get("total_pages") or 1):
                return records
            page += 1

    def _ops(
        self,
        current: dict[tuple[str, str], list[dict[str, Any]]],
        changes: Sequence[RRsetChange],
    ) -> list[_Op]:
        """Record operations for RRset changes: a record whose content is still wanted is
        kept (rewritten in place with PUT when its TTL, proxying or comment differ), the
        others are deleted, and missing contents created. Nothing ever holds a content
        twice on the way, so Cloudflare's "identical record" check never trips."""
        ops: list[_Op] = []
        for change in changes:
            key = change.rrset.key
            wanted = set() if change.changetype == "DELETE" else set(change.rrset.contents)
            kept: set[str] = set()
            for record in current.get(key, []):
                content = normalize_content(change.rrset.type, str(record["content"]))
                if content in wanted and content not in kept:
                    kept.add(content)
                    body = self._body(change, content)
                    if any(record.get(k) != body[k] for k in ("ttl", "proxied", "comment")):
                        ops.append(_Op("puts", key, record["id"], body))
                else:
                    ops.append(_Op("deletes", key, record["id"]))
            ops += [_Op("posts", key, None, self._body(change, c)) for c in sorted(wanted - kept)]
        # Cloudflare runs deletes, patches, puts, posts in that order; keep ours the same
        # so a chunk and its one-by-one fallback do the same thing.
        order = {"deletes": 0, "puts": 1, "posts": 2}
        return sorted(ops, key=lambda op: order[op.kind])

    @staticmethod
    def _body(change: RRsetChange, content: str) -> dict[str, Any]:
        rrset = change.rrset
        return {
            "type": rrset.type,
            "name": rrset.name.rstrip("."),
            "content": content.rstrip(".") if rrset.type in NAME_TYPES else content,
            "ttl": rrset.ttl,
            "proxied": bool(rrset.proxied),
            "comment": marker_text(change.owner),
        }

    async def _send_batch(self, zone_id: str, chunk: Sequence[_Op]) -> str | None:
        """None when Cloudflare applied the whole chunk, else why it refused it."""
        body: dict[str, list[dict[str, Any]]] = {}
        for op in chunk:
            body.setdefault(op.kind, []).append(op.batch_item())
        response = await self._request(
            "POST", f"/zones/{zone_id}/dns_records/batch", json=body, refusable=True
        )
        return _error_text(response) if response.status_code >= 400 else None

    async def _send_one_by_one(
        self, zone_id: str, chunk: Sequence[_Op]
    ) -> dict[tuple[str, str], str]:
        errors: dict[tuple[str, str], str] = {}
        path = f"/zones/{zone_id}/dns_records"
        for op in chunk:
            if op.kind == "deletes":
                response = await self._request(
                    "DELETE", f"{path}/{op.record_id}", expected=(404,), refusable=True
                )
            elif op.kind == "puts":
                response = await self._request(
                    "PUT", f"{path}/{op.record_id}", json=op.body, refusable=True
                )
            else:
                response = await self._request("POST", path, json=op.body, refusable=True)
            if response.status_code >= 400 and response.status_code != 404:
                errors.setdefault(op.key, f"Cloudflare refused the record: {_error_text(response)}")
        return errors

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        expected: tuple[int, ...] = (),
        refusable: bool = False,
    ) -> httpx.Response:
        """One call (429s waited out up to ``MAX_429_WAITS`` times). ``refusable``: a 4xx
        is returned for the caller to judge instead of raised."""
        for _ in range(MAX_429_WAITS + 1):
            await self.bucket.acquire()
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
                    f"Cloudflare API unreachable ({method} {path}): {type(exc).__name__}: {exc}",
                    code="dns_provider_unavailable",
                ) from exc
            status = response.status_code
            API_CALLS.labels(self.name, str(status)).inc()
            if status != 429:
                break
            RATE_LIMITED.labels(self.name).inc()
            wait = retry_after_seconds(response)
            # The whole account waits, not just this call.
            self.bucket.pause(wait)
            if wait > self.max_retry_after:
                break
        if status < 400 or status in expected or (refusable and status in REFUSALS):
            return response
        message = f"Cloudflare {method} {path} -> HTTP {status}: {_error_text(response)}"
        if status == 429:
            raise RateLimited(message, retry_after=retry_after_seconds(response))
        if status >= 500:
            raise Transient(message, code="dns_provider_error", details={"status": status})
        raise Permanent(message, code="dns_provider_rejected", details={"status": status})


class CloudflareCdn:
    """The ``cloudflare`` CDN provider: Cloudflare itself is the edge. The apex, ``www``
    and ``media`` records are proxied and point at the origin ``proxy.<domain>``; purging
    goes through ``POST /zones/{id}/purge_cache``."""

    name = "cloudflare"

    def __init__(self, client: CloudflareClient, settings: DnsSettings) -> None:
        self.client = client
        self.scheme = settings.cdn_purge_scheme

    def targets(self, domain: str) -> CdnTargets:
        origin = origin_hostname(domain)
        return CdnTargets(edge=origin, media=origin, proxied=True)

    async def ensure_site(self, domain: str) -> None:
        return None  # the proxied records are the whole setup

    async def purge(self, domain: str, paths: Sequence[str] | None) -> None:
        zone_id = await self.client.zone_id(zone_of(domain))
        if zone_id is None:
            return  # nothing of the site is on Cloudflare: nothing cached
        if paths is None:
            bodies: list[dict[str, Any]] = [{"hosts": site_hosts(domain)}]
        else:
            urls = site_urls(domain, paths, self.scheme)
            # Cloudflare takes at most 30 URLs per purge call.
            bodies = [{"files": urls[i : i + 30]} for i in range(0, len(urls), 30)]
        for body in bodies:
            await self.client._request("POST", f"/zones/{zone_id}/purge_cache", json=body)
        PURGES.labels(self.name).inc()

    async def remove_site(self, domain: str) -> None:
        return None
