"""The DNS job handler: decoded job -> one transaction around the domain call -> events.

Outcomes (acks, retries and parking are shared/consumer.py's job):
    dns.reconcile_requested  -> apply_site; every record verified: ack.
        some record blocked by a foreign RRset: commit, emit dns.failed
            (dns_record_conflict), ack: retrying cannot help until someone removes it.
        not verified yet: commit the ``applied`` rows, then raise DnsNotVerified (retry).
        Transient provider error: roll back, raise (retry with backoff).
        any other Sitefleet error: roll back, emit dns.failed, raise (parked).
    dns.removal_requested    -> remove_site, commit, emit dns.records_removed.
    dns.acme_challenge_requested -> set/clear the DNS-01 TXT RRset (services/dns/acme.py)
        through the same one consumer, so the one writer per backend holds; ack once set
        and served (or cleared). Bad name/values, another tenant's site, a foreign record
        at the name: nothing written, parked (dns.parked). Not served yet: commit the rows,
        retry. The certs service checks the authoritative servers itself; no event here.
The CDN provider's setup for the site (e.g. a bunny.net pull zone) comes before its records.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select

from services.dns.acme import AcmeChallengeNotServed, apply_challenge, check_site, validate
from services.dns.cdn import CdnProvider
from services.dns.domains import DomainPurchases, publication_allowed
from services.dns.metrics import ACME_CHALLENGES, CHANGES, RECONCILES, VERIFY_SECONDS
from services.dns.provider import DnsProvider
from services.dns.reconcile import DnsNotVerified, apply_site, remove_site, site_owner
from services.dns.settings import DnsSettings
from services.dns.verification import RecordVerifier, verifier_for
from shared.broker import Publisher
from shared.db import SessionMaker
from shared.errors import NotFound, Permanent, SitefleetError, Transient
from shared.messages import (
    AcmeDnsChallengeRequested,
    DnsFailed,
    DnsReconcileRequested,
    DnsRecordsRemoved,
    DnsRemovalRequested,
    DomainRegisterRequested,
    Envelope,
    ErrorInfo,
    Message,
)
from shared.models import Site as SiteRow

log = logging.getLogger(__name__)


class DnsJobHandler:
    def __init__(
        self,
        *,
        sessionmaker: SessionMaker,
        client: DnsProvider,
        publisher: Publisher,
        settings: DnsSettings,
        verifier: RecordVerifier | None = None,
        cdn: CdnProvider | None = None,
        purchases: DomainPurchases | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.client = client
        self.publisher = publisher
        self.settings = settings
        self.verifier = verifier or verifier_for(client, settings)
        self.cdn = cdn
        self.purchases = purchases

    async def __call__(self, envelope: Envelope, payload: Message) -> None:
        if isinstance(payload, DnsReconcileRequested):
            await self.reconcile(payload)
        elif isinstance(payload, DnsRemovalRequested):
            await self.remove(payload)
        elif isinstance(payload, AcmeDnsChallengeRequested):
            await self.acme_challenge(payload)
        elif isinstance(payload, DomainRegisterRequested) and self.purchases is not None:
            await self.purchases.register(payload)
        else:
            raise Permanent(f"the dns service does not handle {envelope.type}")

    async def reconcile(self, job: DnsReconcileRequested) -> None:
        if await self._being_deleted(job.site_id):
            log.info("site is being deleted; not reconciling", extra={"site_id": job.site_id})
            return
        if not await publication_allowed(
            self.sessionmaker, self.settings, tenant_id=job.tenant_id, domain=job.domain
        ):  # reconciled again by the API once the domain is verified
            log.info(
                "domain not verified for the tenant; records held back",
                extra={"site_id": job.site_id},
            )
            return
        not_verified: DnsNotVerified | None = None
        started = time.perf_counter()
        try:
            if self.cdn is not None:
                await self.cdn.ensure_site(job.domain)
            async with self.sessionmaker.begin() as session:
                try:
                    result = await apply_site(
                        session,
                        self.client,
                        tenant_id=job.tenant_id,
                        site_id=job.site_id,
                        domain=job.domain,
                        settings=self.settings,
                        verifier=self.verifier,
                        targets=self.cdn.targets(job.domain) if self.cdn else None,
                    )
                except DnsNotVerified as exc:
                    not_verified = exc  # keep the applied rows: leave the block normally
        except Transient:
            RECONCILES.labels("retry").inc()
            raise
        except SitefleetError as exc:
            RECONCILES.labels("failed").inc()
            await self._emit_failed(job, exc.code, exc.message)
            raise
        if not_verified is not None:
            RECONCILES.labels("not_verified").inc()
            raise not_verified
        RECONCILES.labels("blocked" if result.blocked else "verified").inc()
        CHANGES.labels("replace").inc(len(result.plan.replace))
        CHANGES.labels("delete").inc(len(result.plan.delete))
        VERIFY_SECONDS.observe(time.perf_counter() - started)
        if result.blocked:
            reasons = "; ".join(b.reason for b in result.blocked)
            log.warning("dns records blocked", extra={"site_id": job.site_id, "error": reasons})
            await self._emit_failed(job, "dns_record_conflict", reasons)

    async def acme_challenge(self, job: AcmeDnsChallengeRequested) -> None:
        validate(job)  # a bad name or value is refused before anything is read or written
        not_served: AcmeChallengeNotServed | None = None
        async with self.sessionmaker() as session:
            status = await check_site(session, job)
        if status is None:
            if job.action == "set":
                raise NotFound(f"site {job.site_id} does not exist", code="site_not_found")
            # Removing the site removed its records and rows: nothing left to clear.
            log.info("site is gone; nothing to clear", extra={"site_id": job.site_id})
            return
        if job.action == "set":
            if status == "deleting":
                log.info(
                    "site is being deleted; no challenge record", extra={"site_id": job.site_id}
                )
                return
            if not await publication_allowed(
                self.sessionmaker, self.settings, tenant_id=job.tenant_id, domain=job.domain
            ):
                raise Permanent(
                    f"{job.domain} is not verified for the tenant; its zone is not published",
                    code="domain_not_verified",
                )
        async with self.sessionmaker.begin() as session:
            try:
                await apply_challenge(
                    session,
                    self.client,
                    job,
                    owner=site_owner(job.site_id),
                    settings=self.settings,
                    verifier=self.verifier,
                )
            except AcmeChallengeNotServed as exc:
                not_served = exc  # keep the applied rows: leave the block normally
        ACME_CHALLENGES.labels(job.action, "retry" if not_served else "done").inc()
        if not_served is not None:
            raise not_served
        log.info(
            "acme challenge record " + ("set" if job.action == "set" else "cleared"),
            extra={"site_id": job.site_id, "record": job.name},
        )

    async def _being_deleted(self, site_id: str) -> bool:
        """Reads the API's ``sites`` row: a reconcile that arrives after the removal was
        requested (a late retry, a drift heal) must not bring records back."""
        async with self.sessionmaker() as session:
            status = await session.scalar(select(SiteRow.status).where(SiteRow.id == site_id))
        return status == "deleting"

    async def remove(self, job: DnsRemovalRequested) -> None:
        async with self.sessionmaker.begin() as session:
            await remove_site(session, self.client, site_id=job.site_id, domain=job.domain)
        if self.cdn is not None:
            await self.cdn.remove_site(job.domain)
        await self.publisher.emit(
            DnsRecordsRemoved(tenant_id=job.tenant_id, site_id=job.site_id, domain=job.domain)
        )

    async def _emit_failed(self, job: DnsReconcileRequested, code: str, message: str) -> None:
        await self.publisher.emit(
            DnsFailed(
                tenant_id=job.tenant_id,
                site_id=job.site_id,
                domain=job.domain,
                error=ErrorInfo(code=code, message=message),
            )
        )
