"""A PostgreSQL restart under a running store: idle pooled connections are checked before use.

Each test runs its own throwaway server, since it restarts it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fleetbatch.settings import Settings
from fleetbatch.store import database
from fleetbatch.store.database import Store
from support.postgres import PostgresServer


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


async def _open(server: PostgresServer, tmp_path: Path) -> Store:
    url = server.create_database()
    return await Store.open(Settings(data_dir=tmp_path, database=url, db_pool_size=1))


async def _answer(store: Store) -> int:
    async with store.write() as conn:
        return int((await conn.execute(text("SELECT 41 + 1"))).scalar_one())


async def test_an_idle_connection_is_replaced_after_a_restart(
    own_postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _open(own_postgres, tmp_path)
    try:
        assert await _answer(store) == 42
        own_postgres.restart()
        # every checkout now counts as after a long idle: the dead connection is pinged,
        # dropped and replaced before the statement runs
        monkeypatch.setattr(database, "PING_AFTER_IDLE_S", -1.0)
        assert await _answer(store) == 42
    finally:
        await store.close()


async def test_a_connection_in_steady_use_fails_once_then_is_replaced(
    own_postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "PING_AFTER_IDLE_S", 1e9)  # however long the restart takes
    store = await _open(own_postgres, tmp_path)
    try:
        assert await _answer(store) == 42
        own_postgres.restart()
        # used a moment ago: not pinged, so the statement meets the cut connection, and
        # the pool drops it; the caller's retry gets a fresh one
        with pytest.raises(DBAPIError):
            await _answer(store)
        assert await _answer(store) == 42
    finally:
        await store.close()
