"""The ownership check against a real PowerDNS: the challenge TXT record and the NS
delegation, as the API's /verify and the DNS service's checker see them."""

from __future__ import annotations

import uuid

import httpx

from shared.domain_ownership import check_ownership
from tests.fixtures.components import PowerDns

OURS = ["ns1.sitefleet.test.", "ns2.sitefleet.test."]


async def customer_zone(pdns: PowerDns, name: str, nameservers: list[str], txt: str | None) -> None:
    async with httpx.AsyncClient(
        base_url=f"{pdns.api_url}/api/v1/servers/localhost", headers={"X-API-Key": pdns.api_key}
    ) as api:
        created = await api.post(
            "/zones", json={"name": f"{name}.", "kind": "Native", "nameservers": nameservers}
        )
        assert created.status_code == 201, created.text
        if txt is not None:
            rrset = {
                "name": f"_sitefleet-challenge.{name}.",
                "type": "TXT",
                "ttl": 60,
                "changetype": "REPLACE",
                "records": [{"content": f'"{txt}"', "disabled": False}],
            }
            assert (await api.patch(f"/zones/{name}.", json={"rrsets": [rrset]})).status_code == 204


def resolver(pdns: PowerDns) -> str:
    return f"127.0.0.1:{pdns.dns_port}"


async def test_a_domain_nobody_serves_is_not_verified(pdns_server: PowerDns) -> None:
    name = f"nowhere-{uuid.uuid4().hex[:8]}.test"
    result = await check_ownership(
        name, txt_value="secret", nameservers=OURS, resolver=resolver(pdns_server)
    )
    assert not result.verified and not result.delegated
    assert result.problem is not None
    assert f"_sitefleet-challenge.{name} with value 'secret' not found" in result.problem


async def test_the_right_txt_value_verifies_and_the_delegation_is_reported(
    pdns_server: PowerDns,
) -> None:
    ours = f"ours-{uuid.uuid4().hex[:8]}.test"
    await customer_zone(pdns_server, ours, OURS, "secret")
    result = await check_ownership(
        ours, txt_value="secret", nameservers=OURS, resolver=resolver(pdns_server)
    )
    assert result.verified and result.delegated and result.problem is None

    elsewhere = f"elsewhere-{uuid.uuid4().hex[:8]}.test"
    await customer_zone(pdns_server, elsewhere, ["ns1.other-host.test."], "secret")
    result = await check_ownership(
        elsewhere, txt_value="secret", nameservers=OURS, resolver=resolver(pdns_server)
    )
    assert result.verified and not result.delegated
    assert result.problem is not None and "ns1.other-host.test." in result.problem


async def test_a_wrong_txt_value_does_not_verify(pdns_server: PowerDns) -> None:
    name = f"wrong-{uuid.uuid4().hex[:8]}.test"
    await customer_zone(pdns_server, name, OURS, "someone-elses")
    result = await check_ownership(
        name, txt_value="secret", nameservers=OURS, resolver=resolver(pdns_server)
    )
    assert not result.verified
    assert result.problem is not None and "someone-elses" in result.problem
