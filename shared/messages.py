"""Message schemas: one versioned envelope, and the payload of every job and event type.

Jobs travel on the ``sitefleet.jobs`` exchange, events on ``sitefleet.events``; the routing
key is always the message ``type`` (dotted, events in the past tense).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.logs import current_correlation_id
from shared.timeutil import utcnow


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    message_id: str
    type: str
    occurred_at: datetime
    correlation_id: str
    payload: dict[str, Any]


class Message(BaseModel):
    """Base of all payloads; ``TYPE`` is the message type and routing key."""

    model_config = ConfigDict(extra="ignore")
    TYPE: ClassVar[str]

    def envelope(self, correlation_id: str | None = None) -> Envelope:
        return Envelope(
            message_id=str(uuid.uuid4()),
            type=self.TYPE,
            occurred_at=utcnow(),
            correlation_id=correlation_id or current_correlation_id() or str(uuid.uuid4()),
            payload=self.model_dump(mode="json"),
        )


class ErrorInfo(BaseModel):
    code: str
    message: str


# --- jobs -------------------------------------------------------------------------------


class DeploymentRequested(Message):
    TYPE: ClassVar[str] = "deployment.requested"

    deployment_id: str
    tenant_id: str
    site_id: str
    domain: str
    generation: int
    template: str
    template_version: str
    params: dict[str, Any]
    # Set for a rollback: activate this existing release instead of building.
    rollback_to: str | None = None


class SiteRemovalRequested(Message):
    TYPE: ClassVar[str] = "site.removal_requested"

    tenant_id: str
    site_id: str
    domain: str


class DnsReconcileRequested(Message):
    TYPE: ClassVar[str] = "dns.reconcile_requested"

    tenant_id: str
    site_id: str
    domain: str


class DnsRemovalRequested(Message):
    TYPE: ClassVar[str] = "dns.removal_requested"

    tenant_id: str
    site_id: str
    domain: str


class DomainRegisterRequested(Message):
    """Buy ``domain`` at the configured registrar; ``domain_id`` is the order id (idempotency
    key): however often this job runs, the domain is bought at most once."""

    TYPE: ClassVar[str] = "domain.register_requested"

    domain_id: str
    tenant_id: str
    domain: str
    years: int


# --- events -----------------------------------------------------------------------------

DeploymentStatus = Literal[
    "queued",
    "building",
    "uploading",
    "activating",
    "live",
    "failed",
    "superseded",
    "cancelled",
    "rolled_back",
]


class Phase(BaseModel):
    name: str
    started_at: datetime
    finished_at: datetime | None = None
    status: Literal["running", "succeeded", "failed"]


class LogLine(BaseModel):
    at: datetime = Field(default_factory=utcnow)
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str


class DeploymentStats(BaseModel):
    files: int = 0
    bytes: int = 0
    uploaded_files: int = 0
    uploaded_bytes: int = 0


class DeploymentReport(Message):
    """What the deployer knows about one deployment at one moment."""

    TYPE: ClassVar[str] = "deployment.progressed"

    deployment_id: str
    tenant_id: str
    site_id: str
    domain: str
    generation: int
    status: DeploymentStatus
    at: datetime = Field(default_factory=utcnow)
    phases: list[Phase] = Field(default_factory=list)
    stats: DeploymentStats | None = None
    error: ErrorInfo | None = None
    # Lines to append to the deployment's log (e.g. build step output); phases and the
    # outcome are logged by the API from the report itself.
    log: list[LogLine] = Field(default_factory=list)


class DeploymentProgressed(DeploymentReport):
    TYPE: ClassVar[str] = "deployment.progressed"


class DeploymentSucceeded(DeploymentReport):
    TYPE: ClassVar[str] = "deployment.succeeded"

    # Site paths ("/", "/blog/post/") whose content this deployment changed, for the CDN
    # purge; None when not known (then the whole site is purged). Optional, so events from
    # deployers that do not send it still parse.
    changed_paths: list[str] | None = None


class DeploymentFailed(DeploymentReport):
    TYPE: ClassVar[str] = "deployment.failed"


class DeploymentSuperseded(DeploymentReport):
    TYPE: ClassVar[str] = "deployment.superseded"


class DeploymentCancelRequested(Message):
    """Broadcast to every deployer: stop this deployment if you are running it."""

    TYPE: ClassVar[str] = "deployment.cancel_requested"

    deployment_id: str
    site_id: str


class SiteFilesRemoved(Message):
    TYPE: ClassVar[str] = "site.files_removed"

    tenant_id: str
    site_id: str
    domain: str


class DnsRecordsRemoved(Message):
    TYPE: ClassVar[str] = "dns.records_removed"

    tenant_id: str
    site_id: str
    domain: str


class DnsFailed(Message):
    TYPE: ClassVar[str] = "dns.failed"

    tenant_id: str
    site_id: str
    domain: str
    error: ErrorInfo


class DnsDrifted(Message):
    """The sweep found a site's served records differ from what we applied (and healed)."""

    TYPE: ClassVar[str] = "dns.drift"

    tenant_id: str
    site_id: str
    domain: str
    changes: int
    blocked: int
    # An alert for the notifier: someone changed records we own (healed by the sweep).
    error: ErrorInfo


class DnsRunHalted(Message):
    """A DNS run over many sites (the drift sweep, ``sitefleet dns sync`` of all) would have
    deleted records in more zones than the fleet-wide circuit breaker allows; it wrote
    nothing. An alert for the operators (no tenant, no site)."""

    TYPE: ClassVar[str] = "dns.halted"

    run: str
    zones: list[str]
    error: ErrorInfo


class RolloutCounts(BaseModel):
    total: int
    pending: int
    succeeded: int
    failed: int
    skipped: int


class RolloutFinished(Message):
    """A template rollout stopped moving (ops events: no tenant, no site)."""

    TYPE: ClassVar[str] = "rollout.finished"

    rollout_id: str
    template: str
    from_version: str | None
    to_version: str
    counts: RolloutCounts


class RolloutHalted(RolloutFinished):
    """A wave failed more than the rollout allows; its failed sites were put back on their
    old version. The notifier alerts ops on it."""

    TYPE: ClassVar[str] = "rollout.halted"

    error: ErrorInfo


class RolloutCompleted(RolloutFinished):
    TYPE: ClassVar[str] = "rollout.completed"


class DomainRegistered(Message):
    """Bought and delegated to our nameservers: the domain is ``active``."""

    TYPE: ClassVar[str] = "domain.registered"

    domain_id: str
    tenant_id: str
    domain: str
    registrar: str
    expires_at: datetime | None = None


class DomainVerified(Message):
    """A brought domain's challenge TXT record was found (by the DNS service's checker)."""

    TYPE: ClassVar[str] = "domain.verified"

    domain_id: str
    tenant_id: str
    domain: str
    delegated: bool
    checked_at: datetime = Field(default_factory=utcnow)


class DomainRenewed(Message):
    """Renewed at the registrar (the daily renewal pass); ``expires_at`` is the new expiry."""

    TYPE: ClassVar[str] = "domain.renewed"

    domain_id: str
    tenant_id: str
    domain: str
    expires_at: datetime | None = None


class DomainExpired(Message):
    """The registration lapsed: the API marks the domain ``expired`` and takes the DNS of
    the tenant's sites on it down."""

    TYPE: ClassVar[str] = "domain.expired"

    domain_id: str
    tenant_id: str
    domain: str


class DomainFailed(Message):
    """A registration failed for good, a renewal failed, or the domain is about to expire
    or has expired (``error.code``); an alert for the notifier (``*.failed``)."""

    TYPE: ClassVar[str] = "domain.failed"

    domain_id: str
    tenant_id: str
    domain: str
    registrar: str
    error: ErrorInfo
    # The notifier groups alerts per site; a domain has none.
    site_id: str | None = None


# --- certificates (issue 8) ------------------------------------------------------------
# The certs service (services/certs) runs ACME orders; the deployer, which owns the web
# hosts, serves HTTP-01 answers and writes certificates to them; the DNS service, the one
# writer of each DNS backend, sets DNS-01 TXT records. Each side checks the other's work
# itself (HTTP fetch through nginx, a query to the authoritative servers, a TLS handshake)
# instead of waiting for a reply message.

ChallengeType = Literal["http-01", "dns-01"]


class CertificateRequested(Message):
    """Job for the certs service: make sure the site has a valid certificate (issue one, or
    renew the one it has). Never re-issues while a valid certificate is not due."""

    TYPE: ClassVar[str] = "cert.requested"

    tenant_id: str
    site_id: str
    domain: str
    reason: Literal["deployed", "renewal", "retry", "manual"] = "deployed"


class AcmeHttpChallengeRequested(Message):
    """Job for the deployer: serve (``publish``) or stop serving (``withdraw``) an HTTP-01
    key authorization at ``/.well-known/acme-challenge/<token>`` on every web host of the
    site. ``token`` is base64url (RFC 8555 §8.3); the deployer refuses anything else."""

    TYPE: ClassVar[str] = "site.acme_challenge_requested"

    site_id: str
    domain: str
    token: str
    key_authorization: str
    action: Literal["publish", "withdraw"]


class CertificateInstallRequested(Message):
    """Job for the deployer: write certificate ``certificate_id`` (key and chain read from
    the ``certificates`` table, never carried in a message) to every web host of the site,
    under each of its names, atomically; then emit ``cert.installed``."""

    TYPE: ClassVar[str] = "site.certificate_install_requested"

    site_id: str
    domain: str
    certificate_id: str


class AcmeDnsChallengeRequested(Message):
    """Job for the DNS service: set (or clear) the TXT RRset ``name`` (``_acme-challenge.<d>.``)
    in the site's zone to ``values``, marked as ours; the certs service then checks the
    authoritative servers itself before answering the challenge."""

    TYPE: ClassVar[str] = "dns.acme_challenge_requested"

    tenant_id: str
    site_id: str
    domain: str
    name: str
    values: list[str]
    action: Literal["set", "clear"]


class CertificateInstalled(Message):
    """The deployer wrote the certificate to every web host of the site (event)."""

    TYPE: ClassVar[str] = "cert.installed"

    site_id: str
    domain: str
    certificate_id: str
    host_ids: list[str]


class CertificateIssued(Message):
    """A certificate was issued and installed on every host of the site (event)."""

    TYPE: ClassVar[str] = "cert.issued"

    tenant_id: str
    site_id: str
    domain: str
    certificate_id: str
    names: list[str]
    issuer: str
    not_after: datetime
    challenge: ChallengeType


class CertificateFailed(Message):
    """An order failed (doomed before sending, rejected by the CA, CA unreachable, rate
    limited); ``retry_at`` is when the next attempt is due, if any. Alert (``*.failed``)."""

    TYPE: ClassVar[str] = "cert.failed"

    tenant_id: str
    site_id: str
    domain: str
    error: ErrorInfo
    retry_at: datetime | None = None


class CertificateExpiring(Message):
    """The site's certificate expires soon and renewal has not succeeded. Alert."""

    TYPE: ClassVar[str] = "cert.expiring"

    tenant_id: str
    site_id: str
    domain: str
    not_after: datetime
    error: ErrorInfo


class JobParked(Message):
    """A job gave up (retries exhausted or a permanent error); ``TYPE`` is set per job."""

    TYPE: ClassVar[str] = "job.parked"

    queue: str
    job_type: str
    job_message_id: str
    tenant_id: str | None = None
    site_id: str | None = None
    error: ErrorInfo
    # The parked job's own payload, so subscribers can tell which deployment/site it was.
    job: dict[str, Any] = Field(default_factory=dict)


PAYLOADS: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        DeploymentRequested,
        SiteRemovalRequested,
        DnsReconcileRequested,
        DnsRemovalRequested,
        DeploymentProgressed,
        DeploymentSucceeded,
        DeploymentFailed,
        DeploymentSuperseded,
        DeploymentCancelRequested,
        SiteFilesRemoved,
        DnsRecordsRemoved,
        DnsFailed,
        DnsDrifted,
        DnsRunHalted,
        RolloutHalted,
        RolloutCompleted,
        DomainRegisterRequested,
        DomainRegistered,
        DomainVerified,
        DomainRenewed,
        DomainExpired,
        DomainFailed,
        CertificateRequested,
        AcmeHttpChallengeRequested,
        CertificateInstallRequested,
        AcmeDnsChallengeRequested,
        CertificateInstalled,
        CertificateIssued,
        CertificateFailed,
        CertificateExpiring,
    )
}


def parse_payload(envelope: Envelope) -> Message:
    """The typed payload of an envelope; ``*.parked`` events all share ``JobParked``."""
    if envelope.type.endswith(".parked"):
        return JobParked.model_validate(envelope.payload)
    model = PAYLOADS.get(envelope.type)
    if model is None:
        raise KeyError(envelope.type)
    return model.model_validate(envelope.payload)
