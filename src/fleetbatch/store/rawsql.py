"""The engine's hot statements on the driver connection, without SQLAlchemy's machinery.

A claim and an applied batch are the engine's two units of work per few hundred subtasks.
Through SQLAlchemy each statement costs more than the work it asks of the database
(measured): on SQLite, aiosqlite runs every driver call on its own thread and SQLAlchemy's
adapter makes three to four such calls per statement (about 230 µs of CPU each); on
PostgreSQL, parameter processing and result wrapping come to a similar share. `RawWrite`
runs each statement as one driver call on the pooled connection, inside a transaction the
store opens (`Store.raw_write`).

Statements are the same `text()` objects the rest of the code runs through SQLAlchemy;
their `:name` parameters are sqlite3's own named style, and are rewritten once per
statement to asyncpg's `$n`. Driver errors are raised as SQLAlchemy's, which every caller
of the store already handles.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import TextClause
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


class RawWrite:
    """A write transaction on a pooled driver connection (see `Store.raw_write`)."""

    def __init__(self, dialect: str, driver: Any) -> None:
        self.dialect = dialect
        self._driver = driver  # aiosqlite.Connection or asyncpg.Connection

    async def rows(self, statement: TextClause, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Run one statement; its rows (empty without RETURNING)."""
        return await self.run(statement.text, params)

    async def run(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
        """Run SQL text with `:name` parameters."""
        try:
            if self.dialect == "sqlite":
                return list(await self._driver.execute_fetchall(sql, dict(params or {})))
            if not params:
                # transaction control: the simple query protocol, no statement prepared
                await self._driver.execute(sql)
                return []
            positional, names = _positional(sql)
            values = [(params or {})[name] for name in names]
            return list(await self._driver.fetch(positional, *values))
        except (sqlite3.Error, OSError) as exc:
            raise DBAPIError(sql, params, exc) from exc
        except Exception as exc:
            # asyncpg's errors have no common base with the DB-API's
            if type(exc).__module__.startswith("asyncpg"):
                raise DBAPIError(sql, params, exc) from exc
            raise


@functools.cache
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` parameters as asyncpg's `$1`, `$2`...; the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


async def fetch_rows(
    conn: AsyncConnection | RawWrite, statement: TextClause, params: Mapping[str, Any]
) -> list[Sequence[Any]]:
    """The rows of one statement, through whichever connection the unit of work holds."""
    if isinstance(conn, RawWrite):
        return await conn.rows(statement, params)
    return list((await conn.execute(statement, dict(params))).all())


def dialect_of(conn: AsyncConnection | RawWrite) -> str:
    """`sqlite` or `postgresql`."""
    return conn.dialect if isinstance(conn, RawWrite) else conn.dialect.name
