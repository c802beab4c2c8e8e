"""Subtask rows: bulk creation, claims, guarded transitions in batches, paging.

Every change of status is a guarded UPDATE (the statuses it may leave, and for answers the
attempt it belongs to); callers turn the rows it returns into counter deltas in the same
transaction, so the task row's counters always equal the rows' own states. The two
dialects differ only where a set-based statement needs a list parameter: PostgreSQL takes
arrays (`unnest`), SQLite one JSON text (`json_each`).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    Row,
    Text,
    TextClause,
    and_,
    bindparam,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.ids import format_record_id, parse_marker
from fleetbatch.domain.registry import DeviceStatus, Page
from fleetbatch.domain.states import TERMINAL_SUBTASK_STATUSES, SubtaskStatus
from fleetbatch.domain.tasks import ErrorCode, Selector, SelectorKind, Subtask
from fleetbatch.store.paging import PageRequest
from fleetbatch.store.rawsql import RawWrite, dialect_of, fetch_rows
from fleetbatch.store.schema import devices, group_members, subtasks

S = SubtaskStatus
s = subtasks.c
UNFINISHED = (S.WAITING, S.PROCESSING, S.FAIL_WAIT_RETRY)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A subtask handed to this worker for one attempt."""

    id: int
    target: str
    device_pk: int | None
    attempt: int
    failures: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt, to be applied if the attempt is still the current one.

    `retry_budget` and `retry_at` come from the task's policy: a failed or timed-out attempt
    becomes `fail_wait_retry` (due at `retry_at`) while the subtask's failures are below
    the budget.
    """

    id: int
    attempt: int
    status: SubtaskStatus
    output: str | None = None
    error_code: str | None = None
    error_msg: str | None = None
    phase: str | None = None
    retry_budget: int = 0
    retry_at: int = 0


def subtask_from_row(row: Row[Any]) -> Subtask:
    m = row._mapping
    return Subtask(
        id=m["id"],
        task_pk=m["task_pk"],
        target=m["target"],
        device_pk=m["device_pk"],
        status=SubtaskStatus(m["status"]),
        attempt=m["attempt"],
        failures=m["failures"],
        request_id=m["request_id"],
        phase=m["phase"],
        output=m["output"],
        error_code=m["error_code"],
        error_msg=m["error_msg"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
    )


def _insert_ignoring_duplicates(conn: AsyncConnection) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(subtasks).on_conflict_do_nothing()


# --- creation ---------------------------------------------------------------------------


async def insert_listed(
    conn: AsyncConnection,
    task_pk: int,
    project_id: str,
    device_ids: Sequence[str],
    now_ms: int,
    *,
    status: SubtaskStatus = S.WAITING,
    phase: str | None = None,
) -> None:
    """Subtasks for an explicit chunk of device ids; a repeated id is ignored.

    An id that names no device of the project becomes a failed subtask saying so, instead of
    failing the task (the counters are set afterwards from `count_by_status`).
    """
    found = await conn.execute(
        select(devices.c.device_id, devices.c.pk, devices.c.project_id).where(
            devices.c.device_id.in_(device_ids)
        )
    )
    # device ids are unique across projects: filter the project here, not in the query,
    # so the planner drives the lookup by the id index alone
    pks = {device_id: pk for device_id, pk, project in found.all() if project == project_id}
    rows = []
    for device_id in device_ids:
        pk = pks.get(device_id)
        row = {
            "task_pk": task_pk,
            "target": device_id,
            "device_pk": pk,
            "status": status.value,
            "phase": phase,
            "error_code": None,
            "error_msg": None,
            "created_at": now_ms,
            "updated_at": now_ms,
            "finished_at": None,
        }
        if pk is None:
            row.update(
                status=S.FAIL.value,
                phase=None,
                error_code=ErrorCode.DEVICE_NOT_FOUND.value,
                error_msg=f"device {device_id} does not exist",
                finished_at=now_ms,
            )
        rows.append(row)
    if rows:
        await conn.execute(_insert_ignoring_duplicates(conn), rows)


async def count_by_status(conn: AsyncConnection, task_pk: int) -> dict[str, int]:
    """Rows per status of one task (a full count; for after a bulk insert and for checks)."""
    rows = await conn.execute(
        select(s.status, func.count()).where(s.task_pk == task_pk).group_by(s.status)
    )
    return {status: int(count) for status, count in rows.all()}


def selector_condition(selector: Selector, app_id: str) -> Any:
    """The WHERE clause over `devices` that picks a selector's devices."""
    d = devices.c
    kind = selector.kind
    if kind is SelectorKind.ALL:
        return d.app_id == app_id
    if kind is SelectorKind.PRODUCT:
        return and_(d.app_id == app_id, d.product_id == selector.product_id)
    if kind is SelectorKind.AREA:
        return and_(d.app_id == app_id, d.location == selector.area)
    if kind is SelectorKind.DEVICE_TYPE:
        from fleetbatch.store.schema import products

        return and_(
            d.app_id == app_id,
            d.product_id.in_(
                select(products.c.product_id).where(
                    products.c.app_id == app_id,
                    products.c.device_type == selector.device_type,
                    products.c.manufacturer_id == selector.manufacturer_id,
                    products.c.model == selector.model,
                )
            ),
        )
    if kind in (SelectorKind.GROUPS, SelectorKind.GROUP_NAMES):
        # group names are resolved to ids (sub-groups included) when the task is created
        return d.pk.in_(
            select(group_members.c.device_pk).where(
                group_members.c.group_id.in_(list(selector.group_ids))
            )
        )
    raise InvalidInput("selector", f"{kind.value} is not expanded in the database")


async def expand_chunk(
    conn: AsyncConnection,
    task_pk: int,
    condition: Any,
    after_pk: int,
    chunk: int,
    now_ms: int,
    *,
    phase: str | None = None,
) -> tuple[int, int | None]:
    """INSERT..SELECT the next `chunk` selected devices above `after_pk` as waiting subtasks.

    Returns (rows inserted, the last device pk covered), the pk None when nothing was left.
    """
    d = devices.c
    upper = (
        await conn.execute(
            select(d.pk).where(condition, d.pk > after_pk).order_by(d.pk).offset(chunk - 1).limit(1)
        )
    ).scalar()
    bounds = [d.pk > after_pk] + ([d.pk <= upper] if upper is not None else [])
    source = select(
        bindparam("task_pk", task_pk, type_=BigInteger),
        d.device_id,
        d.pk,
        bindparam("status", S.WAITING.value),
        bindparam("phase", phase, type_=Text),
        bindparam("created_at", now_ms, type_=BigInteger),
        bindparam("updated_at", now_ms, type_=BigInteger),
    ).where(condition, *bounds)
    statement = subtasks.insert().from_select(
        ["task_pk", "target", "device_pk", "status", "phase", "created_at", "updated_at"], source
    )
    result = await conn.execute(statement)
    inserted = max(result.rowcount, 0)
    if upper is None:
        return inserted, None
    return inserted, int(upper)


# --- claims ---------------------------------------------------------------------------


async def claim(
    conn: AsyncConnection | RawWrite,
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
    """Hand up to `limit` due subtasks in `from_status` to this worker for a new attempt."""
    params = claim_params(task_pk, from_status, limit, worker_id, now_ms, lease_until, phase)
    statement = claim_statement(dialect_of(conn), online_only)
    return claimed_from(await fetch_rows(conn, statement, params))


def claimed_from(rows: Iterable[Sequence[Any]]) -> list[Claimed]:
    """The rows a claim returned (`id, target, device_pk, attempt, failures`), in id order."""
    return [Claimed(*row) for row in sorted(rows, key=lambda row: row[0])]


def claim_params(
    task_pk: int,
    from_status: SubtaskStatus,
    limit: int,
    worker_id: str,
    now_ms: int,
    lease_until: int,
    phase: str | None,
) -> dict[str, Any]:
    """The parameters of `claim_statement`."""
    return {
        "task_pk": task_pk,
        "from_status": from_status.value,
        "now": now_ms,
        "lim": limit,
        "worker": worker_id,
        "lease": lease_until,
        "phase": phase,
    }


@functools.cache
def claim_statement(dialect: str, online_only: bool) -> TextClause:
    """The claim as fixed SQL per dialect: compiled once, where an expression built per
    call cost as much as the UPDATE itself (measured on the dispatcher's path)."""
    online = (
        "AND EXISTS (SELECT 1 FROM devices d WHERE d.pk = subtasks.device_pk"
        f" AND d.status = '{DeviceStatus.ONLINE.value}')"
        if online_only
        else ""
    )
    # PostgreSQL: `= ANY(ARRAY(...))`, as the `IN (SELECT ...)` form turned into a scan of
    # the whole table once statistics existed (DESIGN: measured); SKIP LOCKED lets several
    # workers share. SQLite has one writer, and its planner keeps the index for `IN`.
    if dialect == "postgresql":
        picked = f"""id = ANY(ARRAY(
    SELECT id FROM subtasks
    WHERE task_pk = :task_pk AND status = :from_status
      AND (due_at IS NULL OR due_at <= CAST(:now AS BIGINT)) {online}
    ORDER BY id LIMIT :lim FOR UPDATE SKIP LOCKED))"""
    else:
        picked = f"""id IN (
    SELECT id FROM subtasks
    WHERE task_pk = :task_pk AND status = :from_status
      AND (due_at IS NULL OR due_at <= :now) {online}
    ORDER BY id LIMIT :lim)"""
    return text(
        f"""
UPDATE subtasks SET status = 'processing', attempt = attempt + 1, claimed_by = :worker,
  lease_until = CAST(:lease AS BIGINT), started_at = COALESCE(started_at, CAST(:now AS BIGINT)),
  updated_at = CAST(:now AS BIGINT), due_at = NULL,
  phase = COALESCE(CAST(:phase AS VARCHAR), phase)
WHERE {picked}
  AND status = :from_status
RETURNING id, target, device_pk, attempt, failures
"""
    )


# --- results ----------------------------------------------------------------------------

_APPLY_SQLITE = text(
    """
UPDATE subtasks SET
  status = CASE
    WHEN v.status IN ('fail', 'timeout') AND subtasks.failures < v.budget THEN 'fail_wait_retry'
    ELSE v.status END,
  failures = subtasks.failures + (CASE WHEN v.status IN ('fail', 'timeout') THEN 1 ELSE 0 END),
  due_at = CASE WHEN v.status IN ('fail', 'timeout') AND subtasks.failures < v.budget
    THEN v.retry_at ELSE NULL END,
  finished_at = CASE
    WHEN v.status IN ('fail', 'timeout') AND subtasks.failures < v.budget THEN NULL
    WHEN v.status IN ('waiting', 'processing') THEN NULL
    ELSE :now END,
  output = v.output,
  error_code = v.error_code,
  error_msg = v.error_msg,
  phase = COALESCE(v.phase, subtasks.phase),
  claimed_by = NULL,
  lease_until = NULL,
  updated_at = :now
FROM (
  SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS attempt,
         json_extract(value, '$[2]') AS status,
         json_extract(value, '$[3]') AS output, json_extract(value, '$[4]') AS error_code,
         json_extract(value, '$[5]') AS error_msg, json_extract(value, '$[6]') AS phase,
         json_extract(value, '$[7]') AS budget, json_extract(value, '$[8]') AS retry_at
  FROM json_each(:payload)
) AS v
WHERE subtasks.id = v.id AND subtasks.attempt = v.attempt AND subtasks.status = 'processing'
RETURNING subtasks.task_pk, subtasks.status
"""
)

APPLY_POSTGRES = text(
    """
UPDATE subtasks SET
  status = CASE
    WHEN v.status IN ('fail', 'timeout') AND subtasks.failures < v.budget THEN 'fail_wait_retry'
    ELSE v.status END,
  failures = subtasks.failures + (CASE WHEN v.status IN ('fail', 'timeout') THEN 1 ELSE 0 END),
  due_at = CASE WHEN v.status IN ('fail', 'timeout') AND subtasks.failures < v.budget
    THEN v.retry_at ELSE NULL END,
  finished_at = CASE
    WHEN v.status IN ('fail', 'timeout') AND subtasks.failures < v.budget THEN NULL
    WHEN v.status IN ('waiting', 'processing') THEN NULL
    ELSE CAST(:now AS BIGINT) END,
  output = v.output,
  error_code = v.error_code,
  error_msg = v.error_msg,
  phase = COALESCE(v.phase, subtasks.phase),
  claimed_by = NULL,
  lease_until = NULL,
  updated_at = CAST(:now AS BIGINT)
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:attempts AS INTEGER[]), CAST(:statuses AS TEXT[]),
            CAST(:outputs AS TEXT[]), CAST(:codes AS TEXT[]), CAST(:messages AS TEXT[]),
            CAST(:phases AS TEXT[]), CAST(:budgets AS INTEGER[]), CAST(:retry_at AS BIGINT[]))
  AS v(id, attempt, status, output, error_code, error_msg, phase, budget, retry_at)
WHERE subtasks.id = v.id AND subtasks.attempt = v.attempt AND subtasks.status = 'processing'
RETURNING subtasks.task_pk, subtasks.status
"""
).bindparams(
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("attempts", type_=ARRAY(Integer)),
    bindparam("statuses", type_=ARRAY(Text)),
    bindparam("outputs", type_=ARRAY(Text)),
    bindparam("codes", type_=ARRAY(Text)),
    bindparam("messages", type_=ARRAY(Text)),
    bindparam("phases", type_=ARRAY(Text)),
    bindparam("budgets", type_=ARRAY(Integer)),
    bindparam("retry_at", type_=ARRAY(BigInteger)),
)


async def apply_outcomes(
    conn: AsyncConnection | RawWrite, outcomes: Sequence[Outcome], now_ms: int
) -> dict[int, Counter[SubtaskStatus]]:
    """Apply a batch of outcomes as one guarded UPDATE; the counter deltas per task.

    Only subtasks still processing the same attempt change, so a late or repeated answer
    changes nothing and counts nothing.
    """
    if not outcomes:
        return {}
    rows: Sequence[Sequence[Any]]
    if dialect_of(conn) == "postgresql":
        rows = await fetch_rows(conn, APPLY_POSTGRES, apply_params(outcomes, now_ms))
    else:
        payload = orjson.dumps(
            [
                [
                    o.id,
                    o.attempt,
                    o.status.value,
                    o.output,
                    o.error_code,
                    o.error_msg,
                    o.phase,
                    o.retry_budget,
                    o.retry_at,
                ]
                for o in outcomes
            ]
        )
        rows = await fetch_rows(conn, _APPLY_SQLITE, {"now": now_ms, "payload": payload.decode()})
    deltas: dict[int, Counter[SubtaskStatus]] = {}
    for (task_pk, status), count in Counter(map(tuple, rows)).items():
        counter = deltas.setdefault(task_pk, Counter())
        counter[S.PROCESSING] -= count
        counter[S(status)] += count
    return deltas


def apply_params(outcomes: Sequence[Outcome], now_ms: int) -> dict[str, Any]:
    """The parameters of `APPLY_POSTGRES`: one array per column."""
    return {
        "now": now_ms,
        "ids": [o.id for o in outcomes],
        "attempts": [o.attempt for o in outcomes],
        "statuses": [o.status.value for o in outcomes],
        "outputs": [o.output for o in outcomes],
        "codes": [o.error_code for o in outcomes],
        "messages": [o.error_msg for o in outcomes],
        "phases": [o.phase for o in outcomes],
        "budgets": [o.retry_budget for o in outcomes],
        "retry_at": [o.retry_at for o in outcomes],
    }


async def set_phase(
    conn: AsyncConnection, changes: Sequence[tuple[int, int, str]], now_ms: int
) -> None:
    """Record a finer step (id, attempt, phase) of attempts still processing."""
    if changes:
        await conn.execute(
            update(subtasks)
            .where(
                s.id == bindparam("b_id"),
                s.attempt == bindparam("b_attempt"),
                s.status == S.PROCESSING.value,
            )
            .values(phase=bindparam("b_phase"), updated_at=now_ms),
            [{"b_id": i, "b_attempt": a, "b_phase": p} for i, a, p in changes],
        )


# --- bulk transitions -------------------------------------------------------------------


async def transition(
    conn: AsyncConnection,
    task_pk: int,
    from_statuses: Iterable[SubtaskStatus],
    to_status: SubtaskStatus,
    now_ms: int,
    *,
    targets: Sequence[str] | None = None,
    extra: Any = None,
    **values: Any,
) -> Counter[SubtaskStatus]:
    """Move a task's subtasks from some statuses to one; the counter deltas.

    One guarded UPDATE per source status, so the deltas come from the rows that moved.
    `targets` narrows it to some devices, `extra` is one more condition.
    """
    deltas: Counter[SubtaskStatus] = Counter()
    finished = now_ms if to_status in TERMINAL_SUBTASK_STATUSES else None
    for status in from_statuses:
        if status is to_status:
            continue
        conditions = [s.task_pk == task_pk, s.status == status.value]
        if targets is not None:
            conditions.append(s.target.in_(targets))
        if extra is not None:
            conditions.append(extra)
        result = await conn.execute(
            update(subtasks)
            .where(*conditions)
            .values(
                status=to_status.value,
                updated_at=now_ms,
                finished_at=finished,
                claimed_by=None,
                lease_until=None,
                **values,
            )
        )
        moved = max(result.rowcount, 0)
        if moved:
            deltas[status] -= moved
            deltas[to_status] += moved
    return deltas


async def overdue(
    conn: AsyncConnection, task_pk: int, now_ms: int, limit: int
) -> list[tuple[int, int]]:
    """(id, attempt) of processing subtasks whose attempt's lease ran out."""
    rows = await conn.execute(
        select(s.id, s.attempt)
        .where(s.task_pk == task_pk, s.status == S.PROCESSING.value, s.lease_until < now_ms)
        .order_by(s.id)
        .limit(limit)
    )
    return [(i, a) for i, a in rows.all()]


async def requeue_orphans(
    conn: AsyncConnection, dead_workers: Sequence[str], now_ms: int
) -> dict[int, Counter[SubtaskStatus]]:
    """Processing subtasks of dead workers go back to waiting (not counted as failures)."""
    if not dead_workers:
        return {}
    result = await conn.execute(
        update(subtasks)
        .where(s.status == S.PROCESSING.value, s.claimed_by.in_(dead_workers))
        .values(status=S.WAITING.value, claimed_by=None, lease_until=None, updated_at=now_ms)
        .returning(s.task_pk)
    )
    deltas: dict[int, Counter[SubtaskStatus]] = {}
    for (task_pk,) in result.all():
        counter = deltas.setdefault(task_pk, Counter())
        counter[S.PROCESSING] -= 1
        counter[S.WAITING] += 1
    return deltas


async def next_due(conn: AsyncConnection, task_pk: int) -> int | None:
    """When the earliest retry of a task is due (None: no retry is waiting)."""
    query = select(func.min(s.due_at)).where(
        s.task_pk == task_pk, s.status == S.FAIL_WAIT_RETRY.value
    )
    value = (await conn.execute(query)).scalar()
    return None if value is None else int(value)


async def delete_all(conn: AsyncConnection, task_pk: int) -> None:
    """Remove every subtask of a task."""
    await conn.execute(subtasks.delete().where(s.task_pk == task_pk))


async def targets_in(
    conn: AsyncConnection, task_pk: int, targets: Sequence[str]
) -> dict[str, SubtaskStatus]:
    """The status of the named devices' subtasks (missing ones are absent)."""
    rows = await conn.execute(
        select(s.target, s.status).where(s.task_pk == task_pk, s.target.in_(targets))
    )
    return {target: S(status) for target, status in rows.all()}


async def targets_of(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, str]:
    """The target device id of each existing subtask among `ids`."""
    rows = await conn.execute(select(s.id, s.target).where(s.id.in_(ids)))
    return {i: target for i, target in rows.all()}


async def rows_by_id(conn: AsyncConnection, ids: Sequence[int]) -> list[Subtask]:
    """Subtasks by id."""
    rows = await conn.execute(select(subtasks).where(s.id.in_(ids)).order_by(s.id))
    return [subtask_from_row(row) for row in rows.all()]


# --- reads ------------------------------------------------------------------------------


def _filters(
    task_pk: int,
    status: SubtaskStatus | None,
    target: str | None,
    statuses: Sequence[SubtaskStatus] | None = None,
    subtask_id: int | None = None,
) -> list[Any]:
    where: list[Any] = [s.task_pk == task_pk]
    if status is not None:
        where.append(s.status == status.value)
    if statuses is not None:
        where.append(s.status.in_(sorted({x.value for x in statuses})))
    if target is not None:
        where.append(s.target == target)
    if subtask_id is not None:
        where.append(s.id == subtask_id)
    return where


async def page_by_marker(
    conn: AsyncConnection,
    task_pk: int,
    page: PageRequest,
    *,
    status: SubtaskStatus | None = None,
    target: str | None = None,
    known_count: int | None = None,
    statuses: Sequence[SubtaskStatus] | None = None,
) -> Page[Subtask]:
    """Subtasks newest first below the marker, then `offset` skipped (IoTDA lists).

    `known_count`: the number of matching rows when the caller has it from the task's
    counters, which spares a COUNT over up to a million rows per page. `statuses`: any of
    these (a wire word can stand for more than one internal state).
    """
    where = _filters(task_pk, status, target, statuses)
    bound = parse_marker(page.marker)
    rows = (
        await conn.execute(
            select(subtasks)
            .where(*where, s.id < bound)
            .order_by(s.id.desc())
            .offset(page.offset)
            .limit(page.limit)
        )
    ).all()
    if known_count is None:
        known_count = int(
            (
                await conn.execute(select(func.count()).select_from(subtasks).where(*where))
            ).scalar_one()
        )
    marker = format_record_id(int(rows[-1]._mapping["id"])) if rows else None
    return Page(items=[subtask_from_row(row) for row in rows], count=known_count, marker=marker)


async def page_by_number(
    conn: AsyncConnection,
    task_pk: int,
    page_no: int,
    page_size: int,
    *,
    status: SubtaskStatus | None = None,
    target: str | None = None,
    statuses: Sequence[SubtaskStatus] | None = None,
    subtask_id: int | None = None,
    known_count: int | None = None,
) -> Page[Subtask]:
    """Subtasks in creation order, page `page_no` (from 0) of `page_size` (legacy lists).

    `statuses`: any of these states; `subtask_id`: that subtask only.
    """
    where = _filters(task_pk, status, target, statuses, subtask_id)
    if conn.dialect.name == "postgresql":
        # PostgreSQL's generic plan for a prepared statement (used after five runs) assumes an
        # average task; with one huge task it walks the primary key and filters, 70-100 ms
        # for a 10-subtask task's page (measured). Plan with this task's real numbers.
        await conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    rows = (
        await conn.execute(
            select(subtasks)
            .where(*where)
            .order_by(s.id)
            .offset(page_no * page_size)
            .limit(page_size)
        )
    ).all()
    if known_count is None:
        known_count = int(
            (
                await conn.execute(select(func.count()).select_from(subtasks).where(*where))
            ).scalar_one()
        )
    return Page(items=[subtask_from_row(row) for row in rows], count=known_count, marker=None)
