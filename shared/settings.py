"""Settings pieces every service composes (pydantic-settings, env prefix ``SITEFLEET_``).

Each service defines its own ``Settings`` class from these mixins, so a service only sees
(and only validates) what it uses. Connections are opened in ``__main__``/lifespan, never
at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/sitefleet"
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


class EdgeSettings(BaseSettings):
    """The static CDN provider: hostname patterns for a site's edge and media CDN names."""

    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")

    cdn_edge_pattern: str = "{slug}.edge.cdn.sitefleet.test"
    cdn_media_pattern: str = "{slug}.media.cdn.sitefleet.test"
