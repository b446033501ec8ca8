from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def test_migrated_schema_has_every_table(database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("select tablename from pg_tables where schemaname = 'public'")
        )
        tables = {r[0] for r in rows}
    await engine.dispose()
    assert {"tenants", "api_tokens", "sites", "deployments", "outbox", "dns_records"} <= tables
