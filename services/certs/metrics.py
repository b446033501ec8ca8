"""The certs service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# issued | skipped | dns_not_pointing | rejected | rate_limited | retry | failed
ORDERS = Counter("sitefleet_cert_orders_total", "ACME orders, by outcome", ["outcome"])
INSTALLED = Counter("sitefleet_certs_installed_total", "Certificates verified served on every host")
ORDER_SECONDS = Histogram(
    "sitefleet_cert_order_seconds",
    "Seconds from claiming an order to the certificate issued",
    buckets=(1, 3, 10, 30, 60, 120, 300),
)
SOONEST_EXPIRY = Gauge(
    "sitefleet_cert_soonest_expiry_seconds",
    "Seconds until the soonest-expiring certificate in use expires (set by the sweep)",
)
