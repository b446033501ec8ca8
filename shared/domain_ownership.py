"""Proof that a tenant controls a domain: the challenge TXT record and the NS delegation
(checked by the API on demand and by the DNS service periodically), and the rule the DNS
service applies before publishing a site's records."""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.models import Domain

CHALLENGE_LABEL = "_sitefleet-challenge"


def challenge_name(domain: str) -> str:
    return f"{CHALLENGE_LABEL}.{domain}"


def enclosing_names(domain: str) -> list[str]:
    """``blog.example.com`` -> [blog.example.com, example.com]: the domains a site on it
    may belong to (at least two labels)."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


@dataclass(frozen=True)
class OwnershipCheck:
    txt_found: bool
    delegated: bool
    # Why the check did not pass, in words a customer can act on (None when it passed).
    problem: str | None

    @property
    def verified(self) -> bool:
        return self.txt_found


def _resolver(address: str, timeout: float) -> dns.asyncresolver.Resolver:
    if not address:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, _, port = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
        resolver.nameservers = [host]
        resolver.port = int(port) if port else 53
    resolver.lifetime = timeout
    resolver.cache = None
    return resolver


async def _answers(resolver: dns.asyncresolver.Resolver, name: str, rtype: str) -> list[str]:
    try:
        answer = await resolver.resolve(name, rtype, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
        # No such name, or no server will answer for it (SERVFAIL/REFUSED: the zone is not
        # delegated anywhere yet): either way the record is not there. Timeouts propagate.
        return []
    if answer.rrset is None:
        return []
    if rtype == "TXT":
        return [b"".join(r.strings).decode(errors="replace") for r in answer.rrset]
    return [r.to_text().lower() for r in answer.rrset]


def _fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


async def check_ownership(
    domain: str,
    *,
    txt_value: str,
    nameservers: list[str],
    resolver: str = "",
    lookup_seconds: float = 5.0,
) -> OwnershipCheck:
    """Ask ``resolver`` (``host:port``; empty: the system's) for the challenge TXT record
    and the domain's NS records. The TXT record proves control; the delegation is reported
    (the site's records are only seen by the world once it points at our nameservers)."""
    res = _resolver(resolver, lookup_seconds)
    problems: list[str] = []
    try:
        txts = await _answers(res, challenge_name(domain), "TXT")
        ns = await _answers(res, domain, "NS")
    except dns.exception.DNSException as exc:
        return OwnershipCheck(
            False, False, f"DNS lookup of {domain} failed: {type(exc).__name__}: {exc}"
        )
    txt_found = txt_value in txts
    if not txt_found:
        problems.append(
            f"TXT record {challenge_name(domain)} with value {txt_value!r} not found"
            + (f" (found {sorted(txts)})" if txts else "")
        )
    ours = {_fqdn(n) for n in nameservers}
    served = {_fqdn(n) for n in ns}
    delegated = bool(served) and served <= ours
    if not delegated:
        problems.append(
            f"NS records of {domain} are {sorted(served) or 'missing'}, want {sorted(ours)}"
        )
    return OwnershipCheck(txt_found, delegated, "; ".join(problems) or None)


async def domain_active_for(session: AsyncSession, tenant_id: str, site_domain: str) -> bool:
    """Whether ``site_domain`` (or a domain it is under) is active for ``tenant_id``:
    bought here, or brought and verified. Reads the API's ``domains`` table."""
    found = await session.scalar(
        select(Domain.id).where(
            Domain.name.in_(enclosing_names(site_domain)),
            Domain.tenant_id == tenant_id,
            Domain.status == "active",
        )
    )
    return found is not None
