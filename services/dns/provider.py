"""The DNS provider interface (PowerDNS, Cloudflare) and the zone model every provider
reads into: RRsets in normalized form, each with the owner its marker names.

Ownership: a provider stores the marker ``managed-by sitefleet <owner>`` with what it
writes (a PowerDNS RRset comment, a Cloudflare record comment) and reports it back as
``ZoneRRset.owner``; the reconciler never touches an RRset whose owner is not its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import httpx

from services.dns.records import RRset
from services.dns.settings import DnsSettings

ACCOUNT = "sitefleet"
# The ownership marker is "managed-by sitefleet <owner>"; ``owner`` is "site=<site id>" for
# a site's records.
MARKER = "managed-by sitefleet"


def marker_text(owner: str | None) -> str:
    return f"{MARKER} {owner}"


def owner_in(text: str) -> str | None:
    """The owner a marker text names, or None when it is no marker of ours."""
    if text.startswith(MARKER + " "):
        return text[len(MARKER) + 1 :].strip() or None
    return None


@dataclass(frozen=True)
class ZoneRRset:
    """An RRset as the provider holds it: normalized contents plus who owns it."""

    rrset: RRset
    # The owner tag of our marker ("site=<id>"), or None when we did not write it.
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
    # ACCOUNT when Sitefleet created the zone (then teardown may delete it once empty).
    account: str
    rrsets: dict[tuple[str, str], ZoneRRset] = field(default_factory=dict)


@dataclass(frozen=True)
class RRsetChange:
    changetype: Literal["REPLACE", "DELETE"]
    rrset: RRset
    # For REPLACE: the owner tag written into the marker.
    owner: str | None = None


# Per RRset key (name, type): why that change was not applied.
ChangeErrors = Mapping[tuple[str, str], str]


class DnsProvider(Protocol):
    """What the reconciler needs from a DNS provider."""

    # "powerdns" | "cloudflare": the label of its metrics.
    name: str

    def compile(self, rrsets: Sequence[RRset]) -> list[RRset]:
        """The provider's form of the desired RRsets (e.g. Cloudflare: apex ALIAS ->
        flattened CNAME), in the same normalized form ``get_zone`` reads back."""
        ...

    async def get_zone(self, name: str, *, version: int | None = None) -> Zone | None:
        """The zone, or None. ``version`` (from ``zone_versions``) lets a provider answer
        from what it read at that version instead of asking again."""
        ...

    async def zone_versions(self) -> Mapping[str, int]:
        """A version per zone that changes whenever the zone does (PowerDNS: its SOA
        serial), in one call; empty when the provider has none (Cloudflare)."""
        ...

    async def create_zone(
        self, name: str, *, nameservers: Sequence[str], negative_ttl: int = 300
    ) -> bool:
        """Create the zone; False when it already exists (whoever created it)."""
        ...

    async def create_zone_with(
        self,
        name: str,
        changes: Sequence[RRsetChange],
        *,
        nameservers: Sequence[str],
        negative_ttl: int = 300,
    ) -> ChangeErrors | None:
        """Create the zone holding ``changes`` (PowerDNS: in one write); None when it
        already exists (then nothing is written), else the refused changes."""
        ...

    async def apply_changes(self, zone: str, changes: Sequence[RRsetChange]) -> ChangeErrors:
        """Write ``changes``; returns the RRsets the provider refused, with why (the others
        are written). Whole-zone failures raise (shared/errors.py)."""
        ...

    async def delete_zone(self, name: str) -> None: ...


def open_dns_provider(http: httpx.AsyncClient, settings: DnsSettings) -> DnsProvider:
    """The provider ``settings.dns_provider`` names."""
    # Imported here: both provider modules import this one.
    if settings.dns_provider == "cloudflare":
        from services.dns.cloudflare import CloudflareClient

        return CloudflareClient.from_settings(http, settings)
    from services.dns.powerdns import PowerDnsClient

    return PowerDnsClient.from_settings(http, settings)
