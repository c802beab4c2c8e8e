"""Helpers for tests that drive the batch engine's units of work by hand.

- `FakeClock`: the one double for time; tests move it, nothing sleeps.
- `snapshot`: a task's row and every subtask row read in one transaction, with the
  counters-equal-rows invariant checked on the way.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import Progress
from fleetbatch.store import subtasks as subtask_rows
from fleetbatch.store import tasks as task_rows
from fleetbatch.store.database import Store
from fleetbatch.store.schema import subtasks, task_tags, tasks

# 2023-11-14T22:13:20Z: any fixed instant works, tests only move forward from it
START_MS = 1_700_000_000_000


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now_ms: int = START_MS) -> None:
        self.ms = now_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, ms: int) -> int:
        """Move forward `ms` milliseconds; the new time."""
        self.ms += ms
        return self.ms


@dataclass(frozen=True, slots=True)
class SubtaskState:
    """What the invariants compare of one subtask row."""

    id: int
    target: str
    status: SubtaskStatus
    attempt: int
    failures: int
    device_pk: int | None
    error_code: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A task's status and counters and its subtasks by target, as one transaction saw them."""

    status: TaskStatus
    progress: Progress
    subtasks: dict[str, SubtaskState]

    def by_status(self, status: SubtaskStatus) -> set[str]:
        return {t for t, s in self.subtasks.items() if s.status is status}


async def snapshot(store: Store, task_pk: int) -> Snapshot:
    """Read a task and its subtasks; fails the test unless its counters equal the rows."""
    async with store.read() as conn:
        row = await task_rows.get_task_row(conn, pk=task_pk)
        counted = await subtask_rows.count_by_status(conn, task_pk)
        rows = (await conn.execute(select(subtasks).where(subtasks.c.task_pk == task_pk))).all()
    assert row is not None, f"task {task_pk} is gone"
    progress = task_rows.progress_from_row(row)
    assert {s.value: progress.count(s) for s in SubtaskStatus} == {
        s.value: counted.get(s.value, 0) for s in SubtaskStatus
    }, "the task's counters differ from its rows"
    assert progress.total == len(rows), "n_total differs from the number of rows"
    states = {}
    for r in rows:
        s = subtask_rows.subtask_from_row(r)
        states[s.target] = SubtaskState(
            s.id, s.target, s.status, s.attempt, s.failures, s.device_pk, s.error_code
        )
    return Snapshot(TaskStatus(row.status), progress, states)


async def count_rows(store: Store) -> dict[str, int]:
    """Rows in the task tables (to check that a refused request wrote nothing)."""
    async with store.read() as conn:
        return {
            table.name: int(
                (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            )
            for table in (tasks, subtasks, task_tags)
        }
