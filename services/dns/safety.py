"""Safety limits against mass deletion: per zone (deletes and change ratio per run) and
fleet-wide (a run over many sites that would delete records in too many zones halts before
anything is written, and alerts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.dns.metrics import HALTED
from services.dns.settings import DnsSettings
from shared.errors import Permanent

if TYPE_CHECKING:
    from services.dns.reconcile import Plan


class SafetyLimitExceeded(Permanent):
    """A run would change more than the limits allow; nothing was written. An operator
    raises the limit (settings) or fixes what made the plan so large."""

    code = "dns_safety_limit"


def check_zone_limits(plan: Plan, settings: DnsSettings) -> None:
    deletes = len(plan.delete)
    if deletes > settings.dns_max_deletes_per_zone:
        HALTED.labels("zone_deletes").inc()
        raise SafetyLimitExceeded(
            f"{plan.zone}: the run would delete {deletes} record sets, more than "
            f"dns_max_deletes_per_zone={settings.dns_max_deletes_per_zone}; nothing written",
            details={"zone": plan.zone, "deletes": deletes},
        )
    # Answers that change: a TTL-only change (a settings tweak) does not count.
    changed_existing = deletes + sum(
        1
        for r in plan.replace
        if r.key in plan.owned_contents and plan.owned_contents[r.key] != r.contents
    )
    if plan.owned and plan.owned >= settings.dns_change_ratio_min:
        ratio = changed_existing / plan.owned
        if ratio > settings.dns_max_change_ratio:
            HALTED.labels("zone_change_ratio").inc()
            raise SafetyLimitExceeded(
                f"{plan.zone}: the run would change the answers of {changed_existing} of the "
                f"{plan.owned} record sets Sitefleet owns there ({ratio:.0%}), more than "
                f"dns_max_change_ratio={settings.dns_max_change_ratio:.0%}; nothing written",
                details={"zone": plan.zone, "changed": changed_existing, "owned": plan.owned},
            )


def zones_deleting(plans: Sequence[Plan]) -> list[str]:
    """The zones in which these plans would delete something."""
    return sorted({p.zone for p in plans if p.delete})


def breaker_trips(plans: Sequence[Plan], settings: DnsSettings) -> list[str] | None:
    """The zones that trip the fleet-wide breaker, or None when the run may go on."""
    zones = zones_deleting(plans)
    if len(zones) > settings.dns_breaker_max_zones:
        HALTED.labels("fleet_breaker").inc()
        return zones
    return None
