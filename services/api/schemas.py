"""Request and response bodies of the public API (API.md is the contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- identity ---------------------------------------------------------------------------


class TenantRead(BaseModel):
    id: str
    name: str


class TokenRead(BaseModel):
    id: str
    name: str
    created_at: datetime


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=200)


class TokenCreated(BaseModel):
    id: str
    name: str
    token: str


class MeRead(BaseModel):
    tenant: TenantRead
    token: TokenRead


# --- templates --------------------------------------------------------------------------


class TemplateSummary(BaseModel):
    name: str
    title: str
    description: str
    latest_version: str
    versions: list[str]


class TemplateVersionRead(BaseModel):
    version: str
    params_schema: dict[str, Any]
    created_at: datetime


class TemplateDetail(BaseModel):
    name: str
    title: str
    description: str
    latest_version: str
    versions: list[TemplateVersionRead]


# --- sites ------------------------------------------------------------------------------

SiteStatus = Literal["pending", "live", "failed", "deleting"]


class SiteCreate(Strict):
    domain: str = Field(max_length=1000)
    template: str = Field(max_length=64)
    template_version: str | None = Field(default=None, max_length=32)
    params: dict[str, Any] = Field(default_factory=dict)


class SiteUpdate(Strict):
    params: dict[str, Any] | None = None
    template_version: str | None = Field(default=None, max_length=32)


class SiteUrls(BaseModel):
    site: str
    origin: str


# README "HTTPS": pending (no certificate yet, or the first order in progress), active
# (a valid certificate is served), renewing (valid, a newer order in progress or being
# retried: ``error`` says why when it failed), failed (no valid certificate and the newest
# order failed), expired (the certificate served has expired).
TlsStatus = Literal["pending", "active", "renewing", "failed", "expired"]


class TlsError(BaseModel):
    code: str
    message: str


class TlsRead(BaseModel):
    status: TlsStatus = "pending"
    expires_at: datetime | None = None
    issuer: str | None = None
    error: TlsError | None = None


class SiteRead(BaseModel):
    id: str
    domain: str
    template: str
    template_version: str
    params: dict[str, Any]
    status: SiteStatus
    live_deployment_id: str | None
    latest_deployment_id: str | None
    created_at: datetime
    updated_at: datetime
    urls: SiteUrls
    tls: TlsRead = Field(default_factory=TlsRead)


# --- deployments ------------------------------------------------------------------------


class DeploymentCreate(Strict):
    reason: str | None = Field(default=None, max_length=500)


class RollbackCreate(Strict):
    deployment_id: str | None = Field(default=None, max_length=64)


class LogLineRead(BaseModel):
    at: datetime
    level: str
    message: str


class DeploymentLogs(BaseModel):
    lines: list[LogLineRead]


class HookCreate(Strict):
    name: str = Field(min_length=1, max_length=200)


class HookCreated(BaseModel):
    id: str
    name: str
    url: str


class HookRead(BaseModel):
    id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None


class HookTriggered(BaseModel):
    deployment_id: str


class DeploymentError(BaseModel):
    code: str
    message: str


class PhaseRead(BaseModel):
    name: str
    started_at: datetime
    finished_at: datetime | None
    status: str


class DeploymentStatsRead(BaseModel):
    files: int = 0
    bytes: int = 0
    uploaded_files: int = 0
    uploaded_bytes: int = 0


class DeploymentRead(BaseModel):
    id: str
    site_id: str
    generation: int
    status: str
    reason: str | None
    template_version: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: DeploymentError | None
    phases: list[PhaseRead]
    stats: DeploymentStatsRead


# --- dns --------------------------------------------------------------------------------


class DnsRecordRead(BaseModel):
    name: str
    type: str
    content: str
    ttl: int
    status: Literal["pending", "applied", "verified", "error"]
    error: str | None


class DnsRead(BaseModel):
    zone: str
    records: list[DnsRecordRead]


# --- template rollouts ------------------------------------------------------------------

_VERSION_PATTERN = r"^\d+\.\d+\.\d+$"


class RolloutCreate(Strict):
    to_version: str = Field(pattern=_VERSION_PATTERN, max_length=32)
    # Default: every site of the template that is not on ``to_version`` yet.
    from_version: str | None = Field(default=None, pattern=_VERSION_PATTERN, max_length=32)
    canary: int = Field(default=1, ge=0, le=1000)
    batch_size: int = Field(default=10, ge=1, le=1000)
    # A wave whose failed / attempted ratio is above this halts the rollout.
    max_failure_ratio: float = Field(default=0.1, ge=0.0, le=1.0)


class RolloutCountsRead(BaseModel):
    total: int
    pending: int
    succeeded: int
    failed: int
    skipped: int


class RolloutRead(BaseModel):
    id: str
    template: str
    from_version: str | None
    to_version: str
    status: Literal["running", "paused", "halted", "completed", "aborted"]
    counts: RolloutCountsRead
    canary: int
    batch_size: int
    max_failure_ratio: float
    wave: int
    halt_reason: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class RolloutSiteRead(BaseModel):
    site_id: str
    domain: str
    wave: int
    status: Literal["pending", "deploying", "succeeded", "failed", "skipped"]
    from_version: str | None
    deployment_id: str | None
    restore_deployment_id: str | None
    reason: str | None


# --- domains ----------------------------------------------------------------------------


class DomainCreate(Strict):
    name: str = Field(min_length=1, max_length=253)
    years: int = Field(default=1, ge=1, le=10)
    bring_your_own: bool = False


class DomainUpdate(Strict):
    auto_renew: bool


class PriceRead(BaseModel):
    amount: str
    currency: str


class DomainCheckRead(BaseModel):
    name: str
    available: bool
    price: PriceRead | None
    # Why it is not available (an addition to API.md).
    reason: str | None = None


class VerificationRead(BaseModel):
    txt_name: str
    txt_value: str
    nameservers: list[str]


class DomainFailure(BaseModel):
    code: str
    message: str


class DomainRead(BaseModel):
    name: str
    status: Literal["registering", "pending_verification", "active", "failed", "expired"]
    registrar: str | None
    expires_at: datetime | None
    verification: VerificationRead
    verified_at: datetime | None
    # Additions to API.md: how it came here, whether it is renewed before it expires,
    # whether the NS delegation points at us (last check), and why the registration or the
    # last verification failed.
    bring_your_own: bool
    auto_renew: bool
    delegated: bool | None
    checked_at: datetime | None
    failure: DomainFailure | None
    created_at: datetime
