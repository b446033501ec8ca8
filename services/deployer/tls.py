"""HTTPS on the web hosts, deployer side (issue 8): HTTP-01 answers served from every web host
of a site, and certificates checked and written to them.

The certs service runs the ACME orders and owns the ``certificates`` table; the deployer only
reads a row by id (read-only transaction), checks it (the key is the leaf's, the chain parses,
every name is one the site is served under, the leaf covers them, it has not expired), and
writes ``<sites_root>/.tls/<name>.pem`` (key + full chain, one file per served name) on each
host, where nginx reads it at the next handshake: no reload (layout.py, the nginx templates).

Nothing a message carries reaches a path unchecked: tokens and key authorizations are
matched against RFC 8555's shapes here and again on the host (layout.check_challenge); names
come from the row and must be the site's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.deployer.layout import check_challenge, served_names
from services.deployer.release import check_domain
from services.deployer.target import Target
from shared.errors import Invalid, NotFound, Permanent, SitefleetError, Transient, Unavailable
from shared.models import Certificate, Site

log = logging.getLogger(__name__)

# A full chain longer than this is not something a CA sends (bytes of PEM).
MAX_PEM_BYTES = 64 * 1024


def check_acme_challenge(token: str, key_authorization: str | None) -> None:
    """``Permanent`` (``invalid_acme_challenge``) unless the token is base64url (22-128
    characters) and the key authorization is ``<token>.<base64url SHA-256 thumbprint>``."""
    try:
        check_challenge(token, key_authorization)
    except ValueError as exc:
        raise Permanent(str(exc), code="invalid_acme_challenge") from None


@dataclass(frozen=True)
class CertificateFiles:
    """What goes on the hosts: one PEM (key, then leaf and chain) under each name."""

    certificate_id: str
    names: list[str]
    pem: bytes
    serial: int
    not_after: datetime


def check_certificate(
    certificate_id: str,
    *,
    domain: str,
    names: Sequence[str],
    private_key_pem: str,
    chain_pem: str,
    now: datetime | None = None,
) -> CertificateFiles:
    """``Permanent`` unless the key and chain belong together and serve only ``domain``.

    The names written are the row's names, a wildcard ``*.<domain>`` standing for ``www.``
    and ``proxy.`` (the names nginx serves a site under); each must be covered by the leaf.
    """
    check_domain(domain)
    if len(private_key_pem) + len(chain_pem) > MAX_PEM_BYTES:
        raise Permanent(f"certificate {certificate_id} is too large", code="invalid_certificate")
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        chain = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as exc:
        raise Permanent(
            f"certificate {certificate_id}: key or chain does not parse: {exc}",
            code="invalid_certificate",
        ) from None
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise Permanent(
            f"certificate {certificate_id}: unsupported key type", code="invalid_certificate"
        )
    leaf = chain[0]
    if key.public_key() != leaf.public_key():
        raise Permanent(
            f"certificate {certificate_id}: the private key is not the certificate's",
            code="certificate_key_mismatch",
        )
    for child, parent in zip(chain, chain[1:], strict=False):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise Permanent(
                f"certificate {certificate_id}: the chain is not in order (a certificate is "
                "not issued by the next one)",
                code="invalid_certificate",
            ) from None
    now = now or datetime.now(UTC)
    if leaf.not_valid_after_utc <= now:
        raise Permanent(
            f"certificate {certificate_id} expired at {leaf.not_valid_after_utc.isoformat()}",
            code="certificate_expired",
        )
    allowed = set(served_names(domain))
    wanted: list[str] = []
    for name in names:
        name = str(name).lower().rstrip(".")
        expanded = [n for n in allowed if n != domain] if name == f"*.{domain}" else [name]
        if not set(expanded) <= allowed:
            raise Permanent(
                f"certificate {certificate_id} names {name!r}, which is not a name of "
                f"{domain} (only {', '.join(sorted(allowed))} or *.{domain})",
                code="certificate_name_foreign",
            )
        wanted += [n for n in expanded if n not in wanted]
    if not wanted:
        raise Permanent(f"certificate {certificate_id} names nothing", code="invalid_certificate")
    covered = _leaf_names(leaf)
    for name in wanted:
        if not _covers(covered, name):
            raise Permanent(
                f"certificate {certificate_id} does not cover {name}",
                code="certificate_name_foreign",
            )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)
    return CertificateFiles(
        certificate_id, sorted(wanted), pem, leaf.serial_number, leaf.not_valid_after_utc
    )


def _leaf_names(leaf: x509.Certificate) -> list[str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [name.lower().rstrip(".") for name in san.value.get_values_for_type(x509.DNSName)]


def _covers(patterns: list[str], name: str) -> bool:
    for pattern in patterns:
        if pattern == name:
            return True
        if pattern.startswith("*.") and name.split(".", 1)[-1] == pattern[2:]:
            return True
    return False


async def load_certificate(
    engine: AsyncEngine, certificate_id: str, *, site_id: str, domain: str
) -> CertificateFiles | None:
    """The checked files of ``certificate_id``; None when there is nothing to install: the
    site is gone, or the certificate was superseded (a newer one of the site is already
    installed: a late retry of an older install must not put the older one back).
    ``NotFound``/``Permanent`` for a row that is missing, another site's, or unusable."""
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(postgresql_readonly=True)
            async with conn.begin():
                row = (
                    await conn.execute(
                        select(
                            Certificate.site_id,
                            Certificate.domain,
                            Certificate.names,
                            Certificate.status,
                            Certificate.created_at,
                            Certificate.private_key_pem,
                            Certificate.certificate_pem,
                        ).where(Certificate.id == certificate_id)
                    )
                ).one_or_none()
                site = (
                    await conn.execute(
                        select(Site.domain, Site.files_removed).where(Site.id == site_id)
                    )
                ).one_or_none()
                newer = None
                if row is not None:
                    newer = await conn.scalar(
                        select(Certificate.id)
                        .where(
                            Certificate.site_id == site_id,
                            Certificate.status == "installed",
                            Certificate.created_at > row.created_at,
                        )
                        .limit(1)
                    )
    except (SQLAlchemyError, OSError) as exc:
        raise Unavailable(
            f"reading certificate {certificate_id} failed: the database is unavailable: {exc}"
        ) from exc
    if site is None or site.files_removed:
        log.info(
            "certificate not installed: the site is gone",
            extra={"site_id": site_id, "certificate_id": certificate_id},
        )
        return None
    if row is None:
        raise NotFound(f"no certificate {certificate_id}", code="certificate_not_found")
    if row.site_id != site_id or row.domain != domain or site.domain != domain:
        raise Permanent(
            f"certificate {certificate_id} is not for site {site_id} ({domain})",
            code="certificate_name_foreign",
        )
    if row.status == "superseded" or newer is not None:
        log.info(
            "certificate not installed: superseded by a newer one",
            extra={"site_id": site_id, "certificate_id": certificate_id, "newer": newer},
        )
        return None
    if not row.private_key_pem or not row.certificate_pem:
        raise Permanent(
            f"certificate {certificate_id} has no key or chain yet", code="invalid_certificate"
        )
    return check_certificate(
        certificate_id,
        domain=domain,
        names=list(row.names or []),
        private_key_pem=row.private_key_pem,
        chain_pem=row.certificate_pem,
    )


async def on_every_host(
    targets: Sequence[Target], what: str, action: Callable[[Target], Awaitable[None]]
) -> None:
    """Run ``action(target)`` on every host at once; if any failed, raise the first failure
    (named after its host) as ``Transient`` once all have finished: what reached the other
    hosts stays (every action is idempotent) and the retry redoes all of them."""
    results = await asyncio.gather(*(action(t) for t in targets), return_exceptions=True)
    failures = [
        (target, result)
        for target, result in zip(targets, results, strict=True)
        if isinstance(result, BaseException)
    ]
    for target, result in failures:
        log.warning(
            f"{what} failed on a web host",
            extra={"host": target.name, "error": getattr(result, "message", str(result))},
        )
    if not failures:
        return
    target, error = failures[0]
    if not isinstance(error, SitefleetError):
        raise error
    if isinstance(error, Invalid | Permanent | NotFound):
        raise error  # the host refused the arguments: a retry would be refused again
    message = error.message
    if f"web host {target.name}" not in message:
        message = f"web host {target.name}: {message}"
    if len(failures) > 1:
        message += f" (and {len(failures) - 1} more host(s))"
    raise Transient(f"{what}: {message}", code=error.code) from error
