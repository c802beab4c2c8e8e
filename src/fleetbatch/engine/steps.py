"""The engine's units of work: each function is one transaction over the store.

The loops in `engine.engine` decide when to call these; everything that must hold at every
instant (counters equal the rows' states, terminal stays terminal, nothing counts twice) is
kept here: each subtask change is a guarded UPDATE and its counter deltas are added to the
task row last, in the same transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import (
    ErrorCode,
    Progress,
    Task,
    TaskType,
    final_status,
    should_abort,
)
from fleetbatch.store import counted
from fleetbatch.store import outbox as outbox_rows
from fleetbatch.store import subtasks as subtask_rows
from fleetbatch.store import tasks as task_rows
from fleetbatch.store.database import Store
from fleetbatch.store.rawsql import RawWrite
from fleetbatch.store.subtasks import Claimed, Outcome

S = SubtaskStatus
T = TaskStatus
RUNNING = (T.PROCESSING,)
STOPPABLE = (T.INITIALIZING, T.WAITING, T.PROCESSING, T.STOPPING)


async def add_deltas(
    conn: AsyncConnection | RawWrite, deltas: dict[int, Counter[SubtaskStatus]]
) -> dict[int, Progress]:
    """Add per-task counter deltas (last in the transaction); the progress afterwards."""
    progress: dict[int, Progress] = {}
    for task_pk in sorted(deltas):
        progress[task_pk] = (await task_rows.add_counts(conn, task_pk, deltas[task_pk])).progress
    return progress


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What the dispatcher asks of one task in one round."""

    task_pk: int
    limit: int
    lease_until: int
    online_only: bool = False
    phase: str | None = None
    retries: bool = True  # False: skip the retry claim (the counters show none)
    # the task has a callback URL: the claimed subtasks' new phase is queued in the outbox
    notify: bool = False


async def claim_batch(
    store: Store, request: ClaimRequest, *, worker_id: str, now_ms: int
) -> list[Claimed]:
    """Claim up to `limit` due subtasks of a running task: retries first, then waiting ones."""
    if request.notify:
        async with store.write() as conn:
            claimed, deltas = await claim_in(conn, request, worker_id, now_ms)
            if claimed:
                await outbox_rows.enqueue_command_changes(conn, [c.id for c in claimed], now_ms)
                await task_rows.add_counts(conn, request.task_pk, deltas)
            return claimed
    if store.dialect == "postgresql":
        return await _claim_counted(store, request, worker_id, now_ms)
    async with store.raw_write() as raw:
        claimed, deltas = await claim_in(raw, request, worker_id, now_ms)
        if claimed:
            await task_rows.add_counts(raw, request.task_pk, deltas)
        return claimed


async def _claim_counted(
    store: Store, request: ClaimRequest, worker_id: str, now_ms: int
) -> list[Claimed]:
    """The claim on PostgreSQL: a statement per source status, each its own unit of work
    with its counters (`store.counted`)."""
    async with store.raw_autocommit() as raw:
        claimed, _ = await _claim_pools(counted.claim, raw, request, worker_id, now_ms)
    return claimed


async def claim_in(
    conn: AsyncConnection | RawWrite, request: ClaimRequest, worker_id: str, now_ms: int
) -> tuple[list[Claimed], Counter[SubtaskStatus]]:
    """The claim's subtask rows, in the caller's transaction; the counter deltas to add."""
    return await _claim_pools(subtask_rows.claim, conn, request, worker_id, now_ms)


async def _claim_pools(
    claim: Callable[..., Awaitable[list[Claimed]]],
    conn: Any,
    request: ClaimRequest,
    worker_id: str,
    now_ms: int,
) -> tuple[list[Claimed], Counter[SubtaskStatus]]:
    """`claim` from each pool in turn (retries first) until the request is filled; what it
    claimed and the counter deltas that go with it."""
    claimed: list[Claimed] = []
    deltas: Counter[SubtaskStatus] = Counter()
    for status in (S.FAIL_WAIT_RETRY, S.WAITING) if request.retries else (S.WAITING,):
        room = request.limit - len(claimed)
        if room <= 0:
            break
        got = await claim(
            conn,
            request.task_pk,
            status,
            room,
            worker_id=worker_id,
            now_ms=now_ms,
            lease_until=request.lease_until,
            online_only=request.online_only,
            phase=request.phase,
        )
        if got:
            deltas[status] -= len(got)
            deltas[S.PROCESSING] += len(got)
            claimed.extend(got)
    return claimed, deltas


async def apply_outcomes(
    store: Store,
    outcomes: Sequence[Outcome],
    *,
    now_ms: int,
    notify_ids: Sequence[int] = (),
) -> dict[int, Progress]:
    """Apply a batch of outcomes; the progress of every task that changed.

    `notify_ids`: subtasks whose change may be pushed to a callback URL (outbox, same
    transaction).
    """
    if notify_ids:
        async with store.write() as conn:
            deltas = await subtask_rows.apply_outcomes(conn, outcomes, now_ms)
            await outbox_rows.enqueue_command_changes(conn, notify_ids, now_ms)
            return await add_deltas(conn, deltas)
    if store.dialect == "postgresql":
        async with store.raw_autocommit() as raw:
            return await counted.apply(raw, outcomes, now_ms)
    async with store.raw_write() as raw:
        deltas = await subtask_rows.apply_outcomes(raw, outcomes, now_ms)
        return await add_deltas(raw, deltas)


async def apply_in(
    conn: AsyncConnection, outcomes: Sequence[Outcome], *, now_ms: int
) -> dict[int, Progress]:
    """`apply_outcomes` inside a transaction the caller holds (store executors)."""
    deltas = await subtask_rows.apply_outcomes(conn, outcomes, now_ms)
    return await add_deltas(conn, deltas)


async def time_out_overdue(
    store: Store, task: Task, *, now_ms: int, limit: int = 5000
) -> dict[int, Progress]:
    """Attempts whose lease ran out (their worker lost the answer) time out, or retry."""
    async with store.write() as conn:
        late = await subtask_rows.overdue(conn, task.pk, now_ms, limit)
        policy = task.policy
        outcomes = [
            Outcome(
                id=i,
                attempt=a,
                status=S.TIMEOUT,
                error_code=ErrorCode.NO_RESPONSE.value,
                error_msg="no answer from the device in time",
                # the async-command life records it (other types keep no phase)
                phase="TIMEOUT" if task.task_type is TaskType.CREATE_ASYNC_COMMANDS else None,
                retry_budget=policy.retry_budget,
                retry_at=now_ms + policy.retry_interval_s * 1000,
            )
            for i, a in late
        ]
        if task.callback_url:
            progress = await apply_in(conn, outcomes, now_ms=now_ms)
            await outbox_rows.enqueue_command_changes(conn, [i for i, _ in late], now_ms)
            return progress
        return await apply_in(conn, outcomes, now_ms=now_ms)


async def requeue_orphans(
    store: Store, dead_workers: Sequence[str], *, now_ms: int
) -> dict[int, Progress]:
    """The processing subtasks of dead workers are handed out again."""
    async with store.write() as conn:
        deltas = await subtask_rows.requeue_orphans(conn, dead_workers, now_ms)
        return await add_deltas(conn, deltas)


async def stop_subtasks(
    conn: AsyncConnection,
    task_pk: int,
    now_ms: int,
    *,
    targets: Sequence[str] | None = None,
    to_status: SubtaskStatus = S.STOPPED,
    error_code: str | None = None,
    error_msg: str | None = None,
) -> Progress:
    """Every unfinished subtask (or the named ones) becomes `to_status`, in the caller's txn."""
    extra: dict[str, Any] = {}
    if error_code is not None:
        extra = {"error_code": error_code, "error_msg": error_msg}
    deltas = await subtask_rows.transition(
        conn,
        task_pk,
        (S.WAITING, S.FAIL_WAIT_RETRY, S.PROCESSING),
        to_status,
        now_ms,
        targets=targets,
        **extra,
    )
    return (await add_deltas(conn, {task_pk: deltas}))[task_pk]


async def finish(
    conn: AsyncConnection, task: Task, progress: Progress, now_ms: int
) -> TaskStatus | None:
    """Give a task whose subtasks are all terminal its final status; None if not yet."""
    if progress.unfinished:
        return None
    status = T.STOPPED if task.status is T.STOPPING else final_status(progress)
    desc = None
    if progress.total == 0:
        desc = "no device matched the task's targets"
    changed = await task_rows.change_status(
        conn,
        task.pk,
        (T.PROCESSING, T.STOPPING),
        status,
        # `progress` may be stale on PostgreSQL: a retry may have committed since
        settled=True,
        finished_at=now_ms,
        claimed_by=None,
        lease_until=None,
        **({"status_desc": desc} if desc else {}),
    )
    return status if changed else None


async def finish_if_done(store: Store, task_pk: int, *, now_ms: int) -> TaskStatus | None:
    """Finalise the task if its counters say every subtask is terminal."""
    async with store.write() as conn:
        row = await task_rows.get_task_row(conn, pk=task_pk)
        if row is None:
            return None
        task = task_rows.task_from_row(row)
        if task.status not in (T.PROCESSING, T.STOPPING):
            return None
        return await finish(conn, task, task.progress, now_ms)


async def abort_if_failing(store: Store, task_pk: int, *, now_ms: int) -> bool:
    """The abort rule: stop the task once too many finished subtasks failed."""
    async with store.write() as conn:
        row = await task_rows.get_task_row(conn, pk=task_pk)
        if row is None:
            return False
        task = task_rows.task_from_row(row)
        if task.status is not T.PROCESSING or not should_abort(task.progress, task.policy):
            return False
        policy, progress = task.policy, task.progress
        desc = (
            f"aborted: {progress.failed} of {progress.finished} finished subtasks failed, "
            f"above the {policy.abort_fail_ratio:.0%} allowed once "
            f"{policy.abort_min_finished} finished"
        )
        # subtask rows first, the task row last: workers claiming from the task lock them
        # in that order, and the opposite order deadlocks with them on PostgreSQL
        progress = await stop_subtasks(conn, task.pk, now_ms)
        await task_rows.change_status(conn, task.pk, RUNNING, T.STOPPING, status_desc=desc)
        await finish(conn, _with_status(task, T.STOPPING), progress, now_ms)
        return True


async def time_out_task(store: Store, task_pk: int, *, now_ms: int) -> bool:
    """A task past its deadline: unfinished subtasks time out, and so does the task."""
    async with store.write() as conn:
        row = await task_rows.get_task_row(conn, pk=task_pk)
        if row is None:
            return False
        task = task_rows.task_from_row(row)
        if task.status not in (T.PROCESSING, T.WAITING) or task.deadline_at is None:
            return False
        if task.deadline_at > now_ms:
            return False
        await stop_subtasks(
            conn,
            task.pk,
            now_ms,
            to_status=S.TIMEOUT,
            error_code=ErrorCode.TASK_TIMEOUT.value,
            error_msg="the task's timeout passed before this device finished",
        )
        return await task_rows.change_status(
            conn,
            task.pk,
            (T.PROCESSING, T.WAITING),
            T.TIMEOUT,
            finished_at=now_ms,
            status_desc="the task's timeout passed",
        )


async def start_if_due(store: Store, task_pk: int, *, now_ms: int) -> bool:
    """A scheduled task whose time has come starts processing."""
    async with store.write() as conn:
        row = await task_rows.get_task_row(conn, pk=task_pk)
        if row is None:
            return False
        task = task_rows.task_from_row(row)
        if task.status is not T.WAITING or (task.scheduled_at or 0) > now_ms:
            return False
        deadline = now_ms + task.policy.timeout_s * 1000 if task.policy.timeout_s else None
        return await task_rows.change_status(
            conn, task.pk, (T.WAITING,), T.PROCESSING, started_at=now_ms, deadline_at=deadline
        )


def _with_status(task: Task, status: TaskStatus) -> Task:
    return replace(task, status=status)
