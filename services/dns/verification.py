"""Verification: ask the authoritative server directly whether it serves the desired RRsets.

A and AAAA compare address sets, CNAME its target; ALIAS compares the addresses the
authoritative server answers for the name with the addresses of the ALIAS target (asked of
``alias_resolver``). TTLs are ignored: a cache between us and a client may lower them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from services.dns.provider import DnsProvider
from services.dns.records import RRset, normalize_content
from services.dns.settings import DnsSettings
from shared.nameservers import Nameserver

Outcome = dict[tuple[str, str], str | None]


class RecordVerifier(Protocol):
    async def verify(self, rrsets: Iterable[RRset], *, zone: str | None = None) -> Outcome:
        """Per RRset key: None when served as desired, else why not."""
        ...


@dataclass(frozen=True)
class Verifier:
    """Where and how patiently to check answers."""

    authoritative: Nameserver
    # Recursive resolver for ALIAS targets (may be the authoritative server in dev/test).
    alias_resolver: Nameserver
    attempts: int = 5
    interval: float = 0.5
    timeout: float = 2.0

    @classmethod
    def from_settings(
        cls, settings: DnsSettings, *, authoritative: Nameserver | None = None
    ) -> Verifier:
        authoritative = authoritative or Nameserver(settings.dns_host, settings.dns_port)
        return cls(
            authoritative=authoritative,
            alias_resolver=(
                Nameserver.parse(settings.alias_resolver)
                if settings.alias_resolver
                else authoritative
            ),
            attempts=settings.verify_attempts,
            interval=settings.verify_interval,
            timeout=settings.verify_timeout,
        )

    async def verify(
        self, rrsets: Iterable[RRset], *, zone: str | None = None
    ) -> dict[tuple[str, str], str | None]:
        """Check every RRset, re-checking the failing ones up to ``attempts`` rounds.

        Returns, per RRset key, None when it is served as desired, else why not (last round).
        """
        results: dict[tuple[str, str], str | None] = {}
        pending = list(rrsets)
        for attempt in range(max(1, self.attempts)):
            if attempt:
                await asyncio.sleep(self.interval)
            outcomes = await asyncio.gather(*(self.check(r) for r in pending))
            results.update((r.key, outcome) for r, outcome in zip(pending, outcomes, strict=True))
            pending = [r for r, outcome in zip(pending, outcomes, strict=True) if outcome]
            if not pending:
                break
        return results

    async def check(self, rrset: RRset) -> str | None:
        try:
            if rrset.type == "ALIAS":
                return await self._check_alias(rrset)
            served = await self._ask(self.authoritative, rrset.name, rrset.type)
        except AnswerError as exc:
            return str(exc)
        if served != set(rrset.contents):
            return f"served {sorted(served) or 'nothing'}, want {list(rrset.contents)}"
        return None

    async def _check_alias(self, rrset: RRset) -> str | None:
        served = await self._ask(self.authoritative, rrset.name, "A")
        target = rrset.contents[0]
        expected = await self._ask(self.alias_resolver, target, "A", recursive=True)
        if not expected:
            return f"ALIAS target {target} has no A records"
        if served != expected:
            return f"served A {sorted(served) or 'nothing'}, target {target} has {sorted(expected)}"
        return None

    async def _ask(
        self, server: Nameserver, name: str, rtype: str, *, recursive: bool = False
    ) -> set[str]:
        """The normalized contents of the ``rtype`` records answered for ``name``; when
        ``recursive``, of any owner, so a resolver's CNAME chain to the addresses counts."""
        query = dns.message.make_query(name, rtype)
        if not recursive:
            query.flags &= ~dns.flags.RD
        try:
            response = await dns.asyncquery.udp(
                query, server.host, port=server.port, timeout=self.timeout
            )
            if response.flags & dns.flags.TC:
                response = await dns.asyncquery.tcp(
                    query, server.host, port=server.port, timeout=self.timeout
                )
        except (dns.exception.DNSException, OSError) as exc:
            raise AnswerError(
                f"no answer from {server.host}:{server.port} for {name} {rtype}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return set()
        if rcode != dns.rcode.NOERROR:
            raise AnswerError(f"{name} {rtype}: {dns.rcode.to_text(rcode)}")
        wanted = dns.rdatatype.from_text(rtype)
        owner = dns.name.from_text(name)
        return {
            normalize_content(rtype, rdata.to_text())
            for answer in response.answer
            if answer.rdtype == wanted and (recursive or answer.name == owner)
            for rdata in answer
        }


class AnswerError(Exception):
    """A DNS server gave no usable answer (timeout, refused, SERVFAIL...)."""


@dataclass(frozen=True)
class ReadBackVerifier:
    """For providers whose name servers we cannot query from here (Cloudflare in tests and
    behind firewalls): an RRset counts as served when the provider's API lists exactly it.
    Weaker than asking the name servers; the README says so."""

    provider: DnsProvider

    async def verify(self, rrsets: Iterable[RRset], *, zone: str | None = None) -> Outcome:
        wanted = list(rrsets)
        if zone is None:
            raise ValueError("ReadBackVerifier needs the zone")
        found = await self.provider.get_zone(zone)
        held = found.rrsets if found is not None else {}
        outcome: Outcome = {}
        for rrset in wanted:
            current = held.get(rrset.key)
            if current is None:
                outcome[rrset.key] = "the provider does not list it"
            elif current.rrset != rrset:
                outcome[rrset.key] = f"the provider lists {current.rrset}, want {rrset}"
            else:
                outcome[rrset.key] = None
        return outcome


def verifier_for(provider: DnsProvider, settings: DnsSettings) -> RecordVerifier:
    """PowerDNS: ask its authoritative server; Cloudflare: ask its name servers when
    ``cloudflare_verify_nameserver`` is set, else read back through the API."""
    if provider.name == "cloudflare":
        if settings.cloudflare_verify_nameserver:
            return Verifier.from_settings(
                settings, authoritative=Nameserver.parse(settings.cloudflare_verify_nameserver)
            )
        return ReadBackVerifier(provider)
    return Verifier.from_settings(settings)
