"""The site object's ``tls`` field (issue 8), read from the ``certificates`` table the certs
service writes: each status from certificate rows inserted directly, the list endpoint in
one query, and nothing of another tenant's certificates shows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select

from services.api.tls import tls_of
from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.models import Certificate, Site
from shared.timeutil import utcnow
from tests.api.test_identity import assert_error
from tests.fixtures.platform import Platform, PlatformFactory

PARAMS = {"title": "Acme", "contact_email": "hi@acme.test"}
ISSUER = "CN=Pebble Intermediate CA 1a2b3c"


@pytest.fixture(scope="module")
async def tls_platform(platforms: PlatformFactory) -> Platform:
    """Only the API: sites are created through it and certificates written here."""
    return await platforms.start("tls", services=("api",))


@pytest.fixture(scope="module")
async def db(tls_platform: Platform) -> AsyncIterator[SessionMaker]:
    engine = create_engine(tls_platform.database_url, application_name="tests-tls", pool_size=1)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def new_site(client: httpx.AsyncClient, label: str) -> dict[str, Any]:
    domain = f"{label}-{uuid.uuid4().hex[:8]}.example"
    response = await client.post(
        "/v1/sites", json={"domain": domain, "template": "landing", "params": PARAMS}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def add_cert(
    db: SessionMaker,
    site: dict[str, Any],
    status: str,
    *,
    age: int,
    tenant_id: str | None = None,
    not_after: datetime | None = None,
    error: dict[str, str] | None = None,
) -> None:
    """A certificate row as the certs service writes it; ``age``: minutes since created
    (the newest row is the one with the smallest age)."""
    created = utcnow() - timedelta(minutes=age)
    async with db.begin() as session:
        if tenant_id is None:
            tenant_id = await session.scalar(select(Site.tenant_id).where(Site.id == site["id"]))
        session.add(
            Certificate(
                id=f"crt_{uuid.uuid4().hex[:12]}",
                site_id=site["id"],
                tenant_id=tenant_id,
                domain=site["domain"],
                names=[site["domain"], f"www.{site['domain']}"],
                challenge="http-01",
                status=status,
                issuer=ISSUER if status in ("installed", "superseded", "issued") else None,
                not_before=created if not_after else None,
                not_after=not_after,
                error=error,
                created_at=created,
                updated_at=created,
                installed_at=created if status in ("installed", "superseded") else None,
            )
        )


def later(days: int) -> datetime:
    return utcnow() + timedelta(days=days)


async def test_each_tls_status_from_the_certificate_rows(
    tls_platform: Platform, db: SessionMaker
) -> None:
    token = await tls_platform.new_tenant()
    async with tls_platform.client(token) as api:
        fresh = await new_site(api, "fresh")
        ordering = await new_site(api, "ordering")
        failed = await new_site(api, "failed")
        active = await new_site(api, "active")
        renewing = await new_site(api, "renewing")
        retrying = await new_site(api, "retrying")
        expired = await new_site(api, "expired")
        assert fresh["tls"] == {
            "status": "pending",
            "expires_at": None,
            "issuer": None,
            "error": None,
        }

        await add_cert(db, ordering, "ordering", age=1)
        refused = {
            "code": "domain_not_pointing_here",
            "message": "failed.example has no A record of ours",
        }
        await add_cert(db, failed, "failed", age=1, error=refused)
        valid = later(60)
        await add_cert(db, active, "superseded", age=90, not_after=later(10))
        await add_cert(db, active, "installed", age=30, not_after=valid)
        await add_cert(db, renewing, "installed", age=30, not_after=later(20))
        await add_cert(db, renewing, "ordering", age=1)
        rate_limited = {"code": "rate_limited", "message": "too many certificates; retry after 3h"}
        await add_cert(db, retrying, "installed", age=30, not_after=later(20))
        await add_cert(db, retrying, "failed", age=1, error=rate_limited)
        await add_cert(db, expired, "installed", age=30, not_after=utcnow() - timedelta(hours=1))

        got = {
            s["id"]: (await api.get(f"/v1/sites/{s['id']}")).json()["tls"]
            for s in (fresh, ordering, failed, active, renewing, retrying, expired)
        }
        listed = {s["id"]: s["tls"] for s in (await api.get("/v1/sites")).json()["items"]}

    assert listed == got
    assert got[fresh["id"]]["status"] == "pending"
    assert got[ordering["id"]] == {
        "status": "pending",
        "expires_at": None,
        "issuer": None,
        "error": None,
    }
    assert got[failed["id"]] == {
        "status": "failed",
        "expires_at": None,
        "issuer": None,
        "error": refused,
    }
    assert got[active["id"]]["status"] == "active"
    assert got[active["id"]]["issuer"] == ISSUER
    assert datetime.fromisoformat(got[active["id"]]["expires_at"]) == valid
    assert got[active["id"]]["error"] is None
    assert got[renewing["id"]]["status"] == "renewing"
    assert got[renewing["id"]]["error"] is None and got[renewing["id"]]["expires_at"]
    assert got[retrying["id"]]["status"] == "renewing"
    assert got[retrying["id"]]["error"] == rate_limited
    assert got[expired["id"]]["status"] == "expired"
    assert got[expired["id"]]["issuer"] == ISSUER


async def test_another_tenants_certificates_never_show(
    tls_platform: Platform, db: SessionMaker
) -> None:
    mine, theirs = await tls_platform.new_tenant(), await tls_platform.new_tenant()
    async with tls_platform.client(mine) as api, tls_platform.client(theirs) as other:
        my_site = await new_site(api, "mine")
        their_site = await new_site(other, "theirs")
        their_tenant = (await other.get("/v1/me")).json()["tenant"]["id"]
        await add_cert(db, their_site, "installed", age=5, not_after=later(60))
        # A row naming my site but their tenant (never written by the certs service, but the
        # API must not trust it either).
        await add_cert(db, my_site, "installed", age=5, not_after=later(60), tenant_id=their_tenant)

        assert (await api.get(f"/v1/sites/{my_site['id']}")).json()["tls"]["status"] == "pending"
        listed = (await api.get("/v1/sites")).json()["items"]
        assert [s["id"] for s in listed] == [my_site["id"]]
        assert listed[0]["tls"]["status"] == "pending"
        assert_error(await api.get(f"/v1/sites/{their_site['id']}"), 404, "site_not_found")
        assert (await other.get(f"/v1/sites/{their_site['id']}")).json()["tls"][
            "status"
        ] == "active"


async def test_the_tls_of_a_page_of_sites_is_one_query(
    tls_platform: Platform, db: SessionMaker
) -> None:
    token = await tls_platform.new_tenant()
    async with tls_platform.client(token) as api:
        made = [await new_site(api, f"page{i}") for i in range(5)]
    for i, site in enumerate(made):
        await add_cert(db, site, "installed", age=10, not_after=later(30 + i))
    engine = create_engine(tls_platform.database_url, application_name="tests-tls-n1", pool_size=1)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    try:
        async with create_sessionmaker(engine)() as session:
            sites = list(
                await session.scalars(select(Site).where(Site.id.in_([s["id"] for s in made])))
            )
            event.listen(engine.sync_engine, "before_cursor_execute", count)
            tls = await tls_of(session, sites)
            event.remove(engine.sync_engine, "before_cursor_execute", count)
    finally:
        await engine.dispose()
    assert len(statements) == 1
    assert {t.status for t in tls.values()} == {"active"} and len(tls) == 5
