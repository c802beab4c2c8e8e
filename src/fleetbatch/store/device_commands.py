"""Reads of single-device commands: one-subtask tasks of the device-command source."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import ColumnElement, Row, String, and_, cast, exists, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.registry import Page
from fleetbatch.domain.states import TERMINAL_SUBTASK_STATUSES, SubtaskStatus
from fleetbatch.domain.tasks import Subtask, Task
from fleetbatch.store.paging import PageRequest, fetch_page
from fleetbatch.store.schema import command_cancel_tasks, subtasks, tasks
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


async def device_commands_page(
    conn: AsyncConnection,
    *,
    app_id: str,
    source: str,
    device_id: str,
    page: PageRequest,
    finished: bool,
    status: str | None = None,
    command_name: str | None = None,
    created_from_ms: int | None = None,
    created_to_ms: int | None = None,
) -> Page[tuple[Task, Subtask]]:
    """One marker page of a device's commands, newest first: the unfinished ones (its queue)
    or the finished ones (its history), by their subtask's status.

    `status` is a command status word: CANCELED is a stopped subtask, any other word the
    phase of one that was not stopped (no phase yet reads PENDING).
    """
    final = [s.value for s in TERMINAL_SUBTASK_STATUSES]
    where: list[ColumnElement[bool]] = [
        tasks.c.app_id == app_id,
        tasks.c.source == source,
        subtasks.c.target == device_id,
        subtasks.c.status.in_(final) if finished else subtasks.c.status.not_in(final),
    ]
    if status is not None:
        where.append(command_status_is(status))
    if command_name is not None:
        where.append(document_text(conn, "command_name") == command_name)
    if created_from_ms is not None:
        where.append(tasks.c.created_at >= created_from_ms)
    if created_to_ms is not None:
        where.append(tasks.c.created_at <= created_to_ms)
    query = select(tasks).select_from(tasks.join(subtasks, subtasks.c.task_pk == tasks.c.pk))
    rows, count, marker = await fetch_page(conn, query, tasks.c.pk, where, page)
    return Page(await with_subtasks(conn, rows), count, marker)


def command_status_is(status: str) -> ColumnElement[bool]:
    """The subtask condition of one command status word."""
    stopped = SubtaskStatus.STOPPED.value
    if status == "CANCELED":
        return subtasks.c.status == stopped
    phase = func.coalesce(subtasks.c.phase, "PENDING")
    return and_(subtasks.c.status != stopped, phase == status)


def document_text(conn: AsyncConnection, key: str) -> ColumnElement[str]:
    """A top-level text field of the task's JSON document, on either database."""
    if conn.dialect.name == "postgresql":
        field: ColumnElement[str] = cast(tasks.c.document, postgresql.JSON)[key].astext
        return field
    return func.json_extract(tasks.c.document, f"$.{key}", type_=String)


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


async def insert_cancel_task(
    conn: AsyncConnection,
    *,
    task_id: str,
    app_id: str,
    device_id: str,
    status: str,
    command_ids: list[str],
    now_ms: int,
) -> None:
    """Keep a cancel task (it was carried out already)."""
    await conn.execute(
        command_cancel_tasks.insert().values(
            task_id=task_id,
            app_id=app_id,
            device_id=device_id,
            status=status,
            command_ids=orjson.dumps(command_ids).decode(),
            created_at=now_ms,
        )
    )


async def page_cancel_tasks(
    conn: AsyncConnection,
    *,
    app_id: str,
    page_no: int,
    page_size: int,
    task_id: str | None = None,
    device_id: str | None = None,
    status: str | None = None,
    created_from_ms: int | None = None,
    created_to_ms: int | None = None,
) -> tuple[int, list[Row[Any]]]:
    """(total, one page) of an app's cancel tasks, newest first."""
    c = command_cancel_tasks.c
    where: list[Any] = [c.app_id == app_id]
    for column, value in ((c.task_id, task_id), (c.device_id, device_id), (c.status, status)):
        if value is not None:
            where.append(column == value)
    if created_from_ms is not None:
        where.append(c.created_at >= created_from_ms)
    if created_to_ms is not None:
        where.append(c.created_at <= created_to_ms)
    total = int((await conn.execute(select(func.count()).where(*where))).scalar_one())
    rows = (
        await conn.execute(
            select(command_cancel_tasks)
            .where(*where)
            .order_by(c.created_at.desc(), c.task_id.desc())
            .offset(page_no * page_size)
            .limit(page_size)
        )
    ).all()
    return total, list(rows)
