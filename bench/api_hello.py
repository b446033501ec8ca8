"""S8's server: the API exactly as ``python -m services.api`` runs it (same app, same
middleware, same uvicorn settings through ``services.api.__main__.serve``) plus one
hello-world route, so ``POST /v1/sites`` and the hello-world route are measured on the same
server in the same process."""

from __future__ import annotations

from services.api.__main__ import serve
from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.logs import configure_logging

HELLO = "/bench/hello"


def main() -> None:
    settings = ApiSettings()
    configure_logging("api", settings.log_level)
    app = create_app(settings)

    @app.get(HELLO, include_in_schema=False)
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    serve(app, settings)


if __name__ == "__main__":
    main()
