"""A certificate's life around its order: asked for after a deployment, finished when the
deployer installed it (and we saw it served), renewed, retried and warned about by the
sweep, forgotten with the site's files."""

from __future__ import annotations

import asyncio
import logging
import ssl
from datetime import timedelta

from sqlalchemy import and_, delete, exists, func, or_, select, update

from services.certs import store
from services.certs.hosts import served_certificate, site_hosts
from services.certs.metrics import INSTALLED, SOONEST_EXPIRY
from services.certs.orders import Clock, served_names, site_names
from services.certs.settings import CertsSettings
from shared.broker import Publisher
from shared.db import SessionMaker
from shared.errors import Unavailable
from shared.ids import new_id
from shared.messages import (
    CertificateExpiring,
    CertificateInstalled,
    CertificateInstallRequested,
    CertificateIssued,
    CertificateRequested,
    DeploymentSucceeded,
    ErrorInfo,
    SiteFilesRemoved,
)
from shared.models import Certificate, Site
from shared.timeutil import utcnow

log = logging.getLogger(__name__)


class CertLifecycle:
    def __init__(
        self,
        *,
        sessionmaker: SessionMaker,
        publisher: Publisher,
        settings: CertsSettings,
        clock: Clock = utcnow,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.publisher = publisher
        self.settings = settings
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.settings.acme_enabled

    # --- events ---------------------------------------------------------------------------

    async def on_deployed(self, event: DeploymentSucceeded) -> None:
        """A site went live: ask for a certificate unless it has a valid one (or one is on
        its way, or the CA asked us to wait)."""
        if not self.enabled:
            return
        await self.request_if_needed(event.site_id, reason="deployed")

    async def request_if_needed(self, site_id: str, *, reason: str) -> bool:
        """Submit ``cert.requested`` and mark the site's row ``requested`` (so the sweep and
        other deployments do not ask again); False when nothing is needed now."""
        now = self.clock()
        async with self.sessionmaker.begin() as session:
            await store.lock_site(session, site_id)
            site = await session.get(Site, site_id)
            if site is None or site.status == "deleting" or site.files_removed:
                return False
            current = await store.current_certificate(session, site_id)
            names = site_names(site.domain, wildcard=self.settings.acme_wildcard)
            if (
                current is not None
                and set(current.names) == set(names)
                and not store.is_due(current, now, self.settings.cert_renew_fraction)
            ):
                if reason == "deployed":
                    log.info(
                        "no new certificate request: the certificate is valid and not due",
                        extra={"site_id": site_id},
                    )
                return False
            row = await store.pending_order(session, site_id)
            if row is not None and not store.may_retry(row, now, self.settings):
                if reason == "deployed":  # the sweep's rounds would flood the log
                    log.info(
                        "no new certificate request: one is on its way or waiting",
                        extra={"site_id": site_id, "status": row.status},
                    )
                return False
            if reason == "renewal" and current is None:
                reason = "retry"
            if row is None:
                row = Certificate(
                    id=new_id("cert"),
                    site_id=site.id,
                    tenant_id=site.tenant_id,
                    domain=site.domain,
                    names=names,
                    challenge=self.settings.challenge,
                    attempts=0,
                )
                session.add(row)
            row.status = "requested"
            row.updated_at = now
            await self.publisher.submit(
                CertificateRequested(
                    tenant_id=site.tenant_id,
                    site_id=site.id,
                    domain=site.domain,
                    reason=reason,
                )
            )
        log.info("certificate requested", extra={"site_id": site_id, "reason": reason})
        return True

    async def on_installed(self, event: CertificateInstalled) -> None:
        """The deployer wrote the certificate to every host: see it served (TLS handshake
        with SNI to each host, each name), then it is the site's certificate."""
        async with self.sessionmaker() as session:
            row = await session.get(Certificate, event.certificate_id)
            if row is None or row.status in ("installed", "superseded"):
                return  # already done (a redelivery), or the site is gone
            hosts = await site_hosts(session, row.site_id, self.settings)
        if row.status != "issued" or not row.certificate_pem:
            log.warning(
                "cert.installed for a certificate not issued",
                extra={"certificate_id": row.id, "status": row.status},
            )
            return
        leaf = store.parse_leaf(row.certificate_pem)
        for host in hosts:
            for name in served_names(row.domain, list(row.names)):
                try:
                    der = await served_certificate(
                        host, name, within=self.settings.tls_check_timeout
                    )
                except (OSError, ssl.SSLError, TimeoutError) as exc:
                    raise Unavailable(
                        f"{host.name}:{host.https_port} TLS for {name}: {exc!r}"[:500],
                        code="certificate_not_served",
                    ) from exc
                if der != leaf.der:
                    raise Unavailable(
                        f"{host.name} does not serve the new certificate for {name} yet",
                        code="certificate_not_served",
                    )
        now = self.clock()
        async with self.sessionmaker.begin() as session:
            await store.lock_site(session, row.site_id)
            fresh = await session.get(Certificate, row.id, with_for_update=True)
            if fresh is None or fresh.status != "issued":
                return
            fresh.status = "installed"
            fresh.installed_at = now
            fresh.updated_at = now
            # Older certificates and failed attempts of the site are history now.
            await session.execute(
                update(Certificate)
                .where(
                    Certificate.site_id == row.site_id,
                    Certificate.id != row.id,
                    Certificate.created_at <= fresh.created_at,
                    Certificate.status.in_(("installed", "failed")),
                )
                .values(status="superseded", updated_at=now)
            )
        INSTALLED.inc()
        await self.publisher.emit(
            CertificateIssued(
                tenant_id=row.tenant_id,
                site_id=row.site_id,
                domain=row.domain,
                certificate_id=row.id,
                names=list(row.names),
                issuer=leaf.issuer,
                not_after=leaf.not_after,
                challenge=row.challenge,
            )
        )
        log.info("certificate installed and served", extra={"site_id": row.site_id})

    async def on_files_removed(self, event: SiteFilesRemoved) -> None:
        """The site is gone from the hosts: forget its certificates (and their keys)."""
        async with self.sessionmaker.begin() as session:
            await store.lock_site(session, event.site_id)
            await session.execute(delete(Certificate).where(Certificate.site_id == event.site_id))

    # --- the sweep ------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Renewals due, failed orders due again, orders lost on the way, live sites with no
        certificate (e.g. live before ACME was turned on), expiry warnings."""
        if not self.enabled:
            return
        for site_id in sorted(await self._sweep_candidates()):
            await self.request_if_needed(site_id, reason="renewal")
            await self._resend_install(site_id)
        await self.warn_expiring()

    async def _sweep_candidates(self) -> set[str]:
        """Only the sites that may need something (one indexed query each, not every site)."""
        now = self.clock()
        settings = self.settings
        longest = max(settings.cert_retry_backoff, default=0.0)
        lifetime = Certificate.not_after - Certificate.not_before
        queries = [
            select(Certificate.site_id).where(
                Certificate.status == "installed",
                Certificate.not_after - lifetime * settings.cert_renew_fraction <= now,
            ),
            select(Certificate.site_id).where(
                Certificate.status == "failed",
                or_(
                    Certificate.next_attempt_at <= now,
                    and_(
                        Certificate.next_attempt_at.is_(None),
                        Certificate.updated_at <= now - timedelta(seconds=longest),
                    ),
                ),
            ),
            select(Certificate.site_id).where(
                Certificate.status.in_(store.ACTIVE),
                Certificate.updated_at <= now - timedelta(seconds=settings.cert_stale_after),
            ),
            select(Site.id).where(
                Site.status == "live",
                Site.files_removed.is_(False),
                ~exists().where(Certificate.site_id == Site.id, Certificate.status != "superseded"),
            ),
        ]
        found: set[str] = set()
        async with self.sessionmaker() as session:
            for query in queries:
                found.update((await session.scalars(query)).all())
        return found

    async def _resend_install(self, site_id: str) -> None:
        """An issued certificate whose ``cert.installed`` never came (a lost job, a host
        that kept failing): ask the deployer again."""
        now = self.clock()
        stale = now - timedelta(seconds=self.settings.cert_stale_after)
        async with self.sessionmaker.begin() as session:
            row = await store.pending_order(session, site_id)
            if row is None or row.status != "issued" or row.updated_at > stale:
                return
            row.updated_at = now
            await self.publisher.submit(
                CertificateInstallRequested(
                    site_id=row.site_id, domain=row.domain, certificate_id=row.id
                )
            )

    async def warn_expiring(self) -> None:
        now = self.clock()
        warn_by = now + timedelta(seconds=self.settings.cert_warn_before)
        repeat = now - timedelta(seconds=self.settings.cert_warn_repeat)
        async with self.sessionmaker.begin() as session:
            soonest = await session.scalar(
                select(func.min(Certificate.not_after)).where(Certificate.status == "installed")
            )
            if soonest is not None:
                SOONEST_EXPIRY.set((soonest - now).total_seconds())
            rows = (
                await session.scalars(
                    select(Certificate)
                    .where(
                        Certificate.status == "installed",
                        Certificate.not_after <= warn_by,
                        or_(Certificate.warned_at.is_(None), Certificate.warned_at <= repeat),
                    )
                    .with_for_update(skip_locked=True)
                )
            ).all()
            for row in rows:
                assert row.not_after is not None
                pending = await store.pending_order(session, row.site_id)
                why = (
                    f"; the last renewal failed: {pending.error.get('message')}"
                    if pending is not None and pending.error
                    else ""
                )
                await self.publisher.emit(
                    CertificateExpiring(
                        tenant_id=row.tenant_id,
                        site_id=row.site_id,
                        domain=row.domain,
                        not_after=row.not_after,
                        error=ErrorInfo(
                            code="certificate_expiring",
                            message=(
                                f"the certificate of {row.domain} expires "
                                f"{row.not_after.isoformat()} and is not renewed yet{why}"
                            )[:1000],
                        ),
                    )
                )
                row.warned_at = now


async def sweep_forever(lifecycle: CertLifecycle, interval: float) -> None:
    while True:
        try:
            if lifecycle.publisher.attached:  # else wait for the broker: nothing to send with
                await lifecycle.sweep()
        except asyncio.CancelledError:
            raise
        except Exception:  # the next round may do better; never kill the service
            log.exception("certificate sweep failed")
        await asyncio.sleep(interval)
