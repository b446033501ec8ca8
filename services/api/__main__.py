"""Run the API: ``python -m services.api``."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.logs import configure_logging


def serve(app: FastAPI, settings: ApiSettings) -> None:
    """Serve ``app`` the way the API runs (bench/s8_ingress.py serves its hello-world
    route through this too, so both sides of S8 run under the same server settings).
    uvloop and httptools are named rather than left to ``auto``, which silently falls back
    to asyncio and h11 when they are missing."""
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        # SIGTERM: stop accepting, let the requests in flight finish (then the lifespan's
        # shutdown drains the event consumer and the outbox relay: services/api/app.py).
        timeout_graceful_shutdown=settings.api_shutdown_grace,
    )


def main() -> None:
    settings = ApiSettings()
    configure_logging("api", settings.log_level)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
