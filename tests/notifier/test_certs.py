"""Certificate alerts (issue 8): ``cert.failed`` and ``cert.expiring`` are grouped per site
like every alert and say the domain, the error and when the order is tried again (or when
the certificate runs out) on webhook, Slack and email; ``cert.issued`` resolves them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from services.notifier.channels import ops_channels
from services.notifier.consumer import EventIntake
from services.notifier.fingerprint import Occurrence, Recovery, interpret
from services.notifier.grouping import Outcome, Timers
from services.notifier.render import email_message, slack_payload, text_of
from services.notifier.scheduler import schedule_due
from shared import broker
from shared.db import SessionMaker
from shared.ids import new_id
from shared.messages import (
    CertificateExpiring,
    CertificateFailed,
    CertificateIssued,
    Envelope,
    ErrorInfo,
)
from shared.models import AlertGroup, NotificationChannel, NotificationDelivery, Tenant
from tests.notifier.conftest import Clock, succeeded

TIMERS = Timers.of_seconds(30, 300, 4 * 3600)
OPS = ops_channels(["http://ops.invalid/hook"], "")
DOMAIN = "rosas-bakery.example"


def cert_failed(
    site_id: str = "site_1",
    *,
    retry_at: datetime | None = datetime(2026, 1, 1, 3, 0, tzinfo=UTC),
    message: str = "too many certificates (5) already issued for this exact set of domains",
    code: str = "rate_limited",
) -> Envelope:
    return CertificateFailed(
        tenant_id="ten_a",
        site_id=site_id,
        domain=DOMAIN,
        error=ErrorInfo(code=code, message=message),
        retry_at=retry_at,
    ).envelope()


def cert_expiring(site_id: str = "site_1") -> Envelope:
    return CertificateExpiring(
        tenant_id="ten_a",
        site_id=site_id,
        domain=DOMAIN,
        not_after=datetime(2026, 1, 8, 12, 30, tzinfo=UTC),
        error=ErrorInfo(code="renewal_failing", message="renewal failed 3 times"),
    ).envelope()


def cert_issued(site_id: str = "site_1") -> Envelope:
    return CertificateIssued(
        tenant_id="ten_a",
        site_id=site_id,
        domain=DOMAIN,
        certificate_id="crt_1",
        names=[DOMAIN, f"www.{DOMAIN}"],
        issuer="CN=Pebble Intermediate CA",
        not_after=datetime(2026, 4, 1, tzinfo=UTC),
        challenge="http-01",
    ).envelope()


def test_cert_failed_is_an_occurrence_saying_domain_error_and_next_attempt() -> None:
    first = interpret(cert_failed())
    assert isinstance(first, Occurrence)
    assert (first.service, first.site_id, first.error_code, first.subject) == (
        "cert",
        "site_1",
        "rate_limited",
        DOMAIN,
    )
    assert first.summary == (
        f"cert.failed {DOMAIN}: certificate not issued, next attempt 2026-01-01 03:00 UTC: "
        "[rate_limited] too many certificates (5) already issued for this exact set of domains"
    )
    # Another attempt time or count is the same alert; another site is another.
    again = interpret(
        cert_failed(
            retry_at=datetime(2026, 1, 2, tzinfo=UTC), message=first.message.replace("5", "6")
        )
    )
    other = interpret(cert_failed("site_2"))
    assert isinstance(again, Occurrence) and isinstance(other, Occurrence)
    assert first.fingerprint == again.fingerprint != other.fingerprint
    parked_for_good = interpret(cert_failed(retry_at=None))
    assert isinstance(parked_for_good, Occurrence)
    assert "no further attempt scheduled" in parked_for_good.summary


def test_cert_expiring_is_an_occurrence_and_cert_issued_a_recovery() -> None:
    expiring = interpret(cert_expiring())
    assert isinstance(expiring, Occurrence)
    assert expiring.summary == (
        f"cert.expiring {DOMAIN}: certificate expires 2026-01-08 12:30 UTC, renewal not done: "
        "[renewal_failing] renewal failed 3 times"
    )
    issued = interpret(cert_issued())
    assert isinstance(issued, Recovery)
    assert (issued.service, issued.tenant_id, issued.site_id) == ("cert", "ten_a", "site_1")


def test_the_notifier_queue_receives_certificate_alerts_and_recoveries() -> None:
    bindings = broker.NOTIFIER_EVENTS.bindings
    assert "*.failed" in bindings and "cert.expiring" in bindings and "cert.issued" in bindings


async def deliveries(db: SessionMaker) -> list[NotificationDelivery]:
    async with db() as session:
        rows = await session.scalars(select(NotificationDelivery).order_by(NotificationDelivery.id))
        return list(rows)


async def tick(db: SessionMaker, clock: Clock) -> int:
    async with db.begin() as session:
        return (await schedule_due(session, TIMERS, OPS, clock())).notifications


async def test_cert_alerts_are_grouped_rendered_and_resolved_by_an_issued_certificate(
    db: SessionMaker, clock: Clock
) -> None:
    async with db.begin() as session:
        session.add(Tenant(id="ten_a", name="a"))
        await session.flush()
        session.add(
            NotificationChannel(
                id=new_id("nch"),
                tenant_id="ten_a",
                type="webhook",
                target="https://hooks.example/x",
                events=["cert.failed", "cert.expiring"],
                secret="k",
            )
        )
    intake = EventIntake(db, TIMERS, clock)
    assert await intake.take(cert_failed()) is Outcome.OPENED
    assert (
        await intake.take(cert_failed(retry_at=datetime(2026, 1, 1, 6, tzinfo=UTC)))
        is Outcome.FOLDED
    )
    assert await intake.take(cert_expiring()) is Outcome.OPENED
    assert await intake.take(cert_failed("site_2")) is Outcome.OPENED
    clock.advance(30)
    assert await tick(db, clock) == 3
    sent = await deliveries(db)
    assert len(sent) == 6  # ops + the tenant's channel, per group
    mine = {d.payload["type"]: d.payload for d in sent if d.payload["site_id"] == "site_1"}
    failed_doc, expiring_doc = mine["cert.failed"], mine["cert.expiring"]
    assert failed_doc["count"] == 2
    assert failed_doc["error"] == {
        "code": "rate_limited",
        "message": "too many certificates (5) already issued for this exact set of domains",
    }
    # The latest occurrence's next attempt is what the alert says.
    assert "next attempt 2026-01-01 06:00 UTC" in failed_doc["summary"]

    slack = slack_payload(failed_doc)["text"]
    assert slack.startswith(f"[sitefleet] FIRING: cert.failed {DOMAIN}: certificate not issued")
    assert "[rate_limited]" in slack and "2 new occurrence(s)" in slack
    email = email_message(expiring_doc, "alerts@sitefleet.test", "ops@acme.test", "ntf_1")
    assert email["Subject"] == (
        f"[sitefleet] FIRING: cert.expiring {DOMAIN}: certificate expires 2026-01-08 12:30 UTC, "
        "renewal not done: [renewal_failing] renewal failed 3 times"
    )
    assert "renewal failed 3 times" in email.get_content()

    # A deployment succeeding is not a certificate: the cert groups stay open.
    assert await intake.take(succeeded("site_1")) is Outcome.NOTHING_OPEN
    assert await intake.take(cert_issued()) is Outcome.RESOLVED
    async with db() as session:
        groups = {
            (g.site_id, g.event_type): g.status for g in await session.scalars(select(AlertGroup))
        }
    assert groups == {
        ("site_1", "cert.failed"): "resolved",
        ("site_1", "cert.expiring"): "resolved",
        ("site_2", "cert.failed"): "firing",
    }
    clock.advance(300)
    assert await tick(db, clock) == 2
    resolved = [d.payload for d in (await deliveries(db))[6:]]
    assert {(d["kind"], d["type"]) for d in resolved} == {
        ("resolved", "cert.failed"),
        ("resolved", "cert.expiring"),
    }
    assert text_of(resolved[0]).startswith("[sitefleet] RECOVERED: cert.")
