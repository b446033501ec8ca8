"""Reconciling a site's desired records with its DNS provider, recording and verifying them.

Per zone: read the RRsets, diff them at RRset level against the desired ones compiled for
the provider (normalized, so the plan right after an apply is empty), check the zone's
safety limits, write the changes (PowerDNS: one atomic PATCH; Cloudflare: batches), record
each record in ``dns_records`` (this service is its only writer), then check that they are
served: ``pending -> applied -> verified`` or ``error``.

Ownership: we create or replace an RRset only when it is absent or carries our marker
comment for this site, and delete only RRsets marked as ours. Anything else at one of our
names is left alone and the records it blocks are marked ``error``.

Transactions belong to the caller: these functions never commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import and_, bindparam, delete, func, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.dns.placement import site_addresses
from services.dns.provider import (
    ACCOUNT,
    ChangeErrors,
    DnsProvider,
    RRsetChange,
    Zone,
    ZoneRRset,
)
from services.dns.records import (
    ACME_LABEL,
    CdnTargets,
    RRset,
    desired_rrsets,
    is_acme_challenge,
    zone_of,
)
from services.dns.safety import check_zone_limits
from services.dns.settings import DnsSettings
from services.dns.verification import RecordVerifier, verifier_for
from shared.errors import Transient
from shared.models import DnsRecord


class DnsNotVerified(Transient):
    """Applied, but the authoritative server does not serve it yet: retry the job later.

    Raised after the ``applied`` rows are flushed; a caller that wants them kept commits
    before letting this propagate (services/dns/consumer.py does).
    """

    code = "dns_not_verified"


@dataclass(frozen=True)
class Blocked:
    """A desired RRset we may not write because someone else owns its name."""

    rrset: RRset
    reason: str


@dataclass(frozen=True)
class Plan:
    zone: str
    desired: tuple[RRset, ...]
    # Absent or ours but different: written with REPLACE.
    replace: tuple[RRset, ...]
    # Ours (this owner's marker) but no longer desired.
    delete: tuple[RRset, ...]
    blocked: tuple[Blocked, ...]
    # The contents of the RRsets this owner held in the zone when planned (for the change
    # ratio of the safety limits).
    owned_contents: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    @property
    def owned(self) -> int:
        return len(self.owned_contents)

    def changes(self, owner: str) -> list[RRsetChange]:
        """The PATCH items; written RRsets carry ``owner``'s marker comment."""
        return [RRsetChange("DELETE", r) for r in self.delete] + [
            RRsetChange("REPLACE", r, owner=owner) for r in self.replace
        ]

    @property
    def is_empty(self) -> bool:
        return not self.replace and not self.delete


@dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    verified: tuple[RRset, ...]

    @property
    def blocked(self) -> tuple[Blocked, ...]:
        return self.plan.blocked


def site_owner(site_id: str) -> str:
    return f"site={site_id}"


def _excludes(a: str, b: str) -> bool:
    """Whether RRsets of types ``a`` and ``b`` cannot usefully share an owner name."""
    if a == b:
        return False
    if "CNAME" in (a, b):
        return True  # a CNAME stands alone at its name (RFC 1034 §3.6.2)
    # PowerDNS answers a real A/AAAA instead of expanding an ALIAS at the same name.
    return "ALIAS" in (a, b) and bool({a, b} & {"A", "AAAA"})


def _served_as(rrset: RRset, zone: str) -> str:
    """A CNAME at the apex can only be Cloudflare's flattened one (we never write a raw
    apex CNAME): it answers like an ALIAS and may share the apex with MX, TXT..."""
    return "ALIAS" if rrset.type == "CNAME" and rrset.name == zone else rrset.type


def _foreign_reason(current: ZoneRRset, rrset_name: str) -> str:
    what = f"{rrset_name} {current.rrset.type}"
    if current.owner is None:
        return f"{what} exists and is not managed by Sitefleet"
    return f"{what} exists and is managed by Sitefleet for another owner ({current.owner})"


def compute_plan(
    zone: str, desired: Iterable[RRset], current: Mapping[tuple[str, str], ZoneRRset], owner: str
) -> Plan:
    """The RRset-level diff between ``desired`` and the zone's ``current`` RRsets."""
    desired = tuple(sorted(desired, key=lambda r: r.key))
    at_name: dict[str, list[ZoneRRset]] = defaultdict(list)
    for zrr in current.values():
        at_name[zrr.rrset.name].append(zrr)

    replace: list[RRset] = []
    blocked: list[Blocked] = []
    for rrset in desired:
        existing = current.get(rrset.key)
        if existing is not None and existing.owner != owner:
            blocked.append(Blocked(rrset, _foreign_reason(existing, rrset.name)))
            continue
        blocker = next(
            (
                z
                for z in at_name[rrset.name]
                if z.owner != owner and _excludes(_served_as(rrset, zone), z.rrset.type)
            ),
            None,
        )
        if blocker is not None:
            blocked.append(Blocked(rrset, _foreign_reason(blocker, rrset.name)))
        elif existing is None or existing.rrset != rrset or existing.has_disabled:
            replace.append(rrset)

    wanted = {r.key for r in desired}
    # DNS-01 challenge TXT RRsets are ours too but set and cleared by services/dns/acme.py
    # alone: never stale here, never counted as the site's records for the safety limits.
    owned = {
        z.key: z for z in current.values() if z.owner == owner and not is_acme_challenge(*z.key)
    }
    stale = sorted((z.rrset for z in owned.values() if z.key not in wanted), key=lambda r: r.key)
    return Plan(
        zone=zone,
        desired=desired,
        replace=tuple(replace),
        delete=tuple(stale),
        blocked=tuple(blocked),
        owned_contents={key: z.rrset.contents for key, z in owned.items()},
    )


async def plan_site(
    client: DnsProvider,
    *,
    site_id: str,
    domain: str,
    settings: DnsSettings,
    addresses: list[str] | None = None,
    targets: CdnTargets | None = None,
    version: int | None = None,
) -> Plan:
    """What ``apply_site`` would change now (read-only). ``addresses``: the site's web host
    addresses (services/dns/placement.py; None = settings); ``version``: the zone's version
    from ``zone_versions`` (an unchanged zone is then not read again)."""
    zone_name = zone_of(domain)
    zone = await client.get_zone(zone_name, version=version)
    desired = desired_rrsets(domain, settings, addresses=addresses, targets=targets)
    return compute_plan(
        zone_name,
        client.compile(desired),
        zone.rrsets if zone is not None else {},
        site_owner(site_id),
    )


async def apply_site(
    session: AsyncSession,
    client: DnsProvider,
    *,
    tenant_id: str,
    site_id: str,
    domain: str,
    settings: DnsSettings,
    verifier: RecordVerifier | None = None,
    targets: CdnTargets | None = None,
) -> ApplyResult:
    """Make the provider serve the site's records, record them, and verify they are served.

    Raises ``SafetyLimitExceeded`` (Permanent) before writing anything when the zone's
    changes pass a safety limit; ``DnsNotVerified`` (Transient) when some applied record is
    still not served after the verifier's attempts; provider errors as each documents.
    """
    zone_name = zone_of(domain)
    owner = site_owner(site_id)
    addresses = await site_addresses(session, site_id)
    refused: ChangeErrors | None = None
    if await client.get_zone(zone_name) is None:
        # A new zone is created holding the records (PowerDNS: one write).
        desired = desired_rrsets(domain, settings, addresses=addresses, targets=targets)
        plan = compute_plan(zone_name, client.compile(desired), {}, owner)
        refused = await client.create_zone_with(
            zone_name,
            plan.changes(owner),
            nameservers=settings.nameservers,
            negative_ttl=settings.dns_ttl,
        )
    if refused is None:  # the zone was there (or appeared meanwhile): diff against it
        plan = await plan_site(
            client,
            site_id=site_id,
            domain=domain,
            settings=settings,
            addresses=addresses,
            targets=targets,
        )
        check_zone_limits(plan, settings)
        refused = await client.apply_changes(zone_name, plan.changes(owner))

    reasons = {b.rrset.key: b.reason for b in plan.blocked}
    reasons.update(refused)
    await _sync_rows(
        session, tenant_id=tenant_id, site_id=site_id, zone=zone_name, plan=plan, errors=reasons
    )

    applied = [r for r in plan.desired if r.key not in reasons]
    outcome = await (verifier or verifier_for(client, settings)).verify(applied, zone=zone_name)
    verified = tuple(r for r in applied if outcome[r.key] is None)
    await _record_verification(session, site_id=site_id, outcome=outcome)
    failing = {f"{name} {rtype}": why for (name, rtype), why in outcome.items() if why}
    if failing:
        summary = "; ".join(f"{k}: {v}" for k, v in sorted(failing.items()))
        raise DnsNotVerified(f"not served yet: {summary}", details={"records": failing})
    return ApplyResult(plan=plan, verified=verified)


async def remove_site(
    session: AsyncSession, client: DnsProvider, *, site_id: str, domain: str
) -> list[RRset]:
    """Delete the RRsets this site owns, and its zone if we created it and it is now empty
    of anything but SOA/NS; forget the site's ``dns_records``. Returns what was deleted."""
    zone_name = zone_of(domain)
    owner = site_owner(site_id)
    deleted: list[RRset] = []
    zone = await client.get_zone(zone_name)
    if zone is not None:
        deleted = [z.rrset for z in zone.rrsets.values() if z.owner == owner]
        await client.apply_changes(zone_name, [RRsetChange("DELETE", r) for r in deleted])
        # Re-read: only delete a zone nobody added anything to in the meantime.
        zone = await client.get_zone(zone_name) if deleted else zone
        if zone is not None and _is_empty_own_zone(zone):
            await client.delete_zone(zone_name)
    await session.execute(delete(DnsRecord).where(DnsRecord.site_id == site_id))
    return deleted


def _is_empty_own_zone(zone: Zone) -> bool:
    return zone.account == ACCOUNT and all(
        z.rrset.name == zone.name and z.rrset.type in ("SOA", "NS") for z in zone.rrsets.values()
    )


async def _sync_rows(
    session: AsyncSession,
    *,
    tenant_id: str,
    site_id: str,
    zone: str,
    plan: Plan,
    errors: Mapping[tuple[str, str], str],
) -> None:
    """One ``dns_records`` row per desired record: ``applied``, or ``error`` with the reason
    when blocked; rows of records no longer desired are dropped, except DNS-01 challenge
    rows (services/dns/acme.py keeps those)."""
    rows = [
        {
            "site_id": site_id,
            "tenant_id": tenant_id,
            "zone": zone,
            "name": r.name,
            "type": r.type,
            "content": content,
            "ttl": r.ttl,
            "status": "error" if r.key in errors else "applied",
            "error": errors.get(r.key),
        }
        for r in plan.desired
        for content in r.contents
    ]
    keep = [(row["name"], row["type"], row["content"]) for row in rows]
    await session.execute(
        delete(DnsRecord).where(
            DnsRecord.site_id == site_id,
            tuple_(DnsRecord.name, DnsRecord.type, DnsRecord.content).not_in(keep),
            ~and_(
                DnsRecord.type == "TXT",
                DnsRecord.name.startswith(ACME_LABEL + ".", autoescape=True),
            ),
        )
    )
    if not rows:
        return
    # Rows as execution parameters, not .values(rows): a multi-VALUES statement is compiled
    # anew on every call, this form once (SQLAlchemy batches the rows into one INSERT).
    stmt = insert(DnsRecord)
    stmt = stmt.on_conflict_do_update(
        index_elements=["site_id", "name", "type", "content"],
        set_={
            "tenant_id": stmt.excluded.tenant_id,
            "zone": stmt.excluded.zone,
            "ttl": stmt.excluded.ttl,
            "status": stmt.excluded.status,
            "error": stmt.excluded.error,
            "updated_at": func.now(),
        },
    )
    await session.execute(stmt, rows)


async def _record_verification(
    session: AsyncSession, *, site_id: str, outcome: Mapping[tuple[str, str], str | None]
) -> None:
    """``verified`` rows for RRsets served as desired; the others stay ``applied`` with
    why they are not (yet) served in ``error``. One statement for every RRset at once
    (run as asyncpg's executemany: one round trip, compiled once)."""
    if not outcome:
        return
    records = DnsRecord.metadata.tables[DnsRecord.__tablename__]
    await session.execute(
        update(records)
        .where(
            records.c.site_id == bindparam("b_site"),
            records.c.name == bindparam("b_name"),
            records.c.type == bindparam("b_type"),
        )
        .values(status=bindparam("b_status"), error=bindparam("b_error"), updated_at=func.now()),
        [
            {
                "b_site": site_id,
                "b_name": name,
                "b_type": rtype,
                "b_status": "applied" if why else "verified",
                "b_error": f"not served yet: {why}" if why else None,
            }
            for (name, rtype), why in outcome.items()
        ],
    )
