"""The ``namecom`` registrar: Name.com's CORE API (JSON over HTTPS, HTTP Basic auth).

Calls (paths under ``/core/v1``, the ``:`` of a custom method is not encoded):
    POST domains:checkAvailability {"domainNames": [d]}   -> {"results": [{"purchasable",
                                                              "purchasePrice", ...}]}
    POST domains {"domain": {"domainName", "nameservers"?, "contacts"?}, "years",
                  "purchasePrice"?}  + X-Idempotency-Key    -> {"domain", "order", "totalPaid"}
    GET  domains/{d}                                        -> the domain (404: not ours)
    POST domains/{d}:setNameservers {"nameservers": [...]}  -> the domain
    POST domains/{d}:renew {"years", "purchasePrice"?}      -> {"domain", "order", "totalPaid"}
Errors are ``{"message", "details"?}`` with the HTTP status: 401/403 -> Permanent
(credentials), other 4xx -> Permanent (refused; ``domain_unavailable`` when the name is not
purchasable), 429 -> RateLimited (Retry-After), 5xx, timeouts, connection errors -> Unavailable.
The sandbox environment is ``https://api.dev.name.com`` with the username suffixed "-test".
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from shared.errors import Conflict, Permanent, RateLimited, Unavailable
from shared.registrar import Availability, Price, Registration
from shared.settings import DomainSettings

PREFIX = "/core/v1"


class NameComRegistrar:
    name = "namecom"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        username: str,
        token: str,
        timeout: float = 30.0,
        currency: str = "USD",
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/") + PREFIX
        self.auth = httpx.BasicAuth(username, token)
        self.timeout = httpx.Timeout(timeout)
        self.currency = currency

    @classmethod
    def from_settings(cls, http: httpx.AsyncClient, settings: DomainSettings) -> NameComRegistrar:
        return cls(
            http,
            base_url=settings.namecom_api_url,
            username=settings.namecom_username,
            token=settings.namecom_token.get_secret_value(),
            timeout=settings.registrar_timeout,
            currency=settings.registrar_currency,
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        not_found_ok: bool = False,
    ) -> dict[str, Any] | None:
        try:
            response = await self.http.request(
                method,
                f"{self.base_url}/{path}",
                json=json,
                headers=headers,
                auth=self.auth,
                timeout=self.timeout,
            )
        except httpx.TimeoutException as exc:
            # The registrar may have acted (charged) before we stopped waiting: callers
            # must ask ``get`` before trying a purchase again.
            raise Unavailable(
                f"Name.com did not answer {method} {path} in time: {type(exc).__name__}",
                code="registrar_timeout",
            ) from exc
        except httpx.TransportError as exc:
            raise Unavailable(
                f"Name.com unreachable: {type(exc).__name__}: {exc}", code="registrar_unreachable"
            ) from exc
        if response.status_code == 404 and not_found_ok:
            return None
        if response.is_success:
            body = response.json() if response.content else {}
            return body if isinstance(body, dict) else {}
        raise _error(response, f"{method} {path}")

    async def check(self, domain: str) -> Availability:
        body = await self._call("POST", "domains:checkAvailability", json={"domainNames": [domain]})
        results = (body or {}).get("results") or []
        result = next((r for r in results if r.get("domainName") == domain), None)
        if result is None or not result.get("purchasable"):
            reason = (result or {}).get("reason") or "not purchasable"
            return Availability(domain, False, None, reason=reason)
        amount = result.get("purchasePrice")
        price = Price(f"{Decimal(str(amount)):.2f}", self.currency) if amount is not None else None
        return Availability(domain, True, price)

    async def register(
        self, domain: str, *, years: int, contact: dict[str, str], order_id: str
    ) -> Registration:
        payload: dict[str, Any] = {"domain": {"domainName": domain}, "years": years}
        if contact:
            payload["domain"]["contacts"] = {
                role: contact for role in ("registrant", "admin", "tech", "billing")
            }
        availability = await self.check(domain)
        if not availability.available:
            raise Conflict(
                f"{domain} cannot be registered: {availability.reason}", code="domain_unavailable"
            )
        if availability.price is not None:
            # Confirms the price we showed; Name.com refuses a premium name without it.
            payload["purchasePrice"] = float(availability.price.amount)
        body = await self._call(
            "POST", "domains", json=payload, headers={"X-Idempotency-Key": order_id}
        )
        data = body or {}
        return _registration(data.get("domain") or {}, domain, order=data.get("order"))

    async def get(self, domain: str) -> Registration | None:
        body = await self._call("GET", f"domains/{domain}", not_found_ok=True)
        return None if body is None else _registration(body, domain)

    async def set_nameservers(self, domain: str, nameservers: list[str]) -> None:
        await self._call(
            "POST",
            f"domains/{domain}:setNameservers",
            json={"nameservers": [ns.rstrip(".") for ns in nameservers]},
        )

    async def renew(self, domain: str, *, years: int, order_id: str) -> Registration:
        body = await self._call(
            "POST",
            f"domains/{domain}:renew",
            json={"years": years},
            headers={"X-Idempotency-Key": order_id},
        )
        data = body or {}
        return _registration(data.get("domain") or {}, domain, order=data.get("order"))


def _registration(data: dict[str, Any], domain: str, order: Any = None) -> Registration:
    expire = data.get("expireDate")
    ns = data.get("nameservers") or []
    if isinstance(ns, dict):  # some examples show an index-keyed object
        ns = list(ns.values())
    return Registration(
        domain=str(data.get("domainName") or domain),
        expires_at=datetime.fromisoformat(expire.replace("Z", "+00:00")) if expire else None,
        nameservers=tuple(str(n) for n in ns),
        registrar_order_id=str(order) if order is not None else None,
    )


def _error(response: httpx.Response, what: str) -> Exception:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or response.reason_phrase or "error")
    if body.get("details"):
        message = f"{message}: {body['details']}"
    status = response.status_code
    text = f"Name.com refused {what} (HTTP {status}): {message}"
    if status in (401, 403):
        return Permanent(text, code="registrar_auth_failed")
    if status == 429:
        retry = response.headers.get("Retry-After", "")
        return RateLimited(text, retry_after=float(retry) if retry.isdigit() else 30.0)
    if status >= 500:
        return Unavailable(text, code="registrar_unavailable")
    if "not available" in message.lower() or "unavailable" in message.lower():
        return Conflict(text, code="domain_unavailable")
    return Permanent(text, code="registrar_rejected")
