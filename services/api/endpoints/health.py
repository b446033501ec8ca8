"""Liveness, readiness and metrics (no auth)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from services.api.deps import StateDep
from services.api.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    checks = {"postgres": False, "rabbitmq": state.link.ready}
    try:
        async with state.sessionmaker() as session:
            await session.execute(text("select 1"))
        checks["postgres"] = True
    except Exception:  # noqa: S110 - any failure means "not ready"; reported below
        pass
    if all(checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    down = ", ".join(name for name, ok in checks.items() if not ok)
    return error_response(
        503, "not_ready", f"unavailable: {down}", {"checks": checks}, headers={"Retry-After": "5"}
    )
