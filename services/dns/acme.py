"""DNS-01 challenge records (issue 8): the TXT RRsets ``_acme-challenge.<name>.`` the certs
service asks for (``dns.acme_challenge_requested``) while an ACME order of a site waits on
the CA.

Where they live, and why:
    in the site's zone, written with the site's own ownership marker (``site=<id>``), so
    removing the site removes them with its other records (reconcile.remove_site);
    as rows of ``dns_records``, like every record we put in a customer's zone, so
    ``GET /v1/sites/{id}/dns`` shows them (the customer sees what we wrote and since when)
    and the rows say which values are wanted.
    They are not among the site's desired records (records.desired_rrsets): this module
    alone sets and clears them. Reconcile and the drift sweep skip them
    (``is_acme_challenge`` in reconcile.compute_plan and reconcile._sync_rows), so neither
    deletes them nor reports them as drift while an order waits; a ``clear`` removes them.

Checked before anything is written: the name is ``_acme-challenge.`` + the site's domain,
``www.`` or ``proxy.`` of it (a wildcard's challenge name is its base's, so the apex one);
each value is an RFC 8555 §8.4 digest (base64url of SHA-256: 43 characters); at most
``MAX_VALUES`` of them (an apex + wildcard order needs two at one name). The site must be
the job's tenant's and on the job's domain (the API's ``sites`` table).

Transactions belong to the caller (services/dns/consumer.py): nothing here commits.
"""

from __future__ import annotations

import re

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from services.dns.provider import DnsProvider, RRsetChange
from services.dns.records import ACME_LABEL, RRset, fqdn, make_rrset, zone_of
from services.dns.settings import DnsSettings
from services.dns.verification import RecordVerifier
from shared.domains import normalize_domain
from shared.errors import Conflict, Invalid, NotFound, Permanent, Transient
from shared.messages import AcmeDnsChallengeRequested
from shared.models import DnsRecord
from shared.models import Site as SiteRow

# base64url without padding of a SHA-256 digest (RFC 8555 §8.4): exactly 43 characters.
DIGEST = re.compile(r"[A-Za-z0-9_-]{43}")
# Values at one name at once: an order for the apex and its wildcard needs two; a renewal
# overlapping a slow clear at most a couple more.
MAX_VALUES = 4
# The names of a site that can carry a certificate: the apex (and a wildcard's base), www
# and proxy; media is the CDN's.
CERT_PREFIXES = ("", "www.", "proxy.")


class AcmeChallengeRefused(Invalid):
    """The job asks for a TXT record we must not write (not a challenge name of the site,
    not a digest); nothing was written and retrying cannot help."""

    code = "acme_challenge_invalid"


class AcmeChallengeNotServed(Transient):
    """Written, but the authoritative server does not serve it yet: retry the job later
    (rows are kept, as with reconcile.DnsNotVerified)."""

    code = "dns_not_verified"


def challenge_names(domain: str) -> list[str]:
    """The ``_acme-challenge`` names the site on ``domain`` may ask for."""
    apex = zone_of(domain)
    return [fqdn(f"{ACME_LABEL}.{prefix}{apex}") for prefix in CERT_PREFIXES]


def txt_content(value: str) -> str:
    """A TXT content as both providers take and give it back: one quoted character string
    (Cloudflare: "must consist of quoted character strings")."""
    return f'"{value}"'


def validate(job: AcmeDnsChallengeRequested) -> tuple[str, tuple[str, ...]]:
    """The normalized challenge name and the values, or ``AcmeChallengeRefused``."""
    try:
        domain = normalize_domain(job.domain)
    except Invalid as exc:
        raise AcmeChallengeRefused(exc.message) from None
    allowed = challenge_names(domain)
    name = job.name.strip().lower()
    name = name if name.endswith(".") else name + "."
    if name not in allowed:
        raise AcmeChallengeRefused(
            f"{job.name!r} is not a DNS-01 challenge name of {domain}; allowed: "
            + ", ".join(allowed),
            details={"name": job.name[:300]},
        )
    if len(job.values) > MAX_VALUES:
        raise AcmeChallengeRefused(
            f"{len(job.values)} challenge values for {name}; at most {MAX_VALUES}"
        )
    bad = [v[:60] for v in job.values if not DIGEST.fullmatch(v)]
    if bad:
        raise AcmeChallengeRefused(
            f"challenge values must be base64url SHA-256 digests (43 characters): {bad!r}"
        )
    if job.action == "set" and not job.values:
        raise AcmeChallengeRefused(f"setting {name} needs at least one value")
    return name, tuple(sorted(set(job.values)))


async def check_site(session: AsyncSession, job: AcmeDnsChallengeRequested) -> str | None:
    """The site's status, None when it is gone; refuses a job whose site is another
    tenant's or on another domain (reads the API's ``sites`` table)."""
    row = (
        await session.execute(
            select(SiteRow.tenant_id, SiteRow.domain, SiteRow.status).where(
                SiteRow.id == job.site_id
            )
        )
    ).first()
    if row is None:
        return None
    tenant_id, domain, status = row
    if tenant_id != job.tenant_id or normalize_domain(domain) != normalize_domain(job.domain):
        raise AcmeChallengeRefused(
            f"site {job.site_id} is not on {job.domain} for tenant {job.tenant_id}"
        )
    return str(status)


def _acme_rows(site_id: str, name: str) -> ColumnElement[bool]:
    return and_(DnsRecord.site_id == site_id, DnsRecord.name == name, DnsRecord.type == "TXT")


async def apply_challenge(
    session: AsyncSession,
    client: DnsProvider,
    job: AcmeDnsChallengeRequested,
    *,
    owner: str,
    settings: DnsSettings,
    verifier: RecordVerifier,
) -> RRset | None:
    """Set or clear the challenge RRset (one provider write, none when it already is as
    asked: idempotent), keep its ``dns_records`` rows in step and, after a set, check that
    it is served. Returns the RRset now wanted (None after a clear)."""
    name, values = validate(job)
    zone_name = zone_of(job.domain)
    key = (name, "TXT")
    zone = await client.get_zone(zone_name)
    if zone is None:
        if job.action == "clear":
            await session.execute(delete(DnsRecord).where(_acme_rows(job.site_id, name)))
            return None
        raise NotFound(
            f"zone {zone_name} does not exist (the site's records are not published)",
            code="dns_zone_not_found",
        )
    current = zone.rrsets.get(key)
    blockers = [
        z
        for z in zone.rrsets.values()
        if z.rrset.name == name and (z.rrset.type == "CNAME" or (z.key == key and z.owner != owner))
    ]
    if blockers:
        # A customer's own _acme-challenge record (another ACME client, a CNAME delegating
        # the challenge elsewhere): theirs, never overwritten.
        found = blockers[0]
        raise Conflict(
            f"{name} {found.rrset.type} exists and is "
            + ("not managed by Sitefleet" if found.owner is None else f"owned by {found.owner}"),
            code="dns_record_conflict",
        )

    contents = {txt_content(v) for v in values}
    held = set(current.rrset.contents) if current is not None else set()
    if job.action == "set":
        wanted = contents
    else:  # clear the values named, or the whole RRset when none are
        wanted = held - contents if contents else set()
    rrset = (
        client.compile([make_rrset(name, "TXT", settings.acme_txt_ttl, sorted(wanted))])[0]
        if wanted
        else None
    )
    changes: list[RRsetChange] = []
    if rrset is None and current is not None:
        changes.append(RRsetChange("DELETE", current.rrset))
    elif rrset is not None and (current is None or current.rrset != rrset or current.has_disabled):
        changes.append(RRsetChange("REPLACE", rrset, owner=owner))
    refused = await client.apply_changes(zone_name, changes)
    if refused:
        raise Permanent(
            f"{name} TXT: {refused.get(key, 'refused by the provider')}",
            code="dns_provider_rejected",
        )

    await _sync_rows(session, job, zone=zone_name, name=name, rrset=rrset)
    if rrset is None:
        return None
    outcome = await verifier.verify([rrset], zone=zone_name)
    why = outcome.get(key)
    await session.execute(
        update(DnsRecord)
        .where(_acme_rows(job.site_id, name))
        .values(
            status="applied" if why else "verified",
            error=f"not served yet: {why}" if why else None,
            updated_at=func.now(),
        )
    )
    if why:
        raise AcmeChallengeNotServed(f"not served yet: {name} TXT: {why}")
    return rrset


async def _sync_rows(
    session: AsyncSession,
    job: AcmeDnsChallengeRequested,
    *,
    zone: str,
    name: str,
    rrset: RRset | None,
) -> None:
    contents = list(rrset.contents) if rrset is not None else []
    await session.execute(
        delete(DnsRecord).where(_acme_rows(job.site_id, name), DnsRecord.content.not_in(contents))
    )
    if rrset is None:
        return
    stmt = insert(DnsRecord).values(
        [
            {
                "site_id": job.site_id,
                "tenant_id": job.tenant_id,
                "zone": zone,
                "name": name,
                "type": "TXT",
                "content": content,
                "ttl": rrset.ttl,
                "status": "applied",
                "error": None,
            }
            for content in contents
        ]
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["site_id", "name", "type", "content"],
            set_={"ttl": stmt.excluded.ttl, "status": "applied", "updated_at": func.now()},
        )
    )
