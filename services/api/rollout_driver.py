"""The rollout driver: a loop in every API process that advances rollouts, woken by
deployment outcomes (and by a timer, for outcomes recorded by another API process). Row
locks (``SKIP LOCKED``) let any number of API processes drive without stepping on each
other; all state is in Postgres, so a restarted API simply carries on."""

from __future__ import annotations

import asyncio
import logging

from services.api import rollout_waves
from services.api.outbox import Relay
from shared.db import SessionMaker
from shared.template_packs import TemplateCatalog

log = logging.getLogger(__name__)


class RolloutDriver:
    def __init__(
        self,
        sessionmaker: SessionMaker,
        catalog: TemplateCatalog,
        relay: Relay,
        *,
        interval: float,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.catalog = catalog
        self.relay = relay
        self.interval = interval
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.drive_all()
            except Exception as exc:  # database down: try again next round
                log.warning("rollout driver pass failed", extra={"error": repr(exc)})
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass

    async def drive_all(self) -> None:
        async with self.sessionmaker.begin() as session:
            ids = await rollout_waves.rollouts_to_drive(session)
        for rollout_id in ids:
            async with self.sessionmaker.begin() as session:
                await rollout_waves.drive(session, self.catalog, rollout_id)
            self.relay.wake()
