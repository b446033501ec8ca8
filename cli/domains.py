"""`sitefleet domain list|check`: every tenant's domains with their purchase orders, and
the configured registrar's answer for a name (a quick test of its credentials)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select

from services.dns.settings import DnsSettings
from shared.db import create_engine, create_sessionmaker
from shared.domains import normalize_domain
from shared.models import Domain, RegistrarOrder, Tenant
from shared.registrar import open_registrar


@dataclass(frozen=True)
class DomainLine:
    name: str
    tenant: str
    status: str
    registrar: str
    order: str
    expires_at: str
    failure: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def list_domains(settings: DnsSettings, tenant: str | None = None) -> list[DomainLine]:
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            query = (
                select(Domain, Tenant.name, RegistrarOrder)
                .join(Tenant, Tenant.id == Domain.tenant_id)
                .outerjoin(RegistrarOrder, RegistrarOrder.id == Domain.id)
                .order_by(Domain.name)
            )
            if tenant is not None:
                query = query.where(Tenant.name == tenant)
            rows = (await session.execute(query)).all()
    finally:
        await engine.dispose()
    return [
        DomainLine(
            name=domain.name,
            tenant=tenant_name,
            status=domain.status,
            registrar=domain.registrar or "(brought)",
            order=(f"{order.status} x{order.attempts}" if order is not None else "-"),
            expires_at=domain.expires_at.isoformat() if domain.expires_at else "-",
            failure=(domain.failure or {}).get("message", ""),
        )
        for domain, tenant_name, order in rows
    ]


async def check_name(settings: DnsSettings, raw: str) -> dict[str, Any]:
    name = normalize_domain(raw, field="name")
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with httpx.AsyncClient() as http:
            registrar = open_registrar(
                settings, sessionmaker=create_sessionmaker(engine), http=http
            )
            offer = await registrar.check(name)
    finally:
        await engine.dispose()
    return {
        "registrar": registrar.name,
        "name": name,
        "available": offer.available,
        "price": None
        if offer.price is None
        else {"amount": offer.price.amount, "currency": offer.price.currency},
        "reason": offer.reason,
    }
