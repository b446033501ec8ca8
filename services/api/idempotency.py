"""``Idempotency-Key`` for POSTs: the same key and body within 24 h get the first response,
and the work is done once. The key row is written in the request's own transaction, so the
work and its recorded response commit (or roll back) together; a concurrent duplicate
blocks on the row until the first commits, then replays it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from shared.errors import Conflict, Invalid
from shared.models import IdempotencyKey
from shared.timeutil import utcnow

TTL = timedelta(hours=24)
MAX_KEY_LENGTH = 255


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(jsonable_encoder(body), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


async def run_once(
    session: AsyncSession,
    *,
    tenant_id: str,
    key: str | None,
    fingerprint: str,
    status_code: int,
    work: Callable[[], Awaitable[BaseModel]],
) -> BaseModel | JSONResponse:
    if key is None:
        return await work()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Invalid(
            "Idempotency-Key must be 1 to 255 characters",
            code="invalid_idempotency_key",
            details={"fields": [{"field": "Idempotency-Key", "message": "1 to 255 characters"}]},
        )
    await session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < utcnow() - TTL,
        )
    )
    inserted = await session.scalar(
        insert(IdempotencyKey)
        .values(
            tenant_id=tenant_id, key=key, request_hash=fingerprint, status_code=0, response_body={}
        )
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    )
    if inserted is None:
        first = await session.scalar(
            select(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key
            )
        )
        if first is None or first.request_hash != fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used with a different request",
                code="idempotency_key_reused",
            )
        return JSONResponse(
            first.response_body,
            status_code=first.status_code,
            headers={"Idempotent-Replayed": "true"},
        )
    result = await work()
    row = await session.get(IdempotencyKey, (tenant_id, key))
    assert row is not None
    row.status_code = status_code
    row.response_body = jsonable_encoder(result)
    return result
