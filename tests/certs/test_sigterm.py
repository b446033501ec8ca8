"""SIGTERM in the middle of an order: the certs service hands the job back (its row
``requested`` again) and the next process finishes it, without waiting for the order to
look stale."""

from __future__ import annotations

import pytest

from shared.messages import CertificateRequested
from tests.certs.conftest import StackFactory
from tests.fixtures.platform import wait_until

pytestmark = pytest.mark.slow


async def test_an_order_cut_by_sigterm_is_finished_by_the_next_process(
    certs_stacks: StackFactory,
) -> None:
    stack = await certs_stacks(
        "sigterm",
        env={"SITEFLEET_CERTS_SHUTDOWN_GRACE": "0.5", "SITEFLEET_CHALLENGE_TIMEOUT": "120"},
    )
    site = await stack.new_site()
    # The deployer is slow to publish the answer: the order waits in the served check.
    stack.hold_challenges.add(site.domain)
    await stack.publisher.submit(
        CertificateRequested(
            tenant_id=site.tenant_id, site_id=site.id, domain=site.domain, reason="deployed"
        )
    )

    async def ordering() -> bool:
        rows = await stack.rows(site.id)
        return [r.status for r in rows] == ["ordering"] and rows[0].order_url is not None

    await wait_until(ordering, what="the order to wait for its challenge answer")
    stack.stop_service()  # SIGTERM, and wait for the process to exit
    [row] = await stack.rows(site.id)
    assert row.status == "requested"  # handed back, not left looking like a live order
    assert "handing them back" in stack.log_text()

    stack.hold_challenges.clear()
    stack.start_service()
    await stack.wait_event("cert.issued", site.id)
    [done] = await stack.rows(site.id)
    assert done.id == row.id and done.status == "installed"
    assert stack.events_of("cert.parked", site.id) == []
