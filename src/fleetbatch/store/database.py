"""The store: one async SQLAlchemy engine over SQLite (embedded) or PostgreSQL (scale-out).

Services choose the transaction: `async with store.write() as conn:` around one unit of
work that changes rows, `store.read()` around reads. Repositories take `conn` and never
commit. On SQLite a write transaction starts with BEGIN IMMEDIATE, taking the single
writer lock up front, so a transaction that reads then writes is atomic and waits (up to
the busy timeout) instead of failing with "database is locked" half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from fleetbatch.domain.errors import Unavailable
from fleetbatch.settings import Settings
from fleetbatch.store import migrations_runner
from fleetbatch.store.rawsql import RawWrite
from fleetbatch.store.schema import meta

_WRITE_OPTION = "fleetbatch_write"
# a pooled PostgreSQL connection idle longer than this is pinged before it is handed out
PING_AFTER_IDLE_S = 5.0


class Store:
    """The database behind every service, with read and write transaction scopes."""

    def __init__(self, engine: AsyncEngine, *, timeout_s: float) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self._timeout_s = timeout_s
        # SQLite has one writer: this process's writers queue here, in order, instead of
        # in SQLite's busy handler, which sleeps (up to 100 ms a try) between attempts
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool = True) -> Store:
        """Connect, and bring the schema to the newest migration unless told not to."""
        url = settings.database_url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            if settings.database is not None:
                Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": settings.sqlite_busy_timeout_s}
        else:
            kwargs["pool_size"] = settings.db_pool_size
            kwargs["max_overflow"] = settings.db_pool_size
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine, settings.sqlite_busy_timeout_s)
        else:
            _ping_when_idle(engine)
        store = cls(engine, timeout_s=settings.db_timeout_s)
        try:
            if engine.dialect.name == "sqlite":
                await store._use_wal()
            await store.ping()
            if migrate:
                await store.migrate()
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def ping(self) -> None:
        """Raise `Unavailable` unless the database answers a trivial query."""
        try:
            async with asyncio.timeout(self._timeout_s), self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
        except (OSError, DBAPIError, TimeoutError) as exc:
            raise Unavailable(f"the database does not answer: {exc}") from exc

    async def migrate(self) -> None:
        """Apply pending Alembic migrations; safe when several processes start at once."""
        lock = self._migration_lock_path()
        async with _file_lock(lock), self.write() as conn:
            if self.dialect == "postgresql":
                # one migrator at a time across processes and machines
                await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7224413)")
            await conn.run_sync(migrations_runner.upgrade_to_head)

    async def _use_wal(self) -> None:
        """Put the SQLite file in WAL mode (it stays so), under the migration lock.

        Changing the journal mode needs the file to itself, and SQLite answers "database is
        locked" at once, busy timeout or not, when another process opens it at that moment:
        several processes starting together on a new data dir take turns instead.
        """
        async with _file_lock(self._migration_lock_path()), self.engine.connect() as conn:
            # on the driver's connection: no transaction may be open for this pragma
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None  # an open pooled connection has one
            await driver.execute("PRAGMA journal_mode=WAL")

    def _migration_lock_path(self) -> Path | None:
        database = self.engine.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database + ".migrate.lock")

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read transaction."""
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block ends without an exception.

        Not re-entrant: a write scope never opens another one.
        """
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.engine.connect() as conn:
            await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    @contextlib.asynccontextmanager
    async def raw_write(self) -> AsyncIterator[RawWrite]:
        """A write transaction for the engine's hot statements (`store.rawsql`).

        The statements go straight to the pooled driver connection, one driver call each,
        under the same rules as `write()`: `BEGIN IMMEDIATE` and the in-process writer lock
        on SQLite. A connection whose statement failed is dropped from the pool.
        """
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            assert driver is not None  # an open pooled connection has one
            tx = RawWrite(self.dialect, driver)
            await tx.run("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            try:
                yield tx
            except BaseException:
                try:
                    # were this cut short too, the pool's rollback at check-in still ends it
                    await tx.run("ROLLBACK")
                except DBAPIError:
                    await conn.invalidate()
                raise
            await tx.run("COMMIT")

    @contextlib.asynccontextmanager
    async def raw_autocommit(self) -> AsyncIterator[RawWrite]:
        """The pooled driver connection with no transaction around it (PostgreSQL only).

        Each statement commits on its own, so one statement that changes rows and their
        counters together (`store.counted`) is a unit of work in one round trip. A
        connection whose statement failed is dropped from the pool.
        """
        if self.dialect != "postgresql":
            raise RuntimeError("statements in autocommit are for PostgreSQL")
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            assert driver is not None  # an open pooled connection has one
            try:
                yield RawWrite(self.dialect, driver)
            except DBAPIError:
                await conn.invalidate()
                raise

    async def get_meta(self, conn: AsyncConnection, key: str) -> str | None:
        """A value from the store's own key/value table."""
        return (await conn.execute(select(meta.c.value).where(meta.c.key == key))).scalar()

    async def set_meta(self, conn: AsyncConnection, key: str, value: str) -> None:
        """Insert or replace a value in the store's own key/value table."""
        await conn.execute(meta.delete().where(meta.c.key == key))
        await conn.execute(meta.insert().values(key=key, value=value))

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine, busy_timeout_s: float) -> None:
    busy_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # let SQLAlchemy's begin event, not the driver, decide how transactions start
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # the journal mode is the file's, set once by `Store.open` (`_use_wal`)
        for pragma in (
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={busy_ms}",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use only when it sat idle for a while.

    SQLAlchemy's `pool_pre_ping` pings on every checkout, three round trips with asyncpg
    (BEGIN, a query, ROLLBACK): 15% of the engine's time on PostgreSQL (measured). A
    connection in steady use needs no ping: if the server went away under it, the
    statement fails, the pool drops it, and the caller's retry gets a fresh one.
    """

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        now = time.monotonic()
        idle_s = now - record.info.get("used_at", now)
        record.info["used_at"] = now
        if idle_s > PING_AFTER_IDLE_S:
            try:
                dbapi_connection.ping()
            except Exception as exc:
                # the pool replaces the connection and tries again
                raise DisconnectionError(str(exc)) from exc


@contextlib.asynccontextmanager
async def _file_lock(path: Path | None) -> AsyncIterator[None]:
    """An exclusive advisory lock on `path` (a no-op for None), taken off the event loop."""
    if path is None:
        yield
        return
    handle = path.open("a")
    try:
        # flock blocks until the other migrator is done: keep that wait off the loop
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()
