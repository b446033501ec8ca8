"""Correlation ids: taken from ``X-Request-ID`` (or made up), logged with every line, carried
in every message this request causes, and echoed in the response."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logs import correlation

_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class CorrelationId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        cid = given if _SAFE.match(given) else str(uuid.uuid4())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", cid.encode())]
            await send(message)

        with correlation(cid):
            await self.app(scope, receive, send_with_id)
