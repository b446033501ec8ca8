"""`dns.drift` from the DNS sweep is an alert like a failure: grouped by site and code."""

from __future__ import annotations

from services.notifier.fingerprint import Occurrence, interpret
from shared import broker
from shared.messages import DnsDrifted, ErrorInfo


def drift(site_id: str, changes: int) -> DnsDrifted:
    return DnsDrifted(
        tenant_id="ten_a",
        site_id=site_id,
        domain="a.example",
        changes=changes,
        blocked=0,
        error=ErrorInfo(code="dns_drift", message=f"{changes} record set(s) differed"),
    )


def test_drift_is_an_occurrence_grouped_by_site_and_code() -> None:
    first = interpret(drift("site_1", 1).envelope())
    again = interpret(drift("site_1", 3).envelope())
    other = interpret(drift("site_2", 1).envelope())
    assert isinstance(first, Occurrence) and isinstance(again, Occurrence)
    assert (first.service, first.error_code, first.subject) == ("dns", "dns_drift", "a.example")
    assert first.fingerprint == again.fingerprint != other.fingerprint  # numbers stripped


def test_the_notifier_queue_receives_drift() -> None:
    assert "dns.drift" in broker.NOTIFIER_EVENTS.bindings
