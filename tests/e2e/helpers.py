"""Steps an API user takes, shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import httpx

from tests.fixtures.platform import wait_until

TERMINAL = {"live", "failed", "superseded", "cancelled", "rolled_back"}


def landing_params(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": title,
        "contact_email": "owner@example.org",
        "tagline": "Fresh bread daily",
        **extra,
    }


async def wait_deployment(
    api: httpx.AsyncClient, deployment_id: str, timeout: float = 60
) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        dep = (await api.get(f"/v1/deployments/{deployment_id}")).json()
        return dep if dep["status"] in TERMINAL else None

    result: dict[str, Any] = await wait_until(
        finished, timeout=timeout, what=f"deployment {deployment_id}"
    )
    return result


async def query(dns_port: int, name: str, rdtype: str) -> tuple[str, list[str]]:
    """Ask our authoritative server directly, as `dig @127.0.0.1 -p PORT` would."""
    request = dns.message.make_query(name, rdtype)
    response = await dns.asyncquery.udp(request, "127.0.0.1", port=dns_port, timeout=3)
    wanted = dns.rdatatype.from_text(rdtype)
    answers = sorted(
        rr.to_text() for rrset in response.answer if rrset.rdtype == wanted for rr in rrset
    )
    return dns.rcode.to_text(response.rcode()), answers
