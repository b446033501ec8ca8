"""Orders that fail: the CA rejects a challenge, the CA cannot be reached, the CA rate-limits.
None of them is retried against the CA at once; each leaves a clear status and an alert."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator

import pytest

from cli.devstack import procs
from shared.messages import CertificateRequested
from shared.models import Site
from tests.certs.conftest import FakeWebHost, StackFactory
from tests.fixtures.acme_fake import RateLimitingCa
from tests.fixtures.components import world_readable_tempdir

pytestmark = pytest.mark.slow


def requested(site: Site) -> CertificateRequested:
    return CertificateRequested(
        tenant_id=site.tenant_id, site_id=site.id, domain=site.domain, reason="deployed"
    )


@pytest.fixture(scope="module")
def rate_limiting_ca() -> Iterator[RateLimitingCa]:
    ca = RateLimitingCa(retry_after=7200)
    yield ca
    ca.close()


async def test_ca_rejects_the_challenge(certs_stacks: StackFactory) -> None:
    # Our hosts serve the right answer, but the name leads the CA to a box that serves
    # another key authorization (a stale load balancer, say): Pebble finds it invalid.
    impostor = FakeWebHost(world_readable_tempdir("impostor"))
    impostor.wrong_answer = "not-the-key-authorization"
    try:
        stack = await certs_stacks("rejected", pebble_http_port=impostor.http_port)
        site = await stack.new_site()
        await stack.publisher.submit(requested(site))

        failed = await stack.wait_event("cert.failed", site.id)
        error = failed.payload["error"]
        assert error["code"] == "acme_unauthorized"
        assert "the CA rejected the challenge" in error["message"]
        assert "not-the-key-authorization" in error["message"]  # Pebble's own detail
        assert failed.payload["retry_at"] is not None
        [row] = await stack.rows(site.id)
        assert row.status == "failed" and row.order_url is not None
        assert row.error and row.error["problem"] == "urn:ietf:params:acme:error:unauthorized"
        assert row.next_attempt_at is not None
        assert row.certificate_pem is None
        # The answers were withdrawn from our hosts.
        assert stack.host.challenges == {}
    finally:
        await impostor.close()
        shutil.rmtree(impostor.root, ignore_errors=True)


async def test_ca_unreachable_retries_then_parks(certs_stacks: StackFactory) -> None:
    closed = procs.free_port()  # nothing listens there
    stack = await certs_stacks(
        "unreachable",
        pebble=False,
        env={"SITEFLEET_ACME_DIRECTORY_URL": f"https://127.0.0.1:{closed}/dir"},
    )
    site = await stack.new_site()
    await stack.publisher.submit(requested(site))

    parked = await stack.wait_event("cert.parked", site.id)
    assert parked.payload["error"]["code"] == "ca_unreachable"
    assert parked.payload["job_type"] == "cert.requested"
    # Tried once, then once per step of the ladder (0.2 s, 0.4 s).
    assert stack.log_text().count("job failed, will retry") == 2
    [row] = await stack.rows(site.id)
    assert row.status == "failed" and row.attempts == 3
    assert row.error and row.error["code"] == "ca_unreachable"
    # The ladder owns this failure: no cert.failed per attempt, the parked alert says it.
    assert stack.events_of("cert.failed", site.id) == []


async def test_rate_limit_waits_for_retry_after(
    certs_stacks: StackFactory, rate_limiting_ca: RateLimitingCa
) -> None:
    stack = await certs_stacks(
        "ratelimited",
        pebble=False,
        env={"SITEFLEET_ACME_DIRECTORY_URL": rate_limiting_ca.directory_url},
    )
    site = await stack.new_site()
    before = dt.datetime.now(dt.UTC)
    await stack.publisher.submit(requested(site))

    failed = await stack.wait_event("cert.failed", site.id)
    assert failed.payload["error"]["code"] == "acme_rate_limited"
    retry_at = dt.datetime.fromisoformat(failed.payload["retry_at"])
    # The CA's Retry-After (7200 s), longer than our own backoff (3600 s), wins.
    assert retry_at >= before + dt.timedelta(seconds=7190)
    [row] = await stack.rows(site.id)
    assert row.status == "failed" and row.next_attempt_at == retry_at
    assert rate_limiting_ca.new_orders == 1

    # Asked again (a redeploy, the sweep): nothing goes to the CA before retry_at.
    await stack.publisher.submit(requested(site))
    await stack.wait_log("the last order failed; waiting before the next")
    assert rate_limiting_ca.new_orders == 1
    assert stack.log_text().count("job failed, will retry") == 0
