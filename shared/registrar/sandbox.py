"""The ``sandbox`` registrar: a registrar's test mode, for development, demos and tests.

It sells nothing for real. Its rules are deterministic so a demo or a test can steer it:
    - a TLD missing from ``SITEFLEET_SANDBOX_PRICES`` is not sold;
    - a name with ``taken`` in it is registered to someone else (unavailable);
    - a name with ``declined`` in it is offered, but the registration is refused
      (the way a registry rejects an order), so failures can be shown end to end;
    - anything else is available until the sandbox has sold it.
Its books are the ``sandbox_registrations`` table. Like a real registrar, it keeps what it
sold whatever happens to the caller's transaction, so each call commits its own (the
sandbox stands in for a remote system; it is not domain code of ours).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from shared.db import SessionMaker
from shared.errors import Conflict, NotFound, Permanent
from shared.models import SandboxRegistration
from shared.registrar import Availability, Price, Registration
from shared.timeutil import utcnow


class SandboxRegistrar:
    name = "sandbox"

    def __init__(
        self,
        sessionmaker: SessionMaker,
        *,
        prices: dict[str, str],
        currency: str = "USD",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.prices = {tld.lower().lstrip("."): amount for tld, amount in prices.items()}
        self.currency = currency
        self.clock = clock

    def _price(self, domain: str) -> Price | None:
        amount = self.prices.get(domain.rsplit(".", 1)[-1])
        return Price(amount, self.currency) if amount is not None else None

    async def _row(self, domain: str) -> SandboxRegistration | None:
        async with self.sessionmaker() as session:
            return await session.get(SandboxRegistration, domain)

    async def check(self, domain: str) -> Availability:
        price = self._price(domain)
        if price is None:
            return Availability(domain, False, None, reason="this TLD is not sold")
        if "taken" in domain or await self._row(domain) is not None:
            return Availability(domain, False, None, reason="already registered")
        return Availability(domain, True, price)

    async def register(
        self, domain: str, *, years: int, contact: dict[str, str], order_id: str
    ) -> Registration:
        existing = await self._row(domain)
        if existing is not None and existing.order_id == order_id:
            return _registration(existing)  # the same order again: nothing is bought twice
        availability = await self.check(domain)
        if not availability.available or availability.price is None:
            raise Conflict(
                f"{domain} cannot be registered: {availability.reason}", code="domain_unavailable"
            )
        if "declined" in domain:
            raise Permanent(
                f"the registry declined the registration of {domain} "
                "(sandbox rule: names containing 'declined')",
                code="registrar_rejected",
            )
        async with self.sessionmaker.begin() as session:
            await session.execute(
                insert(SandboxRegistration)
                .values(
                    name=domain,
                    order_id=order_id,
                    years=years,
                    price=availability.price.amount,
                    nameservers=[],
                    contact=contact,
                    renewals=[],
                    expires_at=self.clock() + timedelta(days=365 * years),
                )
                .on_conflict_do_nothing()
            )
        row = await self._row(domain)
        if row is None or row.order_id != order_id:
            raise Conflict(
                f"{domain} was just registered by another order", code="domain_unavailable"
            )
        return _registration(row)

    async def get(self, domain: str) -> Registration | None:
        row = await self._row(domain)
        return _registration(row) if row is not None else None

    async def set_nameservers(self, domain: str, nameservers: list[str]) -> None:
        async with self.sessionmaker.begin() as session:
            row = await session.scalar(
                select(SandboxRegistration)
                .where(SandboxRegistration.name == domain)
                .with_for_update()
            )
            if row is None:
                raise NotFound(f"{domain} is not registered here", code="registration_not_found")
            row.nameservers = list(nameservers)

    async def renew(self, domain: str, *, years: int, order_id: str) -> Registration:
        async with self.sessionmaker.begin() as session:
            row = await session.scalar(
                select(SandboxRegistration)
                .where(SandboxRegistration.name == domain)
                .with_for_update()
            )
            if row is None:
                raise NotFound(f"{domain} is not registered here", code="registration_not_found")
            if order_id not in (row.renewals or []):
                row.expires_at = row.expires_at + timedelta(days=365 * years)
                row.years += years
                row.renewals = [*(row.renewals or []), order_id]
            registration = _registration(row)
        return registration


def _registration(row: SandboxRegistration) -> Registration:
    return Registration(
        domain=row.name,
        expires_at=row.expires_at,
        nameservers=tuple(row.nameservers or ()),
        registrar_order_id=f"sandbox-{row.order_id}",
    )
