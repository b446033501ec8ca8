"""What an event means to the notifier: a failure occurrence with its fingerprint, or a
recovery. Anything else is invalid here (the consumer helper parks it with the reason)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.errors import Invalid
from shared.messages import Envelope

FAILURE_SUFFIXES = (".failed", ".parked", ".drift", ".halted", ".expiring")
RECOVERY_SUFFIX = ".succeeded"
# Recoveries not named ``*.succeeded``: a certificate issued (and installed on every host)
# resolves the site's open ``cert.*`` alerts (a failed order, one expiring).
RECOVERY_TYPES = frozenset({"cert.issued"})

# Order matters: ids and uuids before bare hex, bare hex before numbers.
_NORMALIZERS = (
    (re.compile(r"\b[a-z]+_[0-9a-f]{8,}\b"), "<id>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<id>"),
    (re.compile(r"\b0x[0-9a-f]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{6,}\b"), "<hex>"),
    (re.compile(r"\d+"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def normalize_message(message: str) -> str:
    """``"upload to 10.0.0.7 failed after 3012 ms (dep_0193ab...)"`` ->
    ``"upload to <n>.<n>.<n>.<n> failed after <n> ms (<id>)"``."""
    text = message.lower()
    for pattern, replacement in _NORMALIZERS:
        text = pattern.sub(replacement, text)
    return text.strip()[:500]


@dataclass(frozen=True)
class Occurrence:
    """One failure event, reduced to what groups it."""

    event_id: str
    event_type: str
    service: str
    tenant_id: str | None
    site_id: str | None
    error_code: str
    message: str
    subject: str
    occurred_at: datetime
    # What the alert needs besides its error, said before it (e.g. when a certificate
    # order is tried again); never part of the fingerprint.
    detail: str = ""

    @property
    def fingerprint(self) -> str:
        parts = (
            self.service,
            self.tenant_id or "",
            self.site_id or "",
            self.error_code,
            normalize_message(self.message),
        )
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]

    @property
    def summary(self) -> str:
        detail = f"{self.detail}: " if self.detail else ""
        return f"{self.event_type} {self.subject}: {detail}[{self.error_code}] {self.message}"[
            :1000
        ]


@dataclass(frozen=True)
class Recovery:
    event_id: str
    service: str
    tenant_id: str
    site_id: str
    occurred_at: datetime


def _text(value: object, field: str, *, required: bool) -> str | None:
    if value is None or value == "":
        if required:
            raise Invalid(
                f"alert event is missing {field!r}",
                code="invalid_alert_event",
                details={"fields": [{"field": field, "message": "required"}]},
            )
        return None
    if not isinstance(value, str):
        raise Invalid(f"alert event field {field!r} must be a string", code="invalid_alert_event")
    return value


def interpret(envelope: Envelope) -> Occurrence | Recovery:
    """Raises ``Invalid`` for an event that is neither a failure nor a recovery."""
    service, _, _ = envelope.type.partition(".")
    data = envelope.payload
    tenant_id = _text(data.get("tenant_id"), "tenant_id", required=False)
    site_id = _text(data.get("site_id"), "site_id", required=False)
    if envelope.type.endswith(RECOVERY_SUFFIX) or envelope.type in RECOVERY_TYPES:
        return Recovery(
            event_id=envelope.message_id,
            service=service,
            tenant_id=_text(tenant_id, "tenant_id", required=True) or "",
            site_id=_text(site_id, "site_id", required=True) or "",
            occurred_at=envelope.occurred_at,
        )
    if not envelope.type.endswith(FAILURE_SUFFIXES):
        raise Invalid(
            f"event type {envelope.type!r} is neither a failure nor a recovery",
            code="unknown_alert_event",
        )
    error = data.get("error")
    if not isinstance(error, dict):
        raise Invalid(
            "failure event has no error",
            code="invalid_alert_event",
            details={"fields": [{"field": "error", "message": "required"}]},
        )
    subject = data.get("domain") or site_id or data.get("queue") or data.get("template") or ""
    return Occurrence(
        event_id=envelope.message_id,
        event_type=envelope.type,
        service=service,
        tenant_id=tenant_id,
        site_id=site_id,
        error_code=_text(error.get("code"), "error.code", required=True) or "",
        message=_text(error.get("message"), "error.message", required=False) or "",
        subject=str(subject),
        occurred_at=envelope.occurred_at,
        detail=_detail(envelope.type, data),
    )


def _when(value: object) -> str:
    """An ISO instant from an event, as people read it in an alert."""
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)[:40]
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _detail(event_type: str, data: dict[str, object]) -> str:
    """Certificates (issue 8): what was being done and when it is tried again, or when the
    certificate in use runs out (the error says why)."""
    if event_type == "cert.failed":
        retry_at = data.get("retry_at")
        return "certificate not issued, " + (
            f"next attempt {_when(retry_at)}" if retry_at else "no further attempt scheduled"
        )
    if event_type == "cert.expiring":
        return f"certificate expires {_when(data.get('not_after'))}, renewal not done"
    return ""
