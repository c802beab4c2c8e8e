"""PostgreSQL's units of work as one statement each: the subtasks move, the counters follow.

On PostgreSQL the engine's claims and applied batches wait on round trips more than on
work (measured: the platform 48-61% busy, PostgreSQL about half a core, during a task).
A transaction of its own costs four of them: BEGIN, the subtask UPDATE, the counter
UPDATE, COMMIT. Here the subtask UPDATE is a data-modifying CTE and the counter UPDATE
reads the rows it returned, so one statement in autocommit does both, atomically: the
counters still change in the same transaction as the rows they count.

Locks are taken in the workers' order: the subtask rows first, and the task rows only
after every moved row is known (the counter UPDATE aggregates them). Two batches that
touch the same two tasks could still lock those in opposite orders; PostgreSQL then
aborts one, which the ingestor retries like any failed write, with nothing applied.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.tasks import Progress
from fleetbatch.store.rawsql import RawWrite
from fleetbatch.store.subtasks import (
    APPLY_POSTGRES,
    Claimed,
    Outcome,
    apply_params,
    claim_params,
    claim_statement,
    claimed_from,
)
from fleetbatch.store.tasks import COUNTED_COLUMNS, COUNTER_COLUMNS, counted_from_row

S = SubtaskStatus


async def claim(
    raw: RawWrite,
    task_pk: int,
    from_status: SubtaskStatus,
    limit: int,
    *,
    worker_id: str,
    now_ms: int,
    lease_until: int,
    online_only: bool = False,
    phase: str | None = None,
) -> list[Claimed]:
    """`subtasks.claim` with its counter deltas, as one statement."""
    params = claim_params(task_pk, from_status, limit, worker_id, now_ms, lease_until, phase)
    return claimed_from(await raw.run(_claim_sql(from_status, online_only), params))


@functools.cache
def _claim_sql(from_status: SubtaskStatus, online_only: bool) -> str:
    moved = claim_statement("postgresql", online_only).text.strip()
    left, processing = COUNTER_COLUMNS[from_status], COUNTER_COLUMNS[S.PROCESSING]
    return f"""
WITH moved AS ({moved}),
counted AS (
  UPDATE tasks SET {left} = {left} - n.c, {processing} = {processing} + n.c
  FROM (SELECT count(*) AS c FROM moved) AS n
  WHERE tasks.pk = :task_pk AND n.c > 0
)
SELECT id, target, device_pk, attempt, failures FROM moved
"""


async def apply(raw: RawWrite, outcomes: Sequence[Outcome], now_ms: int) -> dict[int, Progress]:
    """`subtasks.apply_outcomes` with its counter deltas, as one statement; the progress of
    every task whose rows moved."""
    if not outcomes:
        return {}
    rows = await raw.run(_APPLY_SQL, apply_params(outcomes, now_ms))
    return {row[0]: counted_from_row(row[1:]).progress for row in rows}


def _apply_sql() -> str:
    moved = APPLY_POSTGRES.text.strip()
    per_status = ",\n  ".join(
        f"count(*) FILTER (WHERE status = '{status.value}') AS {status.value}"
        for status in SubtaskStatus
    )
    processing = COUNTER_COLUMNS[S.PROCESSING]
    deltas = ", ".join(
        f"{column} = {column} + d.{status.value}"
        for status, column in COUNTER_COLUMNS.items()
        if status is not S.PROCESSING
    )
    returned = ", ".join(f"tasks.{column}" for column in COUNTED_COLUMNS)
    # each moved row left `processing`: its counter loses them all and gains those that
    # are processing again; `ORDER BY` lets a small batch lock its tasks in key order
    return f"""
WITH moved AS ({moved}),
d AS (
  SELECT task_pk, count(*) AS n,
  {per_status}
  FROM moved GROUP BY task_pk ORDER BY task_pk
)
UPDATE tasks SET {processing} = {processing} - d.n + d.{S.PROCESSING.value}, {deltas}
FROM d WHERE tasks.pk = d.task_pk
RETURNING tasks.pk, {returned}
"""


_APPLY_SQL = _apply_sql()
