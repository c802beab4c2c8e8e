"""Legacy northbound tokens (by hash) and the per-app call counters that throttle them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.store.schema import api_calls, legacy_tokens

t = legacy_tokens.c
ACCESS = "access"
REFRESH = "refresh"


async def insert_token(
    conn: AsyncConnection,
    token_hash: str,
    kind: str,
    app_id: str,
    expires_at: int,
    now_ms: int,
    *,
    pair_hash: str | None = None,
) -> None:
    """Store one token's hash."""
    await conn.execute(
        legacy_tokens.insert().values(
            token_hash=token_hash,
            kind=kind,
            app_id=app_id,
            pair_hash=pair_hash,
            expires_at=expires_at,
            created_at=now_ms,
        )
    )


async def live_token_app(
    conn: AsyncConnection, token_hash: str, kind: str, now_ms: int
) -> tuple[str, str | None] | None:
    """(app id, pair hash) of an unexpired token of `kind`; None for any other."""
    row = (
        await conn.execute(
            select(t.app_id, t.pair_hash).where(
                t.token_hash == token_hash, t.kind == kind, t.expires_at > now_ms
            )
        )
    ).first()
    return None if row is None else (row.app_id, row.pair_hash)


async def delete_token(conn: AsyncConnection, token_hash: str) -> bool:
    """Remove one token; whether it existed."""
    result = await conn.execute(delete(legacy_tokens).where(t.token_hash == token_hash))
    return bool(result.rowcount)


async def delete_access_with_refresh(conn: AsyncConnection, access_hash: str) -> bool:
    """Remove an access token and the refresh token issued with it; whether it existed."""
    result = await conn.execute(
        delete(legacy_tokens).where(
            or_(
                t.token_hash == access_hash,
                (t.pair_hash == access_hash) & (t.kind == REFRESH),
            )
        )
    )
    return bool(result.rowcount)


async def delete_expired(conn: AsyncConnection, now_ms: int, limit: int = 1000) -> None:
    """Drop up to `limit` expired tokens (called now and then, at login)."""
    expired = select(t.token_hash).where(t.expires_at <= now_ms).limit(limit)
    await conn.execute(delete(legacy_tokens).where(t.token_hash.in_(expired)))


async def count_call(conn: AsyncConnection, app_id: str, window_start: int) -> int:
    """Count one call of the app in the window; the calls counted in it so far, this one too.

    One upsert, so concurrent processes never lose a count; the first call of a new window
    drops the app's older windows.
    """
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement: Any = insert(api_calls).values(app_id=app_id, window_start=window_start, calls=1)
    statement = statement.on_conflict_do_update(
        index_elements=[api_calls.c.app_id, api_calls.c.window_start],
        set_={"calls": api_calls.c.calls + 1},
    ).returning(api_calls.c.calls)
    calls = int((await conn.execute(statement)).scalar_one())
    if calls == 1:
        await conn.execute(
            delete(api_calls).where(
                api_calls.c.app_id == app_id, api_calls.c.window_start < window_start
            )
        )
    return calls
