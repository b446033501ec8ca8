"""Settings of the certs service (env prefix ``SITEFLEET_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings, WebHostSettings

LETS_ENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


class CertsSettings(CommonSettings, WebHostSettings):
    model_config = SettingsConfigDict(env_prefix="SITEFLEET_", extra="ignore")

    # --- the CA ---
    # The ACME directory: LETS_ENCRYPT_PRODUCTION or LETS_ENCRYPT_STAGING above (or any RFC
    # 8555 CA). Empty: ACME is off (the service consumes and records nothing is ordered).
    acme_directory_url: str = ""
    # Contact address registered with the ACME account (expiry mail from the CA); optional.
    acme_contact_email: str = ""
    # PEM file of the CA(s) to trust for the ACME server's HTTPS; empty: the system's.
    acme_ca_bundle: str = ""
    acme_challenge: Literal["http-01", "dns-01"] = "http-01"
    # Order the apex and a wildcard (``*.<domain>``, standing for www, proxy and any other
    # name under the site) instead of naming apex, www and proxy; always through DNS-01
    # (CAs validate wildcards only by DNS).
    acme_wildcard: bool = False

    @property
    def acme_enabled(self) -> bool:
        """ACME is on once a CA directory is configured."""
        return bool(self.acme_directory_url)

    @property
    def challenge(self) -> Literal["http-01", "dns-01"]:
        """The challenge orders use: DNS-01 whenever a wildcard is ordered."""
        return "dns-01" if self.acme_wildcard else self.acme_challenge

    # Seconds per HTTP request to the CA.
    acme_timeout: float = 30.0
    # Seconds an order may take at the CA (validation, then issuance) before we give up
    # on this attempt (retried through the ladder).
    acme_order_timeout: float = 120.0
    # Seconds between polls of the CA while it validates or issues.
    acme_poll_interval: float = 1.0

    # --- checking the other services' work ourselves ---
    # The authoritative servers ("host:port") asked for the TXT records of DNS-01 and for
    # where a site's names point; empty: dns_host:dns_port (our PowerDNS).
    acme_nameservers: list[str] = Field(default_factory=list)
    dns_host: str = "127.0.0.1"
    dns_port: int = 5354
    # "host:port" of the resolver the HTTP-01 preflight asks where a site's names point.
    # A recursive resolver sees the domain's real delegation (a domain whose NS records
    # point elsewhere is caught); empty: the first of the authoritative servers above.
    acme_resolver: str = ""
    # Addresses that count as "ours" besides the web hosts' public addresses, e.g. a CDN's
    # edges that pass /.well-known/acme-challenge/ through to the origin.
    acme_extra_addresses: list[str] = Field(default_factory=list)
    # Seconds to wait for the deployer to serve an HTTP-01 answer on every host, or for
    # the DNS service's TXT record to be served, before the attempt fails (retried).
    challenge_timeout: float = 60.0
    challenge_poll_interval: float = 0.5
    # Seconds per TLS handshake of the check that an installed certificate is served (at
    # each host's web_hosts.https_port, else SITEFLEET_HTTPS_PORT).
    tls_check_timeout: float = 5.0

    # --- lifecycle ---
    # Renew when this share of the certificate's lifetime remains (Let's Encrypt: 1/3).
    cert_renew_fraction: float = Field(default=1 / 3, gt=0, le=1)
    # Seconds between sweeps (renewals due, failed orders due again, expiry warnings);
    # 0 = off.
    cert_sweep_interval: float = 300.0
    # Warn (cert.expiring) when a site's certificate expires within this many seconds and
    # no renewal has succeeded; repeated at most every cert_warn_repeat seconds.
    cert_warn_before: float = 14 * 86400.0
    cert_warn_repeat: float = 86400.0
    # Seconds to wait before retrying an order that failed for good reasons (DNS not
    # pointing here, the CA rejected a challenge): one step per attempt, last one repeats.
    # A CA's Retry-After (rate limits) overrides it when longer.
    cert_retry_backoff: list[float] = Field(
        default_factory=lambda: [300.0, 1800.0, 7200.0, 21600.0, 86400.0]
    )
    # An order claimed this many seconds ago and not finished belongs to a dead worker.
    cert_stale_after: float = 900.0
    # Seconds the orders (then the events) in hand get to finish after SIGTERM; an order
    # still running then is handed back (its row ``requested``) and redelivered.
    certs_shutdown_grace: float = Field(default=30.0, ge=0)
