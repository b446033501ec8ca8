"""With RabbitMQ unreachable from the API (and the deployer), writes still succeed and
nothing is lost: the outbox relay delivers once the broker is back, and the services
reconnect by themselves. The machine's broker is never stopped; a
TCP proxy between the API and RabbitMQ is cut instead."""

from __future__ import annotations

import httpx

from tests.e2e.helpers import landing_params, wait_deployment
from tests.fixtures.platform import PlatformFactory, wait_until
from tests.fixtures.tcp_proxy import TcpProxy


async def test_api_keeps_answering_and_loses_nothing_while_broker_is_down(
    platforms: PlatformFactory,
) -> None:
    proxy = TcpProxy(5672)
    await proxy.start()
    # The platform's own vhost, reached by the API and the deployer through the proxy only.
    platform = await platforms.start("outage", services=())
    vhost = platform.amqp_url.rsplit("/", 1)[1]
    proxied = {"SITEFLEET_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}"}
    platform.start_service("deployer", proxied)
    platform.start_service("api", proxied)
    await platforms.wait_api(platform)
    token = await platform.new_tenant()
    async with platform.client(token) as api:
        await wait_until(lambda: _ready(api), what="API connected to the broker")

        await proxy.cut()
        await wait_until(lambda: _not_ready(api), what="readyz to notice the outage")
        created = await api.post(
            "/v1/sites",
            json={
                "domain": "outage.example",
                "template": "landing",
                "params": landing_params("Written during the outage"),
            },
        )
        assert created.status_code == 201, created.text
        site = created.json()
        assert (await api.get(f"/v1/sites/{site['id']}")).json()["status"] == "pending"
        listed = (await api.get("/v1/sites")).json()["items"]
        assert [s["domain"] for s in listed] == ["outage.example"]

        await proxy.restore()
        deployment = await wait_deployment(api, site["latest_deployment_id"], timeout=90)
        assert deployment["status"] == "live", deployment
        page = await platform.fetch_site("outage.example")
        assert "Written during the outage" in page.text
    await proxy.cut()


async def _ready(api: httpx.AsyncClient) -> bool:
    return (await api.get("/readyz")).status_code == 200


async def _not_ready(api: httpx.AsyncClient) -> bool:
    response = await api.get("/readyz")
    return response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
