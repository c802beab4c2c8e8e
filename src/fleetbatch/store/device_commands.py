"""Reads of single-device commands: one-subtask tasks of the device-command source."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, exists, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.tasks import Subtask, Task
from fleetbatch.store.schema import subtasks, tasks
from fleetbatch.store.subtasks import subtask_from_row
from fleetbatch.store.tasks import task_from_row


async def page_commands(
    conn: AsyncConnection,
    *,
    app_id: str,
    source: str,
    page_no: int,
    page_size: int,
    device_id: str | None = None,
    created_from_ms: int | None = None,
    created_to_ms: int | None = None,
    statuses: tuple[str, ...] | None = None,
) -> tuple[int, list[tuple[Task, Subtask]]]:
    """(total, one page) of an app's commands, newest first, with their subtask."""
    where: list[Any] = [tasks.c.app_id == app_id, tasks.c.source == source]
    if device_id is not None:
        where.append(
            exists().where(subtasks.c.task_pk == tasks.c.pk, subtasks.c.target == device_id)
        )
    if created_from_ms is not None:
        where.append(tasks.c.created_at >= created_from_ms)
    if created_to_ms is not None:
        where.append(tasks.c.created_at <= created_to_ms)
    if statuses is not None:
        where.append(tasks.c.status.in_(statuses))
    total = int((await conn.execute(select(func.count()).where(*where))).scalar_one())
    rows = (
        await conn.execute(
            select(tasks)
            .where(*where)
            .order_by(tasks.c.pk.desc())
            .offset(page_no * page_size)
            .limit(page_size)
        )
    ).all()
    return total, await with_subtasks(conn, rows)


async def with_subtasks(conn: AsyncConnection, rows: Any) -> list[tuple[Task, Subtask]]:
    """Each task row with its (only) subtask; a task without one is left out."""
    by_pk: dict[int, Row[Any]] = {row.pk: row for row in rows}
    if not by_pk:
        return []
    found = (await conn.execute(select(subtasks).where(subtasks.c.task_pk.in_(list(by_pk))))).all()
    subtask_of = {row.task_pk: subtask_from_row(row) for row in found}
    return [(task_from_row(row), subtask_of[pk]) for pk, row in by_pk.items() if pk in subtask_of]


async def command_rows(
    conn: AsyncConnection, *, source: str, task_ids: list[str]
) -> list[tuple[Task, Subtask]]:
    """The commands with these ids (of the source), with their subtask."""
    rows = (
        await conn.execute(
            select(tasks).where(tasks.c.task_id.in_(task_ids), tasks.c.source == source)
        )
    ).all()
    return await with_subtasks(conn, rows)
