"""The engine's hot statements on SQLite without SQLAlchemy's per-statement machinery.

aiosqlite runs each driver call on its own thread, and SQLAlchemy's adapter makes three to
four such calls per statement (cursor, execute, fetch, close), about 230 µs of CPU each
statement on this machine (measured): more than the claim or the applied batch itself. A
`RawWrite` runs each statement as one call on the pooled driver connection, inside a
`BEGIN IMMEDIATE` transaction the store opens under its usual in-process writer lock.

Statements are the same `text()` objects the PostgreSQL path runs through SQLAlchemy
(`:name` parameters are sqlite3's own named style), so each exists once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import TextClause
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection


class RawWrite:
    """A SQLite write transaction on the driver connection (see `Store.raw_write`)."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver  # aiosqlite.Connection

    async def rows(self, statement: TextClause, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Run one statement; its rows (empty without RETURNING)."""
        return await self.run(statement.text, params)

    async def run(self, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
        """Run SQL text; driver errors come as SQLAlchemy's, which every caller handles."""
        try:
            return list(await self._driver.execute_fetchall(sql, dict(params or {})))
        except sqlite3.Error as exc:
            raise DBAPIError(sql, params, exc) from exc


async def fetch_rows(
    conn: AsyncConnection | RawWrite, statement: TextClause, params: Mapping[str, Any]
) -> list[Sequence[Any]]:
    """The rows of one statement, through whichever connection the unit of work holds."""
    if isinstance(conn, RawWrite):
        return await conn.rows(statement, params)
    return list((await conn.execute(statement, dict(params))).all())
