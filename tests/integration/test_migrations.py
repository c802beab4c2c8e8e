"""The Alembic migrations build exactly the schema `store/schema.py` declares, on both databases."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from fleetbatch.settings import Settings
from fleetbatch.store.database import Store
from fleetbatch.store.schema import metadata


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_declared_tables(settings: Settings) -> None:
    store = await Store.open(settings)
    try:
        async with store.read() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await store.close()


async def test_concurrent_first_starts_migrate_once(settings: Settings) -> None:
    stores = await asyncio.gather(*(Store.open(settings) for _ in range(4)))
    try:
        async with stores[0].read() as conn:
            versions = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).all()
        assert len(versions) == 1
    finally:
        for store in stores:
            await store.close()
