"""Database tables. Each table names its one writing service; others may only read it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Tenant(Base):
    """Writer: api."""

    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = _now()


class ApiToken(Base):
    """Writer: api. Only the SHA-256 of a token is stored; the secret is shown once."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default="tenant")  # tenant | ops
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TemplateVersion(Base):
    """Writer: api (``services/api/template_registry.py``, also run by ``sitefleet templates
    publish``). The published content hash of each template version: a version is
    immutable, and the API and the deployer refuse a pack that no longer matches it."""

    __tablename__ = "template_versions"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)
    params_schema: Mapped[dict[str, Any]]
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()


class Site(Base):
    """Writer: api (desired state, and the status it learns from events)."""

    __tablename__ = "sites"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    domain: Mapped[str] = mapped_column(String(253), unique=True)
    template: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # Highest deployment generation requested; older jobs are fenced off as superseded.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    live_deployment_id: Mapped[str | None] = mapped_column(String(64))
    latest_deployment_id: Mapped[str | None] = mapped_column(String(64))
    files_removed: Mapped[bool] = mapped_column(Boolean, default=False)
    dns_removed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Deployment(Base):
    """Writer: api (from the deployer's events)."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("site_id", "generation"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    reason: Mapped[str | None] = mapped_column(String(500))
    template_version: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    rollback_to: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    phases: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    stats: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Set once the release was served; what `rollback` may return to.
    went_live_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DeploymentLogLine(Base):
    """Writer: api (from the deployer's reports). The log of one deployment, in order."""

    __tablename__ = "deployment_logs"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)


class DeployHook(Base):
    """Writer: api. A URL a customer's CI POSTs to start a deployment; the secret in the URL
    is the credential, so only its SHA-256 is kept. ``tokens``/``refilled_at`` are the
    hook's rate-limit bucket."""

    __tablename__ = "deploy_hooks"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tokens: Mapped[float] = mapped_column(Float)
    refilled_at: Mapped[datetime] = _now()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class OutboxMessage(Base):
    """Writer: api. Written in the transaction of the change it announces; the relay
    publishes pending rows with confirms and only then marks them published."""

    __tablename__ = "outbox"
    __table_args__ = (Index("outbox_pending", "id", postgresql_where="published_at IS NULL"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(64))
    exchange: Mapped[str] = mapped_column(String(64))
    routing_key: Mapped[str] = mapped_column(String(128))
    body: Mapped[str] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """Writer: api. The first response to a POST with an ``Idempotency-Key``, kept 24 h."""

    __tablename__ = "idempotency_keys"
    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = _now()


class DnsRecord(Base):
    """Writer: dns. The desired records of a site and how far each got."""

    __tablename__ = "dns_records"
    __table_args__ = (UniqueConstraint("site_id", "name", "type", "content"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(String(64), index=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    zone: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(String(1024))
    ttl: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = _now()


# --- notifications ----------------------------------------------------------------------


class NotificationChannel(Base):
    """Writer: api. A tenant's alert channel. ``secret`` signs webhook bodies (HMAC-SHA256),
    so it is kept in clear; it is shown to the tenant once, at creation."""

    __tablename__ = "notification_channels"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(16))  # webhook | slack | email
    target: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]] = mapped_column(JSONB)
    secret: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = _now()


class AlertGroup(Base):
    """Writer: notifier. Occurrences of one failure fingerprint, and the group's timers.

    One open (``resolved_at IS NULL``) group per fingerprint; a recovery closes it and the
    next failure opens a new one. ``pending_count`` occurrences are not yet in any
    notification; ``count = notified_count + pending_count`` always holds.
    """

    __tablename__ = "alert_groups"
    __table_args__ = (
        Index(
            "alert_groups_open_fingerprint",
            "fingerprint",
            unique=True,
            postgresql_where="resolved_at IS NULL",
        ),
        Index("alert_groups_due", "next_notify_at", postgresql_where="next_notify_at IS NOT NULL"),
        Index("alert_groups_open_site", "site_id", postgresql_where="resolved_at IS NULL"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    site_id: Mapped[str | None] = mapped_column(String(64))
    service: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(64))
    error_code: Mapped[str] = mapped_column(String(128))
    summary: Mapped[str] = mapped_column(Text)
    last_message: Mapped[str] = mapped_column(Text)
    last_event_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="firing")  # firing | resolved
    count: Mapped[int] = mapped_column(BigInteger, default=1)
    pending_count: Mapped[int] = mapped_column(BigInteger, default=1)
    notified_count: Mapped[int] = mapped_column(BigInteger, default=0)
    notifications: Mapped[int] = mapped_column(Integer, default=0)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the scheduler must look at the group next; NULL once nothing more is due.
    next_notify_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ProcessedEvent(Base):
    """Writer: notifier. Envelope ids already counted (dedupe of redelivered events)."""

    __tablename__ = "notifier_processed_events"
    message_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    processed_at: Mapped[datetime] = _now()


class NotificationDelivery(Base):
    """Writer: notifier. The delivery outbox: one row per notification per channel, written
    in the transaction that advances the group's timers; sent by the delivery loop."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        Index(
            "notification_deliveries_due", "next_attempt_at", postgresql_where="status = 'pending'"
        ),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # A tenant channel's id, or ``ops:<sha256 of the URL>`` for an ops channel from settings.
    channel_key: Mapped[str] = mapped_column(String(80), index=True)
    kind: Mapped[str] = mapped_column(String(24))  # firing | digest | repeat | resolved | ...
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sent|cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ChannelHealth(Base):
    """Writer: notifier. Consecutive delivery failures per channel; unhealthy past a limit."""

    __tablename__ = "notification_channel_health"
    channel_key: Mapped[str] = mapped_column(String(80), primary_key=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    unhealthy_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = _now()


# --- web hosts --------------------------------------------------------------------------


class WebHost(Base):
    """Writer: deployer (``services/deployer/hosts.py``, run by ``sitefleet host``). A web
    host the deployer releases sites to. ``host_key`` is the server's public key (OpenSSH
    line) fetched and pinned when the host was added; nothing else is trusted."""

    __tablename__ = "web_hosts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # local | ssh
    ssh_user: Mapped[str | None] = mapped_column(String(64))
    ssh_address: Mapped[str | None] = mapped_column(String(255))
    ssh_port: Mapped[int | None] = mapped_column(Integer)
    ssh_key_path: Mapped[str | None] = mapped_column(String(1024))
    host_key: Mapped[str | None] = mapped_column(Text)
    sites_root: Mapped[str] = mapped_column(String(1024))
    objects_root: Mapped[str | None] = mapped_column(String(1024))
    # Where the host's nginx answers the post-activation health check (Host header = site).
    http_host: Mapped[str] = mapped_column(String(255))
    http_port: Mapped[int] = mapped_column(Integer)
    # Addresses published in DNS for the sites on this host.
    public_addresses: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    # The host's nginx for per-site rules: argv that runs it ("-t -q" / "-s reload" are
    # appended, e.g. ["sudo", "-n", "/usr/sbin/nginx"]) and its catch-all's listen address.
    # None: the host serves plain sites only.
    nginx_command: Mapped[list[Any] | None] = mapped_column(JSONB)
    nginx_listen: Mapped[str | None] = mapped_column(String(255))
    # The port of its nginx's TLS listener at http_host; None: SITEFLEET_HTTPS_PORT.
    https_port: Mapped[int | None] = mapped_column(Integer)
    # A disabled host gets no new sites; the sites already on it keep deploying to it.
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = _now()


class SiteHost(Base):
    """Writer: deployer. The web hosts a site lives on, chosen at its first deployment and
    kept; removed when the site's files are. A host with sites cannot be removed."""

    __tablename__ = "site_hosts"
    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[str] = mapped_column(
        ForeignKey("web_hosts.id", ondelete="RESTRICT"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = _now()


# --- template rollouts ------------------------------------------------------------------


class Rollout(Base):
    """Writer: api (the rollout driver). Upgrading every site of a template to another
    version: canary sites (wave 0), then waves of ``batch_size``. At most one running or
    paused rollout per template (partial unique index)."""

    __tablename__ = "rollouts"
    __table_args__ = (
        Index(
            "rollouts_one_active_per_template",
            "template",
            unique=True,
            postgresql_where="status IN ('running', 'paused')",
        ),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    template: Mapped[str] = mapped_column(String(64))
    # None: every site of the template not already on ``to_version``.
    from_version: Mapped[str | None] = mapped_column(String(32))
    to_version: Mapped[str] = mapped_column(String(32))
    canary: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    max_failure_ratio: Mapped[float] = mapped_column(Float)
    # running | paused | halted | completed | aborted
    status: Mapped[str] = mapped_column(String(16), default="running")
    # The wave being deployed (0 = the canaries).
    wave: Mapped[int] = mapped_column(Integer, default=0)
    halt_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RolloutSite(Base):
    """Writer: api (the rollout driver). One site of a rollout and how far it got:
    ``pending`` -> ``deploying`` -> ``succeeded`` | ``failed`` | ``skipped`` (with why).
    ``site_id`` is no foreign key: the record outlives a deleted site."""

    __tablename__ = "rollout_sites"
    __table_args__ = (Index("rollout_sites_wave", "rollout_id", "wave", "status"),)
    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    domain: Mapped[str] = mapped_column(String(253))
    wave: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    # What the site ran before its upgrade, to put it back on if the upgrade fails.
    from_version: Mapped[str | None] = mapped_column(String(32))
    from_params: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    deployment_id: Mapped[str | None] = mapped_column(String(64))
    # The deployment that put a failed site back on its old version (if it had gone live).
    restore_deployment_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = _now()


# --- domains ----------------------------------------------------------------------------


class Domain(Base):
    """Writer: api (what a tenant asked for, and the status it learns from the DNS service's
    ``domain.*`` events). A name is *claimed* (``registering`` or ``active``) by one tenant
    at most; several tenants may wait to verify the same brought name (an unproven claim
    must not lock the real owner out), and the first to prove it wins. ``skeleton`` is the
    name with look-alike characters folded (``shared.domains.domain_skeleton``) so a
    homograph of a customer's domain is refused."""

    __tablename__ = "domains"
    __table_args__ = (
        UniqueConstraint("tenant_id", "name"),
        Index(
            "domains_claimed_name",
            "name",
            unique=True,
            postgresql_where="status IN ('registering', 'active')",
        ),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(253), index=True)
    skeleton: Mapped[str] = mapped_column(String(253), index=True)
    # registering | pending_verification | active | failed | expired
    status: Mapped[str] = mapped_column(String(32))
    bring_your_own: Mapped[bool] = mapped_column(Boolean, default=False)
    # The registrar that sold it (``sandbox``, ``namecom``); NULL for a brought domain.
    registrar: Mapped[str | None] = mapped_column(String(32))
    years: Mapped[int | None] = mapped_column(Integer)
    # A bought domain is renewed before it expires unless the tenant turned this off.
    auto_renew: Mapped[bool] = mapped_column(Boolean, default=True)
    # The secret a brought domain publishes at ``_sitefleet-challenge.<name>`` (TXT).
    txt_value: Mapped[str] = mapped_column(String(128))
    # Whether the last check saw the NS delegation point at our nameservers.
    delegated: Mapped[bool | None] = mapped_column(Boolean)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Why the registration or the last verification failed: {"code", "message"}.
    failure: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class RegistrarOrder(Base):
    """Writer: dns. One purchase of a domain at a registrar, keyed by the API's domain id
    (the order id sent as the registrar's idempotency key). ``status`` only moves forward:
    ``new -> submitted -> registered -> active`` or ``failed``; a job retried after
    ``submitted`` asks the registrar whether the domain is already ours before buying."""

    __tablename__ = "registrar_orders"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(253), index=True)
    registrar: Mapped[str] = mapped_column(String(32))
    years: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="new")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    registrar_order_id: Mapped[str | None] = mapped_column(String(128))
    # The registration's expiry as the registrar last told us (renewals move it).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The smallest "days before expiry" warning already sent for this expiry date, so each
    # warning goes out once; reset by a renewal.
    warned_days: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class SandboxRegistration(Base):
    """Writer: dns (the ``sandbox`` registrar, ``shared/registrar/sandbox.py``). The sandbox
    registrar's own books: the domains it has "sold", as a real registrar would keep them."""

    __tablename__ = "sandbox_registrations"
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(64), unique=True)
    years: Mapped[int] = mapped_column(Integer)
    price: Mapped[str] = mapped_column(String(16))
    nameservers: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    contact: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Renewal order ids already applied (a renewal retried with its id renews once).
    renewals: Mapped[list[Any]] = mapped_column(JSONB, default=list)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


# --- certificates -----------------------------------------------------------------------


class AcmeAccount(Base):
    """Writer: certs. The installation's ACME account at one CA directory (one key per
    installation and directory; Let's Encrypt staging and production are separate CAs)."""

    __tablename__ = "acme_accounts"
    directory_url: Mapped[str] = mapped_column(String(500), primary_key=True)
    key_pem: Mapped[str] = mapped_column(Text)
    account_url: Mapped[str | None] = mapped_column(String(500))
    contact: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = _now()


class Certificate(Base):
    """Writer: certs. One row per certificate order of a site (issuance or renewal).

    The site's certificate in use is its newest ``installed`` row; a renewal is a new row
    that takes over once installed on every host. The deployer reads ``private_key_pem``
    and ``certificate_pem`` (the full chain) by id to write them to the hosts."""

    __tablename__ = "certificates"
    __table_args__ = (
        Index("certificates_site_created", "site_id", "created_at"),
        Index("certificates_status", "status", "next_attempt_at"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(String(64))
    domain: Mapped[str] = mapped_column(String(253))
    names: Mapped[list[Any]]
    challenge: Mapped[str] = mapped_column(String(16))
    # requested -> ordering -> issued -> installed; failed; superseded (a newer one took over)
    status: Mapped[str] = mapped_column(String(16), default="requested")
    order_url: Mapped[str | None] = mapped_column(String(500))
    private_key_pem: Mapped[str | None] = mapped_column(Text)
    certificate_pem: Mapped[str | None] = mapped_column(Text)
    issuer: Mapped[str | None] = mapped_column(String(500))
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Not before this instant (the CA's Retry-After / rate limit, or our backoff).
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    installed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()
    # When the last cert.expiring warning for this certificate went out (migration 0010).
    warned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
