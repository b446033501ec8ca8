"""One ACME order of a site, from the decision to order to the install request.

    claim     under the site's advisory lock: nothing to do when a valid certificate is not
              due, an order is on its way, or the CA asked us to wait (next_attempt_at);
              else the site's pending row (or a new one) becomes ``ordering``.
    preflight HTTP-01: every name resolves (asked of our authoritative servers) to the
              addresses of the site's web hosts -- else no order is sent (dns_not_pointing_here).
    order     new order; publish each challenge (deployer: HTTP-01 file, DNS service: TXT);
              check ourselves it is served (GET through each host's nginx / a query to
              the authoritative servers); answer; poll; withdraw the challenges;
              finalize with a fresh ECDSA P-256 key.
    issued    chain and key stored, ``site.certificate_install_requested`` sent; the
              deployer's ``cert.installed`` finishes it (lifecycle.py).
Failures: a refused or doomed order is recorded ``failed`` with ``next_attempt_at`` from
the backoff (or the CA's Retry-After, whichever is later) and ``cert.failed`` is emitted;
the job is acked, and the sweep asks again when it is due -- the CA is never hammered.
A CA that cannot be reached is Transient: recorded, then the retry ladder (parked at the
end, which alerts as ``cert.parked``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.certs import store
from services.certs.acme_client import (
    AcmeSession,
    CaRateLimited,
    CaRejected,
    PendingChallenge,
    make_csr,
    new_private_key_pem,
)
from services.certs.hosts import HostAddress, challenge_served, site_hosts
from services.certs.metrics import ORDER_SECONDS, ORDERS
from services.certs.resolution import LookupFailed, resolve_addresses, wait_txt_served
from services.certs.settings import CertsSettings
from shared.broker import Publisher
from shared.db import SessionMaker
from shared.errors import Permanent, SitefleetError, Transient, Unavailable
from shared.ids import new_id
from shared.messages import (
    AcmeDnsChallengeRequested,
    AcmeHttpChallengeRequested,
    CertificateFailed,
    CertificateInstallRequested,
    CertificateRequested,
    ErrorInfo,
)
from shared.models import Certificate, DnsRecord, Site
from shared.nameservers import Nameserver
from shared.timeutil import utcnow

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class DnsNotPointingHere(Permanent):
    """A name of the site does not resolve to its web hosts: an HTTP-01 order would fail."""

    code = "dns_not_pointing_here"


def site_names(domain: str, *, wildcard: bool = False) -> list[str]:
    """The names a site's certificate covers: the apex, www and the CDN's origin name; or
    the apex and ``*.<domain>`` (which covers www and proxy) when wildcards are ordered."""
    if wildcard:
        return [domain, f"*.{domain}"]
    return [domain, f"www.{domain}", f"proxy.{domain}"]


def served_names(domain: str, names: list[str]) -> list[str]:
    """The host names a certificate is served under (and checked at): a wildcard stands for
    the site's www and proxy names, as the deployer writes it."""
    served: list[str] = []
    for name in names:
        if name == f"*.{domain}":
            served += [f"www.{domain}", f"proxy.{domain}"]
        else:
            served.append(name)
    return list(dict.fromkeys(served))


def nameservers(settings: CertsSettings) -> list[Nameserver]:
    if settings.acme_nameservers:
        return [Nameserver.parse(s) for s in settings.acme_nameservers]
    return [Nameserver(settings.dns_host, settings.dns_port)]


async def check_dns_ready(session: AsyncSession, site_id: str) -> None:
    """The DNS service has published and verified the site's records (``dns_records``, read
    only): before that an order could only fail. Not yet is Transient: a new site's DNS
    is usually verified seconds after its first deployment, and the retry ladder's first
    steps are short (a site whose DNS never gets there is parked: ``cert.parked``)."""
    statuses = (
        await session.scalars(select(DnsRecord.status).where(DnsRecord.site_id == site_id))
    ).all()
    if not statuses:
        raise Unavailable("the site has no DNS records published yet", code="dns_not_ready")
    pending = [s for s in statuses if s != "verified"]
    if pending:
        raise Unavailable(
            f"{len(pending)} of the site's DNS records are not verified yet",
            code="dns_not_ready",
        )


@dataclass(frozen=True)
class Claim:
    certificate_id: str
    tenant_id: str
    site_id: str
    domain: str
    names: list[str]
    challenge: str
    attempts: int
    # The CA issued it already; only the install request is (re)sent.
    install_only: bool = False


class CertOrders:
    def __init__(
        self,
        *,
        sessionmaker: SessionMaker,
        publisher: Publisher,
        settings: CertsSettings,
        http: httpx.AsyncClient,
        clock: Clock = utcnow,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.publisher = publisher
        self.settings = settings
        self.http = http
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.settings.acme_enabled

    async def request(self, job: CertificateRequested) -> None:
        """Handle ``cert.requested``: make sure the site has a valid certificate."""
        if not self.enabled:
            log.info("ACME is off (no SITEFLEET_ACME_DIRECTORY_URL); no order", extra=_ids(job))
            return
        claim = await self.claim(job)
        if claim is None:
            ORDERS.labels("skipped").inc()
            return
        if claim.install_only:
            await self._request_install(claim)
            return
        started = time.perf_counter()
        try:
            await self.run(claim)
        except asyncio.CancelledError:
            # A shutdown handing the job back: the broker redelivers it, and the row must
            # not look like a live order to that delivery.
            await self._release(claim)
            raise
        except (DnsNotPointingHere, CaRejected) as exc:
            await self._fail_until(claim, exc)
            return
        except Transient as exc:
            ORDERS.labels("retry").inc()
            await self._record_failure(claim, exc, retry_at=None)
            raise
        except SitefleetError as exc:
            ORDERS.labels("failed").inc()
            await self._record_failure(claim, exc, retry_at=None)
            await self._emit_failed(claim, exc.code, exc.message, None)
            raise
        except Exception as exc:
            await self._record_failure(
                claim, Permanent(f"{type(exc).__name__}: {exc}"[:500], code="internal_error"), None
            )
            raise
        ORDERS.labels("issued").inc()
        ORDER_SECONDS.observe(time.perf_counter() - started)
        await self._request_install(claim)

    # --- claim ----------------------------------------------------------------------------

    async def claim(self, job: CertificateRequested) -> Claim | None:
        names = site_names(job.domain, wildcard=self.settings.acme_wildcard)
        challenge = self.settings.challenge
        async with self.sessionmaker.begin() as session:
            await store.lock_site(session, job.site_id)
            site = await session.get(Site, job.site_id)
            if site is None or site.status == "deleting" or site.files_removed:
                log.info("site gone or being deleted; no certificate", extra=_ids(job))
                return None
            now = self.clock()
            force = job.reason == "manual"
            current = await store.current_certificate(session, job.site_id)
            if (
                current is not None
                and not force
                and set(current.names) == set(names)
                and not store.is_due(current, now, self.settings.cert_renew_fraction)
            ):
                log.info("valid certificate not due; no order", extra=_ids(job))
                return None
            row = await store.pending_order(session, job.site_id)
            if row is not None and row.status == "issued":
                return _claim_of(row, install_only=True)
            if (
                row is not None
                and row.status == "ordering"
                and store.in_flight(row, now, self.settings.cert_stale_after)
            ):
                log.info("an order for the site is already running", extra=_ids(job))
                return None
            if (
                row is not None
                and row.status == "failed"
                and row.next_attempt_at is not None
                and row.next_attempt_at > now
                and not force
            ):
                log.info(
                    "the last order failed; waiting before the next",
                    extra={**_ids(job), "next_attempt_at": row.next_attempt_at.isoformat()},
                )
                return None
            if row is None:
                row = Certificate(
                    id=new_id("cert"),
                    site_id=site.id,
                    tenant_id=site.tenant_id,
                    domain=site.domain,
                    names=names,
                    challenge=challenge,
                    status="ordering",
                    attempts=0,
                )
                session.add(row)
            row.status = "ordering"
            row.names = names
            row.challenge = challenge
            row.attempts = (row.attempts or 0) + 1
            row.order_url = None
            row.next_attempt_at = None
            row.updated_at = now
            await session.flush()
            return _claim_of(row)

    # --- the order ------------------------------------------------------------------------

    async def run(self, claim: Claim) -> None:
        async with self.sessionmaker() as session:
            hosts = await site_hosts(session, claim.site_id, self.settings)
            await check_dns_ready(session, claim.site_id)
        if claim.challenge == "http-01":
            await self.preflight(claim, hosts)
        acme = await self._open_acme()
        key_pem = new_private_key_pem()
        order = await acme.new_order(make_csr(key_pem, claim.names))
        async with self.sessionmaker.begin() as session:
            row = await session.get(Certificate, claim.certificate_id, with_for_update=True)
            if row is not None:
                row.order_url = order.uri
                row.updated_at = self.clock()
        pending = acme.pending_challenges(order, claim.challenge)
        try:
            await self._publish(claim, pending, "publish")
            await self._wait_served(claim, pending, hosts)
            for challenge in pending:
                await acme.answer(challenge)
            order = await acme.wait_valid(
                order,
                within=self.settings.acme_order_timeout,
                interval=self.settings.acme_poll_interval,
            )
        finally:
            # The CA has decided (or we gave up): the answers are no use to anyone now.
            await self._withdraw(claim, pending)
        fullchain = await acme.finalize(order, within=self.settings.acme_order_timeout)
        leaf = store.parse_leaf(fullchain)
        async with self.sessionmaker.begin() as session:
            row = await session.get(Certificate, claim.certificate_id, with_for_update=True)
            if row is None:  # the site's files were removed meanwhile
                return
            row.status = "issued"
            row.private_key_pem = key_pem
            row.certificate_pem = fullchain
            row.issuer = leaf.issuer
            row.not_before = leaf.not_before
            row.not_after = leaf.not_after
            row.error = None
            row.next_attempt_at = None
            row.updated_at = self.clock()
        log.info(
            "certificate issued",
            extra={**_ids(claim), "not_after": leaf.not_after.isoformat(), "names": claim.names},
        )

    async def preflight(self, claim: Claim, hosts: list[HostAddress]) -> None:
        """Raise DnsNotPointingHere unless every name resolves only to our addresses."""
        ours = {a for host in hosts for a in host.public_addresses}
        ours |= set(self.settings.acme_extra_addresses)
        server = (
            Nameserver.parse(self.settings.acme_resolver)
            if self.settings.acme_resolver
            else nameservers(self.settings)[0]
        )
        problems: list[str] = []
        for name in claim.names:
            try:
                found = await resolve_addresses(name, server)
            except LookupFailed as exc:
                raise Unavailable(
                    f"could not check where {name} points: {exc}", code="dns_lookup_failed"
                ) from exc
            if not found:
                problems.append(f"{name} does not resolve")
            elif not found <= ours:
                problems.append(f"{name} resolves to {sorted(found)}")
        if problems:
            raise DnsNotPointingHere(
                "; ".join(problems) + f"; the site's web hosts are {sorted(ours)}: "
                "no certificate order sent until DNS points here",
                details={"names": claim.names, "addresses": sorted(ours)},
            )

    async def _open_acme(self) -> AcmeSession:
        directory = self.settings.acme_directory_url
        async with self.sessionmaker.begin() as session:
            account = await store.load_account(session, directory, self.settings.acme_contact_email)
        acme, url = await AcmeSession.open(
            directory,
            account,
            contact_email=self.settings.acme_contact_email,
            ca_bundle=self.settings.acme_ca_bundle,
            request_seconds=self.settings.acme_timeout,
        )
        if url != account.url:
            async with self.sessionmaker.begin() as session:
                await store.save_account_url(session, directory, url)
        return acme

    async def _publish(self, claim: Claim, pending: list[PendingChallenge], action: str) -> None:
        if claim.challenge == "http-01":
            for challenge in pending:
                await self.publisher.submit(
                    AcmeHttpChallengeRequested(
                        site_id=claim.site_id,
                        domain=claim.domain,
                        token=challenge.token,
                        key_authorization=challenge.key_authorization,
                        action="publish" if action == "publish" else "withdraw",
                    )
                )
            return
        for name, values in _txt_records(pending).items():
            await self.publisher.submit(
                AcmeDnsChallengeRequested(
                    tenant_id=claim.tenant_id,
                    site_id=claim.site_id,
                    domain=claim.domain,
                    name=name,
                    values=sorted(values),
                    action="set" if action == "publish" else "clear",
                )
            )

    async def _withdraw(self, claim: Claim, pending: list[PendingChallenge]) -> None:
        try:
            await self._publish(claim, pending, "withdraw")
        except Exception as exc:  # left behind: harmless (unguessable, dead tokens)
            log.warning("could not withdraw challenges", extra={**_ids(claim), "error": repr(exc)})

    async def _wait_served(
        self, claim: Claim, pending: list[PendingChallenge], hosts: list[HostAddress]
    ) -> None:
        """Check the deployer's / DNS service's work ourselves before answering the CA."""
        if not pending:
            return
        within = self.settings.challenge_timeout
        interval = self.settings.challenge_poll_interval
        if claim.challenge == "dns-01":
            servers = nameservers(self.settings)
            wanted = _txt_records(pending)
            reason = await wait_txt_served(wanted, servers, within=within, interval=interval)
        else:
            reason = await self._wait_http_served(pending, hosts, within, interval)
        if reason is not None:
            raise Unavailable(
                f"the {claim.challenge} answer is not served after {within:g} s: {reason}",
                code="challenge_not_served",
            )

    async def _wait_http_served(
        self,
        pending: list[PendingChallenge],
        hosts: list[HostAddress],
        within: float,
        interval: float,
    ) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        waiting = [(c, h) for c in pending for h in hosts]
        reason: str | None = None
        while waiting:
            still: list[tuple[PendingChallenge, HostAddress]] = []
            for challenge, host in waiting:
                why = await challenge_served(
                    self.http,
                    host,
                    challenge.identifier,
                    challenge.token,
                    challenge.key_authorization,
                )
                if why is not None:
                    reason = why
                    still.append((challenge, host))
            waiting = still
            if not waiting:
                return None
            if loop.time() > deadline:
                return reason
            await asyncio.sleep(interval)
        return None

    # --- outcomes -------------------------------------------------------------------------

    async def _request_install(self, claim: Claim) -> None:
        await self.publisher.submit(
            CertificateInstallRequested(
                site_id=claim.site_id, domain=claim.domain, certificate_id=claim.certificate_id
            )
        )

    async def _fail_until(self, claim: Claim, exc: DnsNotPointingHere | CaRejected) -> None:
        """Record a failure that must not be retried at once, and when to try again."""
        delay = store.backoff_delay(claim.attempts, self.settings.cert_retry_backoff)
        if isinstance(exc, CaRateLimited):
            ORDERS.labels("rate_limited").inc()
            delay = max(delay, exc.retry_after or 0.0)
        else:
            ORDERS.labels(
                "dns_not_pointing" if isinstance(exc, DnsNotPointingHere) else "rejected"
            ).inc()
        retry_at = self.clock() + timedelta(seconds=delay)
        log.warning(
            "certificate order failed",
            extra={**_ids(claim), "error_code": exc.code, "error": exc.message},
        )
        await self._record_failure(claim, exc, retry_at=retry_at)
        await self._emit_failed(claim, exc.code, exc.message, retry_at)

    async def _release(self, claim: Claim) -> None:
        try:
            async with self.sessionmaker.begin() as session:
                row = await session.get(Certificate, claim.certificate_id, with_for_update=True)
                if row is not None and row.status == "ordering":
                    row.status = "requested"
                    row.updated_at = self.clock()
        except Exception as exc:  # taken over once stale (cert_stale_after) instead
            log.warning("could not hand the order back", extra={**_ids(claim), "error": repr(exc)})

    async def _record_failure(
        self, claim: Claim, exc: SitefleetError, retry_at: datetime | None
    ) -> None:
        async with self.sessionmaker.begin() as session:
            row = await session.get(Certificate, claim.certificate_id, with_for_update=True)
            if row is None or row.status != "ordering":
                return
            row.status = "failed"
            row.error = {"code": exc.code, "message": exc.message[:1000], **exc.details}
            row.next_attempt_at = retry_at
            row.updated_at = self.clock()

    async def _emit_failed(
        self, claim: Claim, code: str, message: str, retry_at: datetime | None
    ) -> None:
        await self.publisher.emit(
            CertificateFailed(
                tenant_id=claim.tenant_id,
                site_id=claim.site_id,
                domain=claim.domain,
                error=ErrorInfo(code=code, message=message[:1000]),
                retry_at=retry_at,
            )
        )


def _txt_records(pending: list[PendingChallenge]) -> dict[str, set[str]]:
    """TXT values per ``_acme-challenge`` name (an apex and its wildcard share one)."""
    records: dict[str, set[str]] = {}
    for challenge in pending:
        records.setdefault(challenge.txt_name, set()).add(challenge.validation)
    return records


def _claim_of(row: Certificate, *, install_only: bool = False) -> Claim:
    return Claim(
        certificate_id=row.id,
        tenant_id=row.tenant_id,
        site_id=row.site_id,
        domain=row.domain,
        names=list(row.names),
        challenge=row.challenge,
        attempts=row.attempts,
        install_only=install_only,
    )


def _ids(obj: CertificateRequested | Claim) -> dict[str, str]:
    return {"site_id": obj.site_id, "domain": obj.domain}
