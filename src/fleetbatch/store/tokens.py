"""Legacy northbound tokens (by hash) and the per-app call counts (one-second slots) that
throttle them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain import legacy as L
from fleetbatch.store.schema import api_calls, legacy_tokens

t = legacy_tokens.c
c = api_calls.c
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


# advisory-lock key space of the call limit (two int4 keys: apart from the migration lock's
# single bigint key); the second key is the app id's hash
CALL_LIMIT_LOCK_SPACE = 7224414


async def admit_call(conn: AsyncConnection, app_id: str, now_ms: int, limit: int) -> bool:
    """Count one call of the app unless `limit` calls already count in its sliding window.

    Whether the call was admitted; a refused call is not counted, so a client that keeps
    calling is let in again as its older calls leave the window (`domain.legacy`). Counting
    reads then writes, so one app's admissions are serialised: on PostgreSQL by an advisory
    lock held to the end of the transaction, on SQLite by the write scope's writer lock.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(
            select(func.pg_advisory_xact_lock(CALL_LIMIT_LOCK_SPACE, func.hashtext(app_id)))
        )
    oldest = L.first_counted_slot(now_ms)
    counted = select(func.coalesce(func.sum(c.calls), 0)).where(
        c.app_id == app_id, c.window_start >= oldest
    )
    if int((await conn.execute(counted)).scalar_one()) >= limit:
        return False
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement: Any = insert(api_calls).values(
        app_id=app_id, window_start=L.call_slot(now_ms), calls=1
    )
    statement = statement.on_conflict_do_update(
        index_elements=[c.app_id, c.window_start], set_={"calls": c.calls + 1}
    ).returning(c.calls)
    if int((await conn.execute(statement)).scalar_one()) == 1:
        # a new slot: the app's slots that no longer count go (at most once a second)
        await conn.execute(delete(api_calls).where(c.app_id == app_id, c.window_start < oldest))
    return True
