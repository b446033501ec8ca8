"""Errors -> HTTP, once: every error body is ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import SitefleetError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "malformed_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or {}}},
        status_code=status,
        headers=headers,
    )


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out or "body"


async def _on_sitefleet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SitefleetError)
    headers = None
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float) and exc.http_status in (429, 503):
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    if exc.http_status >= 500:
        log.warning("request failed", extra={"code": exc.code, "error": exc.message})
    return error_response(exc.http_status, exc.code, exc.message, exc.details, headers)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "malformed_request", "the request body is not valid JSON")
    fields = [
        {"field": _field_path(tuple(e.get("loc", ()))), "message": e.get("msg", "")}
        for e in errors[:50]
    ]
    if any(e.get("loc") == ("body",) for e in errors):
        return error_response(
            400, "malformed_request", "the request body must be a JSON object", {"fields": fields}
        )
    return error_response(422, "validation_failed", "the request is not valid", {"fields": fields})


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, message, headers=headers)


async def _on_integrity_error(request: Request, exc: Exception) -> JSONResponse:
    # Two requests raced past a uniqueness check; the database had the last word.
    return error_response(409, "conflict", "the request conflicts with the current state")


async def _on_database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable", extra={"error": repr(exc)})
    return error_response(
        503, "database_unavailable", "the database is unavailable", headers={"Retry-After": "5"}
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "something went wrong on our side")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SitefleetError, _on_sitefleet_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(IntegrityError, _on_integrity_error)
    app.add_exception_handler(OperationalError, _on_database_down)
    app.add_exception_handler(InterfaceError, _on_database_down)
    app.add_exception_handler(ConnectionError, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)
