"""The desired records of a site (DESIGN.md §5)."""

from __future__ import annotations

import pytest

from services.dns.records import desired_rrsets, make_rrset, zone_of
from services.dns.settings import DnsSettings
from shared.errors import Invalid


def settings(**overrides: object) -> DnsSettings:
    values: dict[str, object] = {
        "web_host_addresses": ["203.0.113.6", "203.0.113.5"],
        "cdn_edge_pattern": "{slug}.edge.cdn.example.net",
        "cdn_media_pattern": "{slug}.media.cdn.example.net",
        "dns_ttl": 300,
    }
    values.update(overrides)
    return DnsSettings(**values)  # type: ignore[arg-type]


def test_a_site_gets_proxy_apex_alias_www_and_media() -> None:
    records = {(r.name, r.type): r.contents for r in desired_rrsets("Example.COM", settings())}

    assert records == {
        ("proxy.example.com.", "A"): ("203.0.113.5", "203.0.113.6"),
        ("example.com.", "ALIAS"): ("example-com.edge.cdn.example.net.",),
        ("www.example.com.", "CNAME"): ("example-com.edge.cdn.example.net.",),
        ("media.example.com.", "CNAME"): ("example-com.media.cdn.example.net.",),
    }


def test_never_a_cname_at_the_apex() -> None:
    for domain in ("example.com", "shop.example.co.uk", "bücher.example"):
        apex = zone_of(domain)
        rrsets = desired_rrsets(domain, settings())
        assert all(r.name != apex for r in rrsets if r.type == "CNAME")
        assert any(r.name == apex and r.type == "ALIAS" for r in rrsets)


def test_names_and_contents_are_normalized() -> None:
    rrsets = desired_rrsets("bücher.example.", settings(cdn_edge_pattern="{slug}.EDGE.Cdn.Test"))

    assert zone_of("bücher.example.") == "xn--bcher-kva.example."
    for rrset in rrsets:
        assert rrset.name == rrset.name.lower() and rrset.name.endswith(".")
        assert list(rrset.contents) == sorted(set(rrset.contents))
        if rrset.type != "A":
            assert all(c == c.lower() and c.endswith(".") for c in rrset.contents)
    assert make_rrset("WWW.Example.com", "cname", 60, ["A.B.", "a.b"]) == make_rrset(
        "www.example.com.", "CNAME", 60, ["a.b."]
    )


def test_ipv6_web_hosts_get_an_aaaa_rrset() -> None:
    hosts = ["203.0.113.5", "2001:DB8::5"]
    rrsets = desired_rrsets("example.com", settings(web_host_addresses=hosts))
    proxy = {r.type: r.contents for r in rrsets if r.name == "proxy.example.com."}

    assert proxy == {"A": ("203.0.113.5",), "AAAA": ("2001:db8::5",)}


@pytest.mark.parametrize("domain", ["localhost", "exa mple.com", "-bad.com", ""])
def test_invalid_domains_are_rejected(domain: str) -> None:
    with pytest.raises(Invalid):
        desired_rrsets(domain, settings())


def test_a_cdn_hostname_inside_the_site_zone_is_rejected() -> None:
    with pytest.raises(Invalid, match="inside the site's zone"):
        desired_rrsets("example.com", settings(cdn_edge_pattern="edge.example.com"))
