"""Expansion of a task's selector into subtasks: INSERT..SELECT in chunks that resume.

Each chunk is one transaction that first moves the task's expansion cursor (a guarded
UPDATE: a second worker expanding the same task loses that race and rolls back), then
inserts the next chunk of selected devices, ordered by device pk, and counts them. A crash
between chunks resumes at the cursor; the whole fleet is never read into Python.
"""

from __future__ import annotations

from collections import Counter

from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import Task, TaskType
from fleetbatch.store import subtasks as subtask_rows
from fleetbatch.store import tasks as task_rows
from fleetbatch.store.database import Store

DONE = "done"


class _LostRace(Exception):
    """Another worker moved the cursor (or the task was stopped): roll this chunk back."""


async def expand_step(store: Store, task: Task, *, chunk: int, now_ms: int) -> bool:
    """Expand the next chunk; True when the task is fully expanded (or no longer expanding)."""
    assert task.selector is not None
    phase = "PENDING" if task.task_type is TaskType.CREATE_ASYNC_COMMANDS else None
    try:
        async with store.write() as conn:
            row = await task_rows.get_task_row(conn, pk=task.pk)
            if row is None or row.status != TaskStatus.INITIALIZING.value:
                return True
            cursor = row.expand_cursor
            # take the task row before inserting: on PostgreSQL a second expander that read
            # the same cursor waits here and then finds it moved, instead of inserting the
            # same devices and failing on the (task, target) unique index
            if not await task_rows.advance_cursor(conn, task.pk, cursor, cursor):
                raise _LostRace
            after_pk = int(cursor) if cursor else 0
            condition = subtask_rows.selector_condition(task.selector, task.app_id)
            inserted, upper = await subtask_rows.expand_chunk(
                conn, task.pk, condition, after_pk, chunk, now_ms, phase=phase
            )
            done = upper is None
            new_cursor = DONE if done else str(upper)
            if done:
                later = task.scheduled_at is not None and task.scheduled_at > now_ms
                status = TaskStatus.WAITING if later else TaskStatus.PROCESSING
                extra = {"status": status.value}
                if status is TaskStatus.PROCESSING:
                    timeout_s = task.policy.timeout_s
                    extra["started_at"] = now_ms  # type: ignore[assignment]
                    if timeout_s:
                        extra["deadline_at"] = now_ms + timeout_s * 1000  # type: ignore[assignment]
            else:
                extra = {}
            if not await task_rows.advance_cursor(conn, task.pk, cursor, new_cursor, **extra):
                raise _LostRace
            if inserted:
                await task_rows.add_counts(
                    conn, task.pk, Counter({SubtaskStatus.WAITING: inserted}), total=inserted
                )
            return done
    except _LostRace:
        return True
