"""The DNS service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RECONCILES = Counter("sitefleet_dns_reconciles_total", "Site reconciles, by outcome", ["outcome"])
CHANGES = Counter("sitefleet_dns_changes_total", "RRsets written or deleted, by change", ["change"])
# From the start of a reconcile until every record answers as wanted (apply -> verified).
VERIFY_SECONDS = Histogram(
    "sitefleet_dns_apply_to_verified_seconds",
    "Seconds from apply to verified answers",
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100),
)
DRIFT = Counter("sitefleet_dns_drift_total", "Sites found drifted by the sweep")
# Provider API calls by provider and HTTP status ("unreachable" when none came back).
API_CALLS = Counter(
    "sitefleet_dns_api_calls_total", "DNS/CDN provider API calls", ["provider", "status"]
)
RATE_LIMITED = Counter(
    "sitefleet_dns_rate_limited_total", "Provider answers 429 (rate limited)", ["provider"]
)
HALTED = Counter(
    "sitefleet_dns_runs_halted_total", "Runs halted by a safety limit, by limit", ["limit"]
)
PURGES = Counter("sitefleet_cdn_purges_total", "CDN purges, by provider", ["provider"])
ACME_CHALLENGES = Counter(
    "sitefleet_dns_acme_challenges_total",
    "DNS-01 challenge TXT jobs, by action (set/clear) and outcome (done/retry)",
    ["action", "outcome"],
)
