"""Task rows: insert, read, list, guarded status changes and the progress counters."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.registry import Page
from fleetbatch.domain.states import SubtaskStatus, TaskStatus, counter_column
from fleetbatch.domain.tasks import Progress, Selector, Task, TaskPolicy, TaskType
from fleetbatch.store.paging import PageRequest, fetch_page
from fleetbatch.store.rawsql import RawWrite, fetch_rows
from fleetbatch.store.schema import task_tags, tasks

ACTIVE_TASK_STATUSES = (
    TaskStatus.INITIALIZING.value,
    TaskStatus.WAITING.value,
    TaskStatus.PROCESSING.value,
    TaskStatus.STOPPING.value,
)
COUNTER_COLUMNS = {status: counter_column(status) for status in SubtaskStatus}
UNFINISHED_STATUSES = (
    SubtaskStatus.WAITING,
    SubtaskStatus.PROCESSING,
    SubtaskStatus.FAIL_WAIT_RETRY,
)


def _loads(value: Any) -> Any:
    return None if value is None else json.loads(value)


def task_from_row(row: Row[Any], tags: Mapping[str, str] | None = None) -> Task:
    """A Task from a `tasks` row."""
    m = row._mapping
    selector = _loads(m["selector"])
    targets = _loads(m["targets"])
    return Task(
        pk=m["pk"],
        task_id=m["task_id"],
        project_id=m["project_id"],
        app_id=m["app_id"],
        creator_app_id=m["creator_app_id"],
        name=m["name"],
        task_type=TaskType(m["task_type"]),
        status=TaskStatus(m["status"]),
        status_desc=m["status_desc"],
        source=m["source"],
        mode=m["mode"],
        need_confirm=bool(m["need_confirm"]),
        document=json.loads(m["document"]),
        targets=tuple(targets) if targets is not None else None,
        targets_filter=_loads(m["targets_filter"]),
        selector=Selector.from_json(selector) if selector else None,
        policy=TaskPolicy.from_json(json.loads(m["policy"])),
        ext_info=_loads(m["ext_info"]),
        callback_url=m["callback_url"],
        progress=progress_from_row(row),
        created_at=m["created_at"],
        scheduled_at=m["scheduled_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        deadline_at=m["deadline_at"],
        tags=dict(tags or {}),
    )


def progress_from_row(row: Row[Any]) -> Progress:
    """The counters of a `tasks` row."""
    m = row._mapping
    return Progress(
        total=m["n_total"],
        removed=m["n_removed"],
        **{status.value: m[column] for status, column in COUNTER_COLUMNS.items()},
    )


async def insert_task(conn: AsyncConnection, values: Mapping[str, Any]) -> int:
    """Insert a task row; returns its pk."""
    result = await conn.execute(tasks.insert().values(**values).returning(tasks.c.pk))
    return int(result.scalar_one())


async def insert_tags(
    conn: AsyncConnection, task_pk: int, project_id: str, tags: Mapping[str, str]
) -> None:
    """Attach tags to a task (a unique-violation means the pair is taken in the project)."""
    if tags:
        await conn.execute(
            task_tags.insert(),
            [
                {"task_pk": task_pk, "tag_name": k, "tag_value": v, "project_id": project_id}
                for k, v in tags.items()
            ],
        )


async def get_tags(conn: AsyncConnection, task_pk: int) -> dict[str, str]:
    """A task's tags."""
    rows = await conn.execute(
        select(task_tags.c.tag_name, task_tags.c.tag_value).where(task_tags.c.task_pk == task_pk)
    )
    return {name: value for name, value in rows.all()}


async def get_task_row(
    conn: AsyncConnection, *, task_id: str | None = None, pk: int | None = None
) -> Row[Any] | None:
    """The task row by public id or by pk."""
    query = select(tasks)
    query = query.where(tasks.c.task_id == task_id) if task_id is not None else query
    query = query.where(tasks.c.pk == pk) if pk is not None else query
    return (await conn.execute(query)).first()


async def list_task_rows(conn: AsyncConnection, statuses: Sequence[str]) -> Sequence[Row[Any]]:
    """Every task in one of `statuses` (the engine's view of what is running)."""
    query = select(tasks).where(tasks.c.status.in_(statuses)).order_by(tasks.c.pk)
    return (await conn.execute(query)).all()


async def page_tasks(
    conn: AsyncConnection,
    *,
    project_id: str,
    page: PageRequest,
    app_id: str | None = None,
    task_type: str | None = None,
    status: str | None = None,
    exclude_sources: Sequence[str] = (),
) -> Page[Task]:
    """Tasks newest first, marker-paged by pk (none from `exclude_sources`)."""
    where = [tasks.c.project_id == project_id]
    if app_id is not None:
        where.append(tasks.c.app_id == app_id)
    if task_type is not None:
        where.append(tasks.c.task_type == task_type)
    if status is not None:
        where.append(tasks.c.status == status)
    if exclude_sources:
        where.append(tasks.c.source.not_in(list(exclude_sources)))
    rows, count, marker = await fetch_page(conn, select(tasks), tasks.c.pk, where, page)
    return Page(items=[task_from_row(row) for row in rows], count=count, marker=marker)


# One fixed statement for every mix of deltas: it is compiled once, where an expression built
# per call cost more than the UPDATE itself on the engine's claim and apply paths (measured).
_COUNTED = ("n_total", "n_removed", *COUNTER_COLUMNS.values())
_ADD_COUNTS = text(
    "UPDATE tasks SET n_total = n_total + :total, "
    + ", ".join(f"{c} = {c} + :{c}" for c in COUNTER_COLUMNS.values())
    + " WHERE pk = :pk RETURNING status, "
    + ", ".join(_COUNTED)
)


@dataclass(frozen=True, slots=True)
class Counted:
    """A task's status and counters right after its counters changed."""

    status: TaskStatus
    progress: Progress


async def add_counts(
    conn: AsyncConnection | RawWrite,
    task_pk: int,
    deltas: Mapping[SubtaskStatus, int],
    total: int = 0,
) -> Counted:
    """Add to the counters of one task (in the transaction that changed the rows).

    Returns the task's status and counters as they are afterwards. Called last in a
    transaction: the task row is the hot row every writer of the task touches.
    """
    params: dict[str, Any] = {column: 0 for column in COUNTER_COLUMNS.values()}
    for status, delta in deltas.items():
        params[COUNTER_COLUMNS[status]] = delta
    [row] = await fetch_rows(conn, _ADD_COUNTS, {"pk": task_pk, "total": total, **params})
    return counted_from_row(row)


COUNTED_COLUMNS = ("status", *_COUNTED)


def counted_from_row(row: Sequence[Any]) -> Counted:
    """A `Counted` from a row of `COUNTED_COLUMNS`, in that order."""
    counts = dict(zip(_COUNTED, row[1:], strict=True))
    return Counted(
        TaskStatus(row[0]),
        Progress(
            total=counts["n_total"],
            removed=counts["n_removed"],
            **{status.value: counts[column] for status, column in COUNTER_COLUMNS.items()},
        ),
    )


async def set_counts(conn: AsyncConnection, task_pk: int, counts: Mapping[str, int]) -> None:
    """Overwrite the counters from counted rows (after a bulk insert of subtasks)."""
    values: dict[str, Any] = {
        column: counts.get(status.value, 0) for status, column in COUNTER_COLUMNS.items()
    }
    values["n_total"] = sum(counts.values())
    await conn.execute(update(tasks).where(tasks.c.pk == task_pk).values(**values))


async def change_status(
    conn: AsyncConnection,
    task_pk: int,
    allowed: Iterable[TaskStatus],
    new: TaskStatus,
    *,
    settled: bool = False,
    **values: Any,
) -> bool:
    """Move a task to `new` if it is in one of `allowed`; False when it was not.

    `settled`: only while the counters say no subtask is unfinished. Checked in the UPDATE
    itself, so a retry that committed after the caller read the counters wins.
    """
    where = [tasks.c.pk == task_pk, tasks.c.status.in_([s.value for s in allowed])]
    if settled:
        where.extend(tasks.c[COUNTER_COLUMNS[status]] == 0 for status in UNFINISHED_STATUSES)
    result = await conn.execute(update(tasks).where(*where).values(status=new.value, **values))
    return bool(result.rowcount)


async def update_task(conn: AsyncConnection, task_pk: int, **values: Any) -> None:
    """Change columns of a task row without a guard."""
    await conn.execute(update(tasks).where(tasks.c.pk == task_pk).values(**values))


async def advance_cursor(
    conn: AsyncConnection, task_pk: int, old: str | None, new: str | None, **values: Any
) -> bool:
    """Move the expansion cursor from `old` to `new`; False if another worker moved it."""
    cursor = tasks.c.expand_cursor
    guard = cursor.is_(None) if old is None else cursor == old
    result = await conn.execute(
        update(tasks)
        .where(tasks.c.pk == task_pk, tasks.c.status == TaskStatus.INITIALIZING.value, guard)
        .values(expand_cursor=new, **values)
    )
    return bool(result.rowcount)


async def delete_task(conn: AsyncConnection, task_pk: int) -> None:
    """Remove a task row and its tags (its subtasks go first, see `subtasks.delete_all`)."""
    await conn.execute(task_tags.delete().where(task_tags.c.task_pk == task_pk))
    await conn.execute(tasks.delete().where(tasks.c.pk == task_pk))


async def count_unfinished(conn: AsyncConnection, app_id: str, *, source: str | None = None) -> int:
    """Tasks of an app (from one source, if given) that have not reached a final status."""
    query = select(func.count()).where(
        tasks.c.app_id == app_id, tasks.c.status.in_(ACTIVE_TASK_STATUSES)
    )
    if source is not None:
        query = query.where(tasks.c.source == source)
    return int((await conn.execute(query)).scalar_one())


async def name_taken(conn: AsyncConnection, app_id: str, name: str) -> bool:
    """Whether the app already has a task of that name."""
    query = select(tasks.c.pk).where(tasks.c.app_id == app_id, tasks.c.name == name).limit(1)
    return (await conn.execute(query)).first() is not None
