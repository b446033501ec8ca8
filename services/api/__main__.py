"""Run the API: ``python -m services.api``."""

from __future__ import annotations

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.logs import configure_logging


def main() -> None:
    settings = ApiSettings()
    configure_logging("api", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        # SIGTERM: stop accepting, let the requests in flight finish (then the lifespan's
        # shutdown drains the event consumer and the outbox relay: services/api/app.py).
        timeout_graceful_shutdown=settings.api_shutdown_grace,
    )


if __name__ == "__main__":
    main()
