"""The desired DNS records of a site (DESIGN.md §5), in the normalized form we diff and store.

Normalized form: owner names and name-valued contents lower-case with a trailing dot,
addresses in their canonical text form, contents deduplicated and sorted. Two RRsets that
serve the same answers compare equal, so a plan computed right after an apply is empty.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

from shared.domains import domain_slug, normalize_domain
from shared.errors import Invalid

# Types whose content is a single domain name (compared case-insensitively, dot-terminated).
NAME_TYPES = frozenset({"ALIAS", "CNAME", "DNAME", "NS", "PTR"})
ADDRESS_TYPES = frozenset({"A", "AAAA"})
# DNS-01 challenge names (RFC 8555 §8.4); their TXT RRsets are set and cleared by
# services/dns/acme.py alone, never by reconcile or the drift sweep.
ACME_LABEL = "_acme-challenge"


@dataclass(frozen=True)
class RRset:
    name: str
    type: str
    ttl: int
    contents: tuple[str, ...]
    # Cloudflare only: served through its proxy (CDN). None where the provider has no such
    # thing (PowerDNS).
    proxied: bool | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.type)

    def __str__(self) -> str:
        return f"{self.name} {self.type} {' '.join(self.contents)}"


class RecordSettings(Protocol):
    """What the desired records depend on (``DnsSettings`` has it all)."""

    web_host_addresses: list[str]
    cdn_edge_pattern: str
    cdn_media_pattern: str
    dns_ttl: int


def fqdn(name: str) -> str:
    """``Example.COM`` -> ``example.com.``"""
    return name.strip().lower().rstrip(".") + "."


def is_acme_challenge(name: str, rtype: str) -> bool:
    """Whether (``name``, ``rtype``) is a DNS-01 challenge RRset (normalized name)."""
    return rtype == "TXT" and name.startswith(ACME_LABEL + ".")


def normalize_content(rtype: str, content: str) -> str:
    if rtype in NAME_TYPES:
        return fqdn(content)
    if rtype in ADDRESS_TYPES:
        return str(ipaddress.ip_address(content.strip()))
    return content.strip()


def make_rrset(
    name: str,
    rtype: str,
    ttl: int,
    contents: list[str] | tuple[str, ...],
    *,
    proxied: bool | None = None,
) -> RRset:
    rtype = rtype.upper()
    return RRset(
        name=fqdn(name),
        type=rtype,
        ttl=ttl,
        contents=tuple(sorted({normalize_content(rtype, c) for c in contents})),
        proxied=proxied,
    )


def zone_of(domain: str) -> str:
    """Foundation: each site's domain is its own zone."""
    return fqdn(normalize_domain(domain))


def edge_hostname(domain: str, settings: RecordSettings) -> str:
    return fqdn(settings.cdn_edge_pattern.format(slug=domain_slug(normalize_domain(domain))))


def media_hostname(domain: str, settings: RecordSettings) -> str:
    return fqdn(settings.cdn_media_pattern.format(slug=domain_slug(normalize_domain(domain))))


@dataclass(frozen=True)
class CdnTargets:
    """Where a site's apex, ``www`` and ``media`` names point (a CDN provider's answer)."""

    edge: str
    media: str
    # True when the DNS provider itself is the CDN (Cloudflare proxied records): then the
    # targets are the site's own origin name and the records are marked proxied.
    proxied: bool = False


def desired_rrsets(
    domain: str,
    settings: RecordSettings,
    *,
    addresses: list[str] | None = None,
    targets: CdnTargets | None = None,
) -> list[RRset]:
    """The RRsets a site on ``domain`` needs, sorted by (name, type).

    ``proxy.<domain>`` gets one A (and/or AAAA) RRset with every address of the web hosts
    the site lives on (``addresses``; ``settings.web_host_addresses`` when it has no
    placement yet); the apex points at the site's edge through ALIAS (a CNAME at a zone
    apex is illegal DNS), ``www`` at the same edge and ``media`` at the media CDN through
    CNAMEs. ``targets`` defaults to the static CDN's hostname patterns from settings.
    """
    apex = zone_of(domain)
    ttl = settings.dns_ttl
    by_family: dict[str, list[str]] = {"A": [], "AAAA": []}
    for raw in addresses or settings.web_host_addresses:
        try:
            address = ipaddress.ip_address(raw.strip())
        except ValueError:
            raise Invalid(f"web host address {raw!r} is not an IP address") from None
        by_family["A" if address.version == 4 else "AAAA"].append(str(address))
    if not any(by_family.values()):
        raise Invalid("no web host addresses configured for proxy records")

    if targets is None:
        targets = CdnTargets(edge_hostname(domain, settings), media_hostname(domain, settings))
    edge, media = fqdn(targets.edge), fqdn(targets.media)
    proxied = True if targets.proxied else None
    rrsets = [make_rrset("proxy." + apex, t, ttl, a) for t, a in by_family.items() if a]
    rrsets += [
        make_rrset(apex, "ALIAS", ttl, [edge], proxied=proxied),
        make_rrset("www." + apex, "CNAME", ttl, [edge], proxied=proxied),
        make_rrset("media." + apex, "CNAME", ttl, [media], proxied=proxied),
    ]
    for target in () if targets.proxied else (edge, media):
        if target == apex or target.endswith("." + apex):
            # A CDN name inside the site's own zone would point the site at itself.
            raise Invalid(f"CDN hostname {target} lies inside the site's zone {apex}")
    return sorted(rrsets, key=lambda r: r.key)
