"""The shared fixtures work: real PostgreSQL, real Mosquitto, settings on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from sqlalchemy import inspect

from fleetbatch.settings import Settings
from fleetbatch.store.database import Store
from support import postgres
from support.mosquitto import MosquittoBroker, MosquittoUnavailable, find_mosquitto
from support.postgres import PostgresServer, PostgresUnavailable, find_bindir
from support.waiting import wait_until, wait_until_sync

if TYPE_CHECKING:
    from fleetbatch.runtime import Runtime

TIMEOUT_S = 10
EXPECTED_TABLES = {
    "meta",
    "projects",
    "apps",
    "access_keys",
    "products",
    "devices",
    "device_groups",
    "tasks",
    "subtasks",
}


async def _connect(url: str) -> asyncpg.Connection:
    async with asyncio.timeout(TIMEOUT_S):
        return await asyncpg.connect(url)


async def test_postgres_answers_version_through_asyncpg(postgres_server: PostgresServer) -> None:
    conn = await _connect(postgres_server.url())
    try:
        version = await conn.fetchval("SELECT version()")
        fsync = await conn.fetchval("SHOW fsync")
    finally:
        await conn.close()
    assert version.startswith("PostgreSQL ")
    assert fsync == "off"


async def test_fresh_databases_are_independent(postgres_server: PostgresServer) -> None:
    first_url = postgres_server.create_database()
    second_url = postgres_server.create_database()
    assert first_url != second_url
    first, second = await _connect(first_url), await _connect(second_url)
    try:
        await first.execute("CREATE TABLE probe (id integer PRIMARY KEY)")
        await first.execute("INSERT INTO probe VALUES (1)")
        assert await first.fetchval("SELECT count(*) FROM probe") == 1
        assert await second.fetchval("SELECT to_regclass('probe')") is None
    finally:
        await first.close()
        await second.close()
        for url in (first_url, second_url):
            postgres_server.drop_database(url.rsplit("/", 1)[1])


def test_dropped_database_is_gone(postgres_server: PostgresServer) -> None:
    name = postgres_server.create_database().rsplit("/", 1)[1]
    postgres_server.drop_database(name)
    assert postgres_server.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "0"


async def test_settings_open_a_migrated_store(settings: Settings, database_kind: str) -> None:
    store = await Store.open(settings)
    try:
        async with store.read() as conn:
            tables = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
            if database_kind == "postgresql":
                version = (await conn.exec_driver_sql("SELECT version()")).scalar_one()
                assert version.startswith("PostgreSQL ")
    finally:
        await store.close()
    assert store.dialect == database_kind
    assert tables >= EXPECTED_TABLES


def test_settings_name_the_database(settings: Settings, database_kind: str) -> None:
    if database_kind == "sqlite":
        assert settings.database is None
        assert settings.database_url.startswith("sqlite+aiosqlite:///")
    else:
        assert settings.database is not None
        assert settings.database.startswith("postgresql://fleetbatch@127.0.0.1:")
        assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.data_dir.name == "data"


async def test_runtime_fixture_is_open(runtime: Runtime, database_kind: str) -> None:
    from fleetbatch.runtime import KEY_CHECK_META

    assert runtime.store.dialect == database_kind
    async with runtime.store.read() as conn:
        assert await runtime.store.get_meta(conn, KEY_CHECK_META) == runtime.vault.key_check


async def test_mosquitto_accepts_tcp(mosquitto_broker: MosquittoBroker) -> None:
    assert mosquitto_broker.url == f"mqtt://127.0.0.1:{mosquitto_broker.port}"
    async with asyncio.timeout(TIMEOUT_S):
        _, writer = await asyncio.open_connection(mosquitto_broker.host, mosquitto_broker.port)
    writer.close()
    await writer.wait_closed()


def _mqtt_connect_packet(client_id: str) -> bytes:
    """A minimal MQTT 3.1.1 CONNECT: clean session, 60 s keep-alive, no credentials."""
    encoded_id = client_id.encode()
    variable_header = b"\x00\x04MQTT" + bytes([0x04, 0x02]) + (60).to_bytes(2, "big")
    payload = len(encoded_id).to_bytes(2, "big") + encoded_id
    remaining = variable_header + payload
    assert len(remaining) < 128  # one-byte remaining length keeps the encoding trivial
    return bytes([0x10, len(remaining)]) + remaining


async def test_mosquitto_answers_mqtt_connect(mosquitto_broker: MosquittoBroker) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection(mosquitto_broker.host, mosquitto_broker.port)
        try:
            writer.write(_mqtt_connect_packet("fleetbatch-infra-test"))
            await writer.drain()
            connack = await reader.readexactly(4)
            writer.write(b"\xe0\x00")  # DISCONNECT
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()
    # CONNACK, remaining length 2, no session present, return code 0 (accepted)
    assert connack == b"\x20\x02\x00\x00"


def test_missing_postgres_binaries_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(postgres.shutil, "which", lambda _name: None)
    monkeypatch.setattr(postgres, "_DEBIAN_ROOT", tmp_path)
    with pytest.raises(PostgresUnavailable, match="apt-get install -y postgresql"):
        find_bindir()


def test_missing_mosquitto_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("support.mosquitto._SEARCH_PATH", str(tmp_path))
    with pytest.raises(MosquittoUnavailable, match="apt-get install -y mosquitto"):
        find_mosquitto()


async def test_wait_until_returns_the_first_truthy_value() -> None:
    calls: list[int] = []

    def grows() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert await wait_until(grows, timeout_s=TIMEOUT_S, interval_s=0) == 3


async def test_wait_until_awaits_async_predicates() -> None:
    ready = asyncio.Event()

    async def check() -> bool:
        ready.set()
        return ready.is_set()

    assert await wait_until(check, timeout_s=TIMEOUT_S) is True


async def test_wait_until_fails_with_the_message_on_deadline() -> None:
    with pytest.raises(AssertionError, match=r"never true \(not met within 0.05 s\)"):
        await wait_until(lambda: False, timeout_s=0.05, message="never true")


def test_wait_until_sync_builds_the_message_at_the_deadline() -> None:
    state = {"seen": 0}

    def never() -> bool:
        state["seen"] += 1
        return False

    with pytest.raises(AssertionError, match=r"tried [1-9]\d* times"):
        wait_until_sync(never, timeout_s=0.05, message=lambda: f"tried {state['seen']} times")
