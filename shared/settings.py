"""Settings pieces every service composes (pydantic-settings, env prefix ``SITEFLEET_``).

Each service defines its own ``Settings`` class from these mixins, so a service only sees
(and only validates) what it uses. Connections are opened in ``__main__``/lifespan, never
at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/sitefleet"
    # Connections each process keeps in its pool (and as many more in a burst).
    db_pool_size: int = Field(default=10, ge=1)
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # The nodes of a RabbitMQ cluster (JSON list); when set it replaces amqp_url. Services
    # connect to one node and move to the next when it is down or drops the connection.
    amqp_urls: list[str] = Field(default_factory=list)
    log_level: str = "INFO"
    # Backoff ladder of the retry wait queues, in seconds; a job is parked after the last.
    retry_delays: list[float] = Field(default_factory=lambda: [10.0, 60.0, 300.0, 1800.0, 7200.0])
    # Quorum-queue redeliveries before a crash-looping message is dead-lettered to *.parked.
    delivery_limit: int = 10
    prefetch: int = 8
    # Prometheus /metrics of a consuming service (0 = off); the API serves its own.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    templates_dir: Path = PROJECT_ROOT / "templates"

    @property
    def broker_urls(self) -> list[str]:
        """Where the services connect: the cluster's nodes, else the one broker."""
        return list(self.amqp_urls) or [self.amqp_url]


class WebHostSettings(BaseSettings):
    """Where the local web host keeps sites and how nginx serves them."""

    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")

    sites_root: Path = PROJECT_ROOT / "var" / "www" / "sites"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Addresses published as `proxy.<domain> A` (the CDN's origin).
    web_host_addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    # The catch-all's TLS listener (certificates per name in <sites_root>/.tls/, issue 8);
    # a registered web host may name its own (web_hosts.https_port). 443 in production.
    https_port: int = Field(default=8443, gt=0, lt=65536)
    # Strict-Transport-Security max-age (seconds) on HTTPS answers; 0: no HSTS header. Read
    # when the nginx config is rendered (make run, host bootstrap), not per site.
    hsts_max_age: int = Field(default=0, ge=0)


class EdgeSettings(BaseSettings):
    """The static CDN provider: hostname patterns for a site's edge and media CDN names."""

    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")

    cdn_edge_pattern: str = "{slug}.edge.cdn.sitefleet.test"
    cdn_media_pattern: str = "{slug}.media.cdn.sitefleet.test"


class DomainSettings(BaseSettings):
    """Domains: the registrar we sell them through, how brought domains are verified, and
    whether a site's DNS waits for its domain to be proven ours (API and DNS service)."""

    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")

    # enforce: a site's records are published only once its domain is active for the
    # site's tenant (bought here, or brought and verified). off: publish every site's
    # records (a single-tenant install; the test suite's older tests).
    domain_ownership: Literal["enforce", "off"] = "enforce"
    # sandbox (a test-mode registrar that sells nothing for real) | namecom (Name.com).
    registrar: Literal["sandbox", "namecom"] = "sandbox"
    # The sandbox's price list: TLD -> price of one year; other TLDs are not sold.
    sandbox_prices: dict[str, str] = Field(
        default_factory=lambda: {
            "com": "12.00",
            "net": "14.00",
            "org": "13.00",
            "io": "39.00",
            "test": "1.00",
            "example": "1.00",
        }
    )
    registrar_currency: str = "USD"
    # Name.com CORE API; the sandbox environment is https://api.dev.name.com with the
    # username suffixed "-test" and the sandbox token.
    namecom_api_url: str = "https://api.dev.name.com"
    namecom_username: str = ""
    namecom_token: SecretStr = SecretStr("")
    # Seconds per registrar call (connect, read, write, pool).
    registrar_timeout: float = 30.0
    # The registrant contact sent with each purchase (Name.com contact fields); empty:
    # the registrar account's default contacts.
    registrar_contact: dict[str, str] = Field(default_factory=dict)
    # The nameservers a domain is delegated to (ours); brought domains are told to use them.
    nameservers: list[str] = Field(
        default_factory=lambda: ["ns1.sitefleet.test.", "ns2.sitefleet.test."]
    )
    # "host:port" of the resolver that brought domains are checked against; empty: the
    # system resolver (/etc/resolv.conf).
    domain_resolver: str = ""
    # Seconds between the DNS service's checks of brought domains waiting for verification.
    domain_check_interval: float = 60.0
    # Seconds between renewal passes over bought domains (renew, warn, expire); 0 = off.
    domain_renew_interval: float = 86400.0
    # Auto-renew this many days before expiry.
    domain_renew_before_days: int = 30
    # Warn (a domain.failed alert, code domain_expiring) this many days before expiry when
    # the domain is not renewed.
    domain_warn_days: list[int] = Field(default_factory=lambda: [30, 7])
