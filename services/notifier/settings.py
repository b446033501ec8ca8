"""Settings of the notifier service (env prefix ``SITEFLEET_``; times in seconds)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class NotifierSettings(CommonSettings):
    # Ops webhook channels: they receive every notification, and reports about channels
    # that turned unhealthy. Configured by the operator, so the SSRF guard does not apply.
    ops_webhook_urls: list[str] = Field(default_factory=list)
    # Signs ops webhook bodies like a tenant channel's secret does (unsigned when empty).
    ops_webhook_secret: str = ""
    webhook_timeout: float = 10.0

    # Alertmanager's timers: first notification of a group after group_wait, then at most
    # one per group_interval while new occurrences arrive, and a reminder after
    # repeat_interval while the group keeps firing without news.
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0

    # Tenant channel targets resolving to loopback/private/link-local addresses are refused.
    allow_private_targets: bool = False

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "alerts@sitefleet.invalid"
    smtp_timeout: float = 10.0

    # Token bucket per channel, by channel type: sustained messages/second and burst size.
    channel_rates: dict[str, float] = Field(
        default_factory=lambda: {"webhook": 10.0, "slack": 1.0, "email": 1.0}
    )
    channel_bursts: dict[str, float] = Field(
        default_factory=lambda: {"webhook": 20.0, "slack": 1.0, "email": 5.0}
    )
    # Backoff of a failed delivery, by attempt; the last step repeats forever (never dropped).
    delivery_backoff: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0]
    )
    # Consecutive failures after which a channel is reported unhealthy to the ops channels.
    unhealthy_after: int = 5
    delivery_workers: int = 4
    # How often the scheduler looks for due groups; idle delivery workers are woken by
    # the scheduler in-process, and poll for retries and other processes' rows.
    poll_interval: float = 0.5
    delivery_poll_interval: float = 1.0
    scheduler_batch: int = 200
    # How long an envelope id is remembered for deduplication.
    dedupe_window: float = 7 * 86400.0
    # Prometheus metrics on this port (0 = off).
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
