"""The one error tree of Sitefleet.

    SitefleetError                 base; carries a snake_case ``code`` and ``details``
     ├── Invalid                   bad input (HTTP 422; consumer: park)
     │    └── Malformed            unparseable input (HTTP 400)
     ├── NotFound                  (HTTP 404; consumer: park)
     ├── Conflict                  state conflict (HTTP 409; consumer: park)
     ├── Unauthorized              (HTTP 401)
     ├── Forbidden                 (HTTP 403)
     ├── TooLarge                  (HTTP 413)
     ├── Permanent                 a job that can never succeed (consumer: park)
     └── Transient                 may succeed later (HTTP 503; consumer: retry with backoff)
          ├── Unavailable          a dependency is down
          └── RateLimited          too many requests (HTTP 429 with Retry-After)

Domain code raises these; the API maps them to HTTP once (services/api/errors.py) and the
consumer helper maps them to ack / retry / park once (shared/consumer.py).
"""

from __future__ import annotations

from typing import Any


class SitefleetError(Exception):
    code = "error"
    http_status = 500

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = details or {}


class Invalid(SitefleetError):
    code = "validation_failed"
    http_status = 422


class Malformed(Invalid):
    code = "malformed_request"
    http_status = 400


class NotFound(SitefleetError):
    code = "not_found"
    http_status = 404


class Conflict(SitefleetError):
    code = "conflict"
    http_status = 409


class Unauthorized(SitefleetError):
    code = "unauthorized"
    http_status = 401


class Forbidden(SitefleetError):
    code = "forbidden"
    http_status = 403


class TooLarge(SitefleetError):
    code = "body_too_large"
    http_status = 413


class Permanent(SitefleetError):
    code = "permanent_failure"
    http_status = 500


class Transient(SitefleetError):
    code = "transient_failure"
    http_status = 503
    retry_after: float = 5.0


class Unavailable(Transient):
    code = "dependency_unavailable"


class RateLimited(Transient):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, details={"retry_after": round(retry_after, 1)})
        self.retry_after = retry_after
