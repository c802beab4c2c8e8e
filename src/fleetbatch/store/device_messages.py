"""Reads of single-device messages: one-subtask tasks of the device-message source."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.tasks import Subtask, Task
from fleetbatch.store.device_commands import with_subtasks
from fleetbatch.store.schema import tasks


async def message_rows(
    conn: AsyncConnection, *, app_id: str, source: str, message_id: str
) -> list[tuple[Task, Subtask]]:
    """The app's messages with this id (the task's name), with their subtask."""
    rows = (
        await conn.execute(
            select(tasks).where(
                tasks.c.app_id == app_id, tasks.c.source == source, tasks.c.name == message_id
            )
        )
    ).all()
    return await with_subtasks(conn, rows)
