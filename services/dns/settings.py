"""Settings of the DNS service (env prefix ``SITEFLEET_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
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
    # TTL of DNS-01 challenge TXT records (short: a CA and resolvers must see a new value
    # soon, and a cleared one must not linger in caches).
    acme_txt_ttl: int = 60
    # Challenge records left this many seconds after they were set (the certs service never
    # sent the clear) are cleared by the drift sweep; 0 = never.
    acme_txt_max_age: float = 86400.0
    # Seconds between drift sweeps (every site's records compared with PowerDNS); 0 = off.
    drift_interval: float = 300.0

    # --- providers (README "DNS and CDN providers") ---
    dns_provider: Literal["powerdns", "cloudflare"] = "powerdns"
    cloudflare_api_url: str = "https://api.cloudflare.com/client/v4"
    cloudflare_api_token: str = ""
    # Needed only to create zones that are not in the account yet.
    cloudflare_account_id: str = ""
    # The account's API budget: this many calls per this many seconds (token bucket).
    cloudflare_rate_calls: int = 1200
    cloudflare_rate_period: float = 300.0
    # Record operations per batch call (200 is the Free plan's limit).
    cloudflare_batch_size: int = 200
    # A 429 asking to wait longer than this is left to the job's retry ladder.
    cloudflare_max_retry_after: float = 60.0
    cloudflare_timeout: float = 10.0
    # "host:port" of a Cloudflare name server to verify answers against (e.g. the zone's
    # assigned one); empty: verify by reading the records back through the API.
    cloudflare_verify_nameserver: str = ""

    # --- safety limits ---
    # Per zone and run: more deletions than this, or more than this share of the RRsets we
    # own there changed (checked once we own at least dns_change_ratio_min of them), halts
    # the zone's run before anything is written.
    dns_max_deletes_per_zone: int = 4
    dns_max_change_ratio: float = 0.8
    dns_change_ratio_min: int = 4
    # Fleet-wide circuit breaker: a run over many sites (the sweep, `dns sync` of all) that
    # would delete records in more than this many zones halts before applying anything.
    dns_breaker_max_zones: int = 10

    # --- CDN provider ---
    cdn_provider: Literal["static", "bunny", "cloudflare"] = "static"
    bunny_api_url: str = "https://api.bunny.net"
    bunny_api_key: str = ""
    # Pull zone names are "<prefix><site slug>"; their hostname "<name>.b-cdn.net".
    bunny_pull_zone_prefix: str = "sf-"
    bunny_cdn_domain: str = "b-cdn.net"
    # Scheme of the purged URLs (the site's public URLs).
    cdn_purge_scheme: str = "https"

    @model_validator(mode="after")
    def _providers_fit(self) -> DnsSettings:
        if self.cdn_provider == "cloudflare" and self.dns_provider != "cloudflare":
            raise ValueError("cdn_provider=cloudflare needs dns_provider=cloudflare")
        return self
