"""Prometheus counters of the notifier (served by ``prometheus_client`` when
``metrics_port`` is set)."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS_IN = Counter("sitefleet_notifier_events_total", "Events taken in, by outcome", ["outcome"])
SUPPRESSED = Counter(
    "sitefleet_notifier_suppressed_total",
    "Occurrences folded into an open group instead of a notification of their own",
)
NOTIFICATIONS = Counter(
    "sitefleet_notifier_notifications_total", "Group notifications scheduled, by kind", ["kind"]
)
SENT = Counter(
    "sitefleet_notifier_deliveries_sent_total",
    "Notifications delivered, by channel type",
    ["channel_type"],
)
FAILURES = Counter(
    "sitefleet_notifier_delivery_failures_total",
    "Failed delivery attempts, by channel type",
    ["channel_type"],
)
THROTTLED = Counter(
    "sitefleet_notifier_deliveries_throttled_total",
    "Deliveries postponed by a rate limit",
    ["channel_type"],
)
UNHEALTHY = Counter("sitefleet_notifier_channels_unhealthy_total", "Channels that turned unhealthy")
