"""Asking DNS ourselves: where a site's names point (the HTTP-01 preflight) and whether a
DNS-01 TXT record is served, straight from the authoritative servers (or the resolver the
settings name), never through a cache."""

from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from shared.nameservers import Nameserver

# CNAME hops followed before giving up (www -> edge -> ...).
MAX_CHAIN = 8


class LookupFailed(Exception):
    """No usable answer (timeout, refused, SERVFAIL, a CNAME loop)."""


async def _ask(
    server: Nameserver, name: str, rtype: str, query_seconds: float
) -> dns.message.Message:
    query = dns.message.make_query(name, rtype)
    try:
        response = await dns.asyncquery.udp(
            query, server.host, port=server.port, timeout=query_seconds
        )
        if response.flags & dns.flags.TC:
            response = await dns.asyncquery.tcp(
                query, server.host, port=server.port, timeout=query_seconds
            )
    except (dns.exception.DNSException, OSError) as exc:
        raise LookupFailed(f"no answer from {server} for {name} {rtype}: {exc!r}") from exc
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise LookupFailed(f"{server}: {name} {rtype}: {dns.rcode.to_text(rcode)}")
    return response


async def resolve_addresses(
    name: str, server: Nameserver, *, query_seconds: float = 2.0
) -> set[str]:
    """The A and AAAA addresses ``name`` leads to, following CNAMEs (each hop asked again,
    so an authoritative server that does not chase out of zone still gives the answer)."""
    found: set[str] = set()
    for rtype in ("A", "AAAA"):
        current = dns.name.from_text(name)
        for _ in range(MAX_CHAIN):
            response = await _ask(server, current.to_text(), rtype, query_seconds)
            wanted = dns.rdatatype.from_text(rtype)
            addresses = {
                rdata.to_text()
                for rrset in response.answer
                if rrset.rdtype == wanted
                for rdata in rrset
            }
            if addresses:
                found |= addresses
                break
            targets = [
                rrset[0].target
                for rrset in response.answer
                if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == current
            ]
            if not targets:
                break
            current = targets[0]
        else:
            raise LookupFailed(f"{name}: CNAME chain longer than {MAX_CHAIN}")
    return found


async def txt_values(name: str, server: Nameserver, *, query_seconds: float = 2.0) -> set[str]:
    response = await _ask(server, name, "TXT", query_seconds)
    owner = dns.name.from_text(name)
    return {
        b"".join(rdata.strings).decode()
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.TXT and rrset.name == owner
        for rdata in rrset
    }


async def wait_txt_served(
    wanted: dict[str, set[str]],
    servers: list[Nameserver],
    *,
    within: float,
    interval: float,
    query_seconds: float = 2.0,
) -> str | None:
    """Poll until every server serves every wanted TXT value; None when they do, else why
    not (the last round's reason)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        reason = None
        for server in servers:
            for name, values in wanted.items():
                try:
                    served = await txt_values(name, server, query_seconds=query_seconds)
                except LookupFailed as exc:
                    reason = str(exc)
                    break
                if not values <= served:
                    reason = f"{server} serves {sorted(served) or 'nothing'} at {name}"
                    break
            if reason:
                break
        if reason is None:
            return None
        if loop.time() > deadline:
            return reason
        await asyncio.sleep(interval)
