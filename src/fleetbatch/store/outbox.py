"""The callback outbox: rows written with the change they report, claimed and delivered.

`enqueue_command_changes` runs inside the engine's own transactions (claim, applied
outcomes, delivery phases), so a change and its notification commit together; the
delivery loop (`engine/outbox.py`) claims due rows with a lease and marks them delivered
or due again, each a guarded UPDATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.ids import format_record_id
from fleetbatch.domain.outbox import NOTIFIED_PHASES, command_status_body, result_detail
from fleetbatch.domain.tasks import DEVICE_COMMAND_SOURCE
from fleetbatch.store.schema import outbox, subtasks, tasks

o = outbox.c


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One notification to deliver."""

    id: int
    url: str
    body: str
    attempts: int


async def enqueue_command_changes(
    conn: AsyncConnection, subtask_ids: Sequence[int], now_ms: int
) -> int:
    """Queue the command-status notification of each subtask changed in this transaction.

    Only subtasks whose task has a callback URL, whose phase is notified and that were
    changed at `now_ms` (this transaction's time) count; the rows queued.
    """
    if not subtask_ids:
        return 0
    s, t = subtasks.c, tasks.c
    rows = (
        await conn.execute(
            select(s.id, s.target, s.phase, s.output, t.task_id, t.source, t.callback_url)
            .select_from(subtasks.join(tasks, tasks.c.pk == s.task_pk))
            .where(
                s.id.in_(list(subtask_ids)),
                s.updated_at == now_ms,
                s.phase.in_(NOTIFIED_PHASES),
                t.callback_url.is_not(None),
            )
        )
    ).all()
    if not rows:
        return 0
    values = []
    for row in rows:
        # a single-device command is known by its task id, a batch subtask by its record id
        command_id = (
            row.task_id if row.source == DEVICE_COMMAND_SOURCE else format_record_id(row.id)
        )
        detail = result_detail(orjson.loads(row.output)) if row.output else None
        body = command_status_body(row.target, command_id, row.phase, detail)
        values.append(
            {
                "url": row.callback_url,
                "body": orjson.dumps(body).decode(),
                "attempts": 0,
                "due_at": now_ms,
                "created_at": now_ms,
            }
        )
    await conn.execute(outbox.insert(), values)
    return len(values)


def _due(now_ms: int) -> Any:
    free = or_(o.lease_until.is_(None), o.lease_until < now_ms)
    return (o.delivered_at.is_(None), o.due_at <= now_ms, free)


async def any_due(conn: AsyncConnection, now_ms: int) -> bool:
    """Whether a row waits for delivery now (a read, so an idle poll takes no write lock)."""
    return (await conn.execute(select(o.id).where(*_due(now_ms)).limit(1))).first() is not None


async def claim_due(
    conn: AsyncConnection, worker_id: str, now_ms: int, lease_until: int, limit: int
) -> list[OutboxRow]:
    """Lease up to `limit` undelivered rows that are due (or whose lease ran out)."""
    due = _due(now_ms)
    candidates = select(o.id).where(*due)
    candidates = candidates.order_by(o.due_at, o.id).limit(limit)
    if conn.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list((await conn.execute(candidates)).scalars())
    if not ids:
        return []
    claimed = await conn.execute(
        update(outbox)
        .where(o.id.in_(ids), *due)
        .values(claimed_by=worker_id, lease_until=lease_until)
        .returning(o.id, o.url, o.body, o.attempts)
    )
    return [OutboxRow(r.id, r.url, r.body, r.attempts) for r in claimed.all()]


async def renew(conn: AsyncConnection, row_id: int, worker_id: str, lease_until: int) -> bool:
    """Extend this worker's lease of a row right before sending it; False if it lost it."""
    result = await conn.execute(
        update(outbox)
        .where(o.id == row_id, o.claimed_by == worker_id, o.delivered_at.is_(None))
        .values(lease_until=lease_until)
    )
    return bool(result.rowcount)


async def mark_delivered(conn: AsyncConnection, row_id: int, worker_id: str, now_ms: int) -> None:
    """The row reached its URL (a 2xx answer)."""
    await conn.execute(
        update(outbox)
        .where(o.id == row_id, o.claimed_by == worker_id)
        .values(
            delivered_at=now_ms,
            attempts=o.attempts + 1,
            claimed_by=None,
            lease_until=None,
            last_error=None,
        )
    )


async def mark_failed(
    conn: AsyncConnection, row_id: int, worker_id: str, due_at: int, error: str
) -> None:
    """The attempt failed: due again at `due_at`."""
    await conn.execute(
        update(outbox)
        .where(o.id == row_id, o.claimed_by == worker_id)
        .values(
            attempts=o.attempts + 1,
            due_at=due_at,
            claimed_by=None,
            lease_until=None,
            last_error=error[:500],
        )
    )


async def purge_delivered(conn: AsyncConnection, before_ms: int, limit: int = 5000) -> int:
    """Drop up to `limit` rows delivered before `before_ms`; how many."""
    old = select(o.id).where(o.delivered_at < before_ms).limit(limit)
    result = await conn.execute(outbox.delete().where(o.id.in_(old)))
    return max(result.rowcount, 0)


async def counts(conn: AsyncConnection) -> dict[str, Any]:
    """Rows pending and delivered, and the attempts spent (for tests and operators)."""
    row = (
        await conn.execute(
            select(
                func.count().filter(o.delivered_at.is_(None)),
                func.count().filter(o.delivered_at.is_not(None)),
                func.coalesce(func.sum(o.attempts), 0),
            )
        )
    ).one()
    return {"pending": int(row[0]), "delivered": int(row[1]), "attempts": int(row[2])}
