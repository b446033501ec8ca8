"""Registrars: the interface every registrar adapter implements, and the one to use.

    Registrar.check(domain)                               -> Availability (price of 1 year)
    Registrar.register(domain, years, contact, order_id)  -> Registration
    Registrar.get(domain)                                 -> Registration | None (not ours)
    Registrar.set_nameservers(domain, nameservers)        -> None
    Registrar.renew(domain, years, order_id)              -> Registration

``order_id`` is our idempotency key: a registrar that supports one is sent it; callers
also ask ``get`` before re-registering after an unclear outcome (a timeout after charging).
Errors (shared/errors.py): ``Conflict`` (domain_unavailable) when the name cannot be
bought, ``Permanent`` when the registrar refuses the request or our credentials,
``Transient`` (``Unavailable``/``RateLimited``) when trying again later may work.

Implementations: ``sandbox`` (shared/registrar/sandbox.py, the default: sells nothing for
real) and ``namecom`` (shared/registrar/namecom.py, Name.com's CORE API).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import httpx

from shared.db import SessionMaker
from shared.settings import DomainSettings


@dataclass(frozen=True)
class Price:
    amount: str  # decimal string, e.g. "12.00"
    currency: str


@dataclass(frozen=True)
class Availability:
    domain: str
    available: bool
    price: Price | None
    reason: str | None = None


@dataclass(frozen=True)
class Registration:
    domain: str
    expires_at: datetime | None
    nameservers: tuple[str, ...] = ()
    registrar_order_id: str | None = None


class Registrar(Protocol):
    name: str

    async def check(self, domain: str) -> Availability: ...

    async def register(
        self, domain: str, *, years: int, contact: dict[str, str], order_id: str
    ) -> Registration: ...

    async def get(self, domain: str) -> Registration | None: ...

    async def set_nameservers(self, domain: str, nameservers: list[str]) -> None: ...

    async def renew(self, domain: str, *, years: int, order_id: str) -> Registration: ...


def open_registrar(
    settings: DomainSettings, *, sessionmaker: SessionMaker, http: httpx.AsyncClient
) -> Registrar:
    """The configured registrar (``SITEFLEET_REGISTRAR``)."""
    if settings.registrar == "namecom":
        from shared.registrar.namecom import NameComRegistrar

        return NameComRegistrar.from_settings(http, settings)
    from shared.registrar.sandbox import SandboxRegistrar

    return SandboxRegistrar(
        sessionmaker, prices=settings.sandbox_prices, currency=settings.registrar_currency
    )
