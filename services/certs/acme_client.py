"""Talking to the CA (RFC 8555) through certbot's ``acme`` library: the account, an order,
its challenges, finalization. The library is blocking (requests); every call runs in a
worker thread so the event loop (and the broker heartbeats) never waits on the CA.

One ``AcmeSession`` per order: the library's network object (nonces, a requests session,
the last response's ``Retry-After``) is not shared between threads.

CA outcomes become the error tree here, once:
    connection refused / timeout / 5xx without a problem document -> Unavailable (retry ladder)
    problem ``rateLimited``                  -> CaRateLimited (wait for Retry-After, no ladder)
    problem ``serverInternal``/``badNonce``  -> Unavailable
    any other problem document               -> CaRejected (backoff, no ladder)
    a challenge found invalid by the CA      -> CaRejected with the CA's problem detail
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
from acme import challenges, client, crypto_util, messages
from acme import errors as acme_errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.b64 import b64encode
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from shared.errors import Permanent, Unavailable

T = TypeVar("T")

RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"
_TRANSIENT_PROBLEMS = {"serverInternal", "badNonce"}
USER_AGENT = "sitefleet-certs (acme-python)"


class CaRejected(Permanent):
    """The CA refused the order or a challenge; retrying at once cannot help."""

    code = "acme_rejected"

    def __init__(self, message: str, *, code: str | None = None, problem: str | None = None):
        super().__init__(message, code=code, details={"problem": problem} if problem else None)
        self.problem = problem


class CaRateLimited(CaRejected):
    """``urn:ietf:params:acme:error:rateLimited``: wait ``retry_after`` seconds (None: the
    CA did not say; the backoff decides)."""

    code = "acme_rate_limited"

    def __init__(self, message: str, *, retry_after: float | None):
        super().__init__(message, problem=RATE_LIMITED)
        self.retry_after = retry_after


def new_private_key_pem() -> str:
    """An ECDSA P-256 key (PKCS#8 PEM): accounts and certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def make_csr(private_key_pem: str, names: list[str]) -> bytes:
    return crypto_util.make_csr(private_key_pem.encode(), names)


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def problem_error(problem: messages.Error, retry_after: float | None) -> Exception:
    """The error tree's view of a CA problem document (RFC 8555 §6.7)."""
    detail = problem.detail or problem.title or problem.description or str(problem.typ)
    name = problem.code or str(problem.typ).rsplit(":", 1)[-1]
    if problem.typ == RATE_LIMITED:
        return CaRateLimited(f"the CA rate-limited us: {detail}", retry_after=retry_after)
    if name in _TRANSIENT_PROBLEMS:
        return Unavailable(f"the CA failed: {detail}", code="ca_unavailable")
    return CaRejected(f"the CA refused: {detail}", code=f"acme_{name}", problem=str(problem.typ))


@dataclass
class PendingChallenge:
    """One authorization's challenge of the type we answer."""

    identifier: str
    type: str
    token: str
    key_authorization: str
    # What the CA looks for: the key authorization (HTTP-01) or its digest (DNS-01 TXT).
    validation: str
    body: messages.ChallengeBody
    response: challenges.ChallengeResponse

    @property
    def txt_name(self) -> str:
        return f"_acme-challenge.{self.identifier}."


@dataclass(frozen=True)
class Account:
    key_pem: str
    url: str | None


class AcmeSession:
    """The CA as one order sees it (open with ``AcmeSession.open``)."""

    acme: client.ClientV2
    key: JWK

    def __init__(self) -> None:
        self.retry_after: float | None = None

    @classmethod
    async def open(
        cls,
        directory_url: str,
        account: Account,
        *,
        contact_email: str = "",
        ca_bundle: str = "",
        request_seconds: float = 30.0,
    ) -> tuple[AcmeSession, str]:
        """Fetch the directory and log in (registering the account if it has no URL yet);
        returns the session and the account URL to keep."""
        private = serialization.load_pem_private_key(account.key_pem.encode(), password=None)
        key = JWKEC(key=private)

        def connect() -> tuple[client.ClientV2, str]:
            net = client.ClientNetwork(
                key,
                alg=ES256,
                # requests takes a CA bundle path where the library types a bool.
                verify_ssl=ca_bundle or True,  # type: ignore[arg-type]
                user_agent=USER_AGENT,
                timeout=int(request_seconds),
            )
            net.session.hooks["response"].append(session.remember_retry_after)
            directory = client.ClientV2.get_directory(directory_url, net)
            acme = client.ClientV2(directory, net)
            if account.url:
                net.account = messages.RegistrationResource(
                    body=messages.Registration(), uri=account.url
                )
                return acme, account.url
            registration = messages.NewRegistration.from_data(
                email=contact_email or None, terms_of_service_agreed=True
            )
            try:
                regr = acme.new_account(registration)
            except acme_errors.ConflictError as exc:  # the key already has an account
                regr = messages.RegistrationResource(body=messages.Registration(), uri=exc.location)
                net.account = regr
            return acme, regr.uri

        session = cls()
        acme, url = await session._call(connect)
        session.acme = acme
        session.key = key
        return session, url

    def remember_retry_after(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """A requests response hook: the last answer's Retry-After (the library drops it
        when it raises a problem document)."""
        self.retry_after = parse_retry_after(response.headers.get("Retry-After"))

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except messages.Error as exc:
            raise problem_error(exc, self.retry_after) from exc
        except acme_errors.ValidationError as exc:
            raise _validation_error(exc.failed_authzrs) from exc
        except acme_errors.IssuanceError as exc:
            raise problem_error(exc.error, self.retry_after) from exc
        except acme_errors.TimeoutError as exc:
            raise Unavailable("the CA did not finish the order in time", code="ca_timeout") from exc
        except (requests.RequestException, acme_errors.ClientError, OSError) as exc:
            raise Unavailable(
                f"the CA is unreachable: {type(exc).__name__}: {exc}"[:500], code="ca_unreachable"
            ) from exc

    async def new_order(self, csr_pem: bytes) -> messages.OrderResource:
        return await self._call(lambda: self.acme.new_order(csr_pem))

    def pending_challenges(
        self, order: messages.OrderResource, challenge_type: str
    ) -> list[PendingChallenge]:
        """The challenges to answer: one per authorization still pending (a CA may reuse
        an authorization it validated before)."""
        found: list[PendingChallenge] = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            identifier = authz.body.identifier.value
            for challb in authz.body.challenges:
                if challb.chall.typ != challenge_type:
                    continue
                chall = challb.chall
                assert isinstance(chall, challenges.KeyAuthorizationChallenge)
                response, validation = chall.response_and_validation(self.key)
                found.append(
                    PendingChallenge(
                        identifier=identifier,
                        type=challenge_type,
                        token=b64encode(chall.token).decode(),
                        key_authorization=response.key_authorization,
                        validation=str(validation),
                        body=challb,
                        response=response,
                    )
                )
                break
            else:
                raise CaRejected(
                    f"the CA offers no {challenge_type} challenge for {identifier}",
                    code="acme_challenge_unavailable",
                )
        return found

    async def answer(self, challenge: PendingChallenge) -> None:
        await self._call(lambda: self.acme.answer_challenge(challenge.body, challenge.response))

    async def wait_valid(
        self, order: messages.OrderResource, *, within: float, interval: float
    ) -> messages.OrderResource:
        """Poll the order's authorizations until every one is decided; raise CaRejected with
        the CA's problem detail when one is invalid."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        done: dict[str, messages.AuthorizationResource] = {}
        while True:
            for authz in order.authorizations:
                if authz.uri in done:
                    continue
                polled = await self._poll(authz)
                if polled.body.status == messages.STATUS_PENDING:
                    continue
                if polled.body.status != messages.STATUS_VALID:
                    raise _validation_error([polled])
                done[authz.uri] = polled
            if len(done) == len(order.authorizations):
                updated: messages.OrderResource = order.update(
                    authorizations=[done[a.uri] for a in order.authorizations]
                )
                return updated
            if loop.time() > deadline:
                raise Unavailable("the CA did not validate in time", code="ca_timeout")
            await asyncio.sleep(interval)

    async def _poll(self, authz: messages.AuthorizationResource) -> messages.AuthorizationResource:
        polled, _ = await self._call(lambda: self.acme.poll(authz))
        return polled

    async def finalize(self, order: messages.OrderResource, *, within: float) -> str:
        """Send the CSR, wait for issuance; returns the full chain (PEM)."""
        # The library compares with naive local time.
        deadline = dt.datetime.now() + dt.timedelta(seconds=within)  # noqa: DTZ005
        done = await self._call(lambda: self.acme.finalize_order(order, deadline))
        if not done.fullchain_pem:
            raise Unavailable("the CA returned no certificate", code="ca_unavailable")
        return str(done.fullchain_pem)


def _validation_error(failed: list[messages.AuthorizationResource]) -> CaRejected:
    """The CA's reasons a challenge failed, e.g. ``acme_unauthorized: www.example.com:
    The key authorization file from the server did not match this challenge``."""
    reasons: list[str] = []
    code = "acme_challenge_invalid"
    problem_type: str | None = None
    for authz in failed:
        name = authz.body.identifier.value
        for challb in authz.body.challenges:
            if challb.error is not None:
                error = challb.error
                problem_type = problem_type or str(error.typ)
                code = f"acme_{error.code or 'challenge_invalid'}"
                reasons.append(f"{name}: {error.detail or error.title or error.typ}")
        if not any(c.error for c in authz.body.challenges):
            reasons.append(f"{name}: authorization {authz.body.status}")
    return CaRejected(
        "the CA rejected the challenge: " + "; ".join(reasons)[:800],
        code=code,
        problem=problem_type,
    )
