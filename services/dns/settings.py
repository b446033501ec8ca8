"""Settings of the DNS service (env prefix ``SITEFLEET_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings, DomainSettings, EdgeSettings, WebHostSettings


class DnsSettings(CommonSettings, WebHostSettings, EdgeSettings, DomainSettings):
    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")

    pdns_api_url: str = "http://127.0.0.1:8081"
    pdns_api_key: str = "sitefleet-dev-key"
    pdns_server_id: str = "localhost"
    # Seconds per PowerDNS API call (connect, read, write, pool).
    pdns_timeout: float = 10.0
    # Where our authoritative server answers DNS; verification queries it directly.
    dns_host: str = "127.0.0.1"
    dns_port: int = 5354
    # "host:port" of the recursive resolver that knows the CDN's names, used to compare an
    # ALIAS answer with its target's addresses. Empty: ask the authoritative server above
    # (dev/test, where it hosts the fake CDN zone and is its own ALIAS resolver).
    alias_resolver: str = ""
    dns_ttl: int = 300
    nameservers: list[str] = Field(
        default_factory=lambda: ["ns1.sitefleet.test.", "ns2.sitefleet.test."]
    )
    # Dev/test only: a zone (e.g. "cdn.sitefleet.test") hosted on our own PowerDNS with a
    # wildcard A to the web hosts, so edge/media CDN hostnames resolve offline.
    local_cdn_zone: str = ""
    # Verification: this many rounds of queries, this many seconds apart, then retry the job.
    verify_attempts: int = 5
    verify_interval: float = 0.5
    # Seconds to wait for one DNS answer.
    verify_timeout: float = 2.0
    # Seconds between drift sweeps (every site's records compared with PowerDNS); 0 = off.
    drift_interval: float = 300.0
