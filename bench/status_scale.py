"""Status reads on a 1,000,000-subtask task against the same reads on a 10-subtask task.

    python bench/status_scale.py [--database sqlite|postgresql|both] [--subtasks 1000000]
                                 [--iterations 300] [--legacy-iterations 20] [--json]

Setup (not measured): a fresh store per database and three tasks created through the task
service with empty device lists, in this order: `older` (10 subtasks), `big` (`--subtasks`),
`small` (10 subtasks). Their subtask rows are inserted by one `INSERT .. SELECT` from a
generated series (1% fail, 1% timeout, the rest success, interleaved) and each task's
counters set from the counted rows (`store.tasks.set_counts`). PostgreSQL is ANALYZEd
afterwards, as autovacuum would soon do; SQLite is left as the server leaves it (no ANALYZE).
`older` is there because its rows sit below the big task's in the primary key: a plan that
walks the primary key and filters on the task finds them only after a million rows.

Measured through `TaskService`, as the API calls it, interleaved (small, older, big, for
every case, every iteration) so that all see the same noise:

- get-task (`TaskService.get`);
- a marker page of 50 (`TaskService.subtasks`): the default marker, and a deep one (the
  record id 10,000 rows above the task's oldest subtask: 99% deep on the big task); each
  without a status filter and with `status=fail` (1% of rows) and `status=success`;
- the legacy page-number page (`TaskService.subtasks_by_number`): the deepest page of 250 on
  the big task (page 3,999 at a million: offset 999,750), page 0 on the small ones.

Goal (issue 6): each get and marker page on the big task (and on `older`) within 2x of the
same on `small` (p50 and p99). The machine is shared: p99 over a few hundred samples is
noisy.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (
    add_database_arg,
    add_json_arg,
    bench_parser,
    percentile,
    print_rows,
    workspace,
)

GOAL_RATIO = 2.0
SMALL = 10
DEEP_ROWS = 10_000
LEGACY_SIZE = 250
WARMUP = 20
COMMAND = {"service_id": "svc", "command_name": "reboot", "paras": {"delay": 1}}
OUTPUT = '{"result_code":0,"response_name":"reboot","paras":{"result":"ok"}}'

# row i (from 1): i % 100 == 1 fails, == 2 times out, the rest succeed
SUBTASKS_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
INSERT INTO subtasks (task_pk, target, device_pk, status, attempt, failures, output,
                      error_code, error_msg, created_at, updated_at, started_at, finished_at)
SELECT :task_pk, :prefix || printf('%07d', i), NULL,
       CASE i % 100 WHEN 1 THEN 'fail' WHEN 2 THEN 'timeout' ELSE 'success' END, 1,
       CASE WHEN i % 100 IN (1, 2) THEN 1 ELSE 0 END,
       CASE WHEN i % 100 IN (1, 2) THEN NULL ELSE :output END,
       CASE i % 100 WHEN 1 THEN 'device.result_code' WHEN 2 THEN 'device.no_response' END,
       CASE i % 100 WHEN 1 THEN 'the device answered result_code 1'
                    WHEN 2 THEN 'no answer from the device in time' END,
       :now, :now, :now, :now
FROM n
"""
SUBTASKS_POSTGRES = """
INSERT INTO subtasks (task_pk, target, device_pk, status, attempt, failures, output,
                      error_code, error_msg, created_at, updated_at, started_at, finished_at)
SELECT CAST(:task_pk AS BIGINT), CAST(:prefix AS TEXT) || lpad(i::text, 7, '0'), NULL,
       CASE i % 100 WHEN 1 THEN 'fail' WHEN 2 THEN 'timeout' ELSE 'success' END, 1,
       CASE WHEN i % 100 IN (1, 2) THEN 1 ELSE 0 END,
       CASE WHEN i % 100 IN (1, 2) THEN NULL ELSE CAST(:output AS TEXT) END,
       CASE i % 100 WHEN 1 THEN 'device.result_code' WHEN 2 THEN 'device.no_response' END,
       CASE i % 100 WHEN 1 THEN 'the device answered result_code 1'
                    WHEN 2 THEN 'no answer from the device in time' END,
       CAST(:now AS BIGINT), CAST(:now AS BIGINT), CAST(:now AS BIGINT), CAST(:now AS BIGINT)
FROM generate_series(1, CAST(:count AS INTEGER)) AS i
"""

Call = Callable[[Any], Awaitable[object]]


async def build(runtime: Any, kind: str, count: int, name: str, app_id: str) -> Any:
    """A finished task with `count` subtasks and matching counters; the Task."""
    from sqlalchemy import text

    from fleetbatch.domain.states import TaskStatus
    from fleetbatch.domain.tasks import NewTask, TaskType
    from fleetbatch.store import subtasks as subtask_rows
    from fleetbatch.store import tasks as task_rows

    task = await runtime.tasks.create(
        NewTask(app_id=app_id, task_type=TaskType.CREATE_COMMANDS, name=name, document=COMMAND),
        [],
    )
    now = runtime.clock.now_ms()
    async with runtime.store.write() as conn:
        await conn.execute(
            text(SUBTASKS_POSTGRES if kind == "postgresql" else SUBTASKS_SQLITE),
            {
                "count": count,
                "task_pk": task.pk,
                "prefix": f"{name}_",
                "output": OUTPUT,
                "now": now,
            },
        )
        counts = await subtask_rows.count_by_status(conn, task.pk)
        await task_rows.set_counts(conn, task.pk, counts)
        await task_rows.update_task(
            conn, task.pk, status=TaskStatus.PARTIAL_SUCCESS.value, finished_at=now
        )
    return await runtime.tasks.get(task.task_id)


async def oldest_id(runtime: Any, task_pk: int) -> int:
    from sqlalchemy import func, select

    from fleetbatch.store.schema import subtasks

    async with runtime.store.read() as conn:
        query = select(func.min(subtasks.c.id)).where(subtasks.c.task_pk == task_pk)
        return int((await conn.execute(query)).scalar_one())


def cases(runtime: Any, deep: dict[int, str]) -> list[tuple[str, Call, bool]]:
    """(name, call on a task, whether the 2x goal applies)."""
    from fleetbatch.domain.states import SubtaskStatus
    from fleetbatch.store.paging import PageRequest

    service = runtime.tasks
    found: list[tuple[str, Call, bool]] = [("get-task", lambda t: service.get(t.task_id), True)]
    for status in (None, SubtaskStatus.FAIL, SubtaskStatus.SUCCESS):
        label = "" if status is None else f", status={status.value}"
        found.append(
            (
                f"page 50, default marker{label}",
                lambda t, s=status: service.subtasks(
                    t.task_id, page=PageRequest(limit=50), status=s
                ),
                True,
            )
        )
        found.append(
            (
                f"page 50, deep marker{label}",
                lambda t, s=status: service.subtasks(
                    t.task_id, page=PageRequest(limit=50, marker=deep[t.pk]), status=s
                ),
                True,
            )
        )
    return found


async def timed(call: Call, task: Any) -> float:
    started = time.perf_counter()
    await call(task)
    return time.perf_counter() - started


async def measure(
    kind: str, url: str | None, work: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    from fleetbatch.domain.ids import format_record_id
    from fleetbatch.runtime import Runtime
    from fleetbatch.settings import Settings

    runtime = await Runtime.open(Settings(data_dir=work / kind, database=url))
    try:
        app = await runtime.registry.apps.create("bench")
        print(f"{kind}: building a {args.subtasks:,}-subtask task ...", file=sys.stderr)
        started = time.perf_counter()
        older = await build(runtime, kind, SMALL, "older", app.app_id)
        big = await build(runtime, kind, args.subtasks, "big", app.app_id)
        small = await build(runtime, kind, SMALL, "small", app.app_id)
        tasks = {"small": small, "older": older, "big": big}
        if kind == "postgresql":
            async with runtime.store.engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql("ANALYZE")
        print(f"{kind}: built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        deep = {
            big.pk: format_record_id(await oldest_id(runtime, big.pk) + DEEP_ROWS),
            **{
                t.pk: format_record_id(await oldest_id(runtime, t.pk) + SMALL // 2)
                for t in (small, older)
            },
        }
        goal_cases = cases(runtime, deep)
        samples: dict[tuple[str, str], list[float]] = {}
        for iteration in range(WARMUP + args.iterations):
            for name, call, _ in goal_cases:
                for label, task in tasks.items():
                    seconds = await timed(call, task)
                    if iteration >= WARMUP:
                        samples.setdefault((name, label), []).append(seconds)
        service = runtime.tasks
        deepest = args.subtasks // LEGACY_SIZE - 1
        legacy_name = f"legacy page {deepest:,} x {LEGACY_SIZE} (small ones: page 0)"
        for iteration in range(1 + args.legacy_iterations):
            for label, task in tasks.items():
                page_no = deepest if task is big else 0
                seconds = await timed(
                    lambda t, p=page_no: service.subtasks_by_number(t.task_id, p, LEGACY_SIZE),
                    task,
                )
                if iteration:
                    samples.setdefault((legacy_name, label), []).append(seconds)
        _, page = await service.subtasks_by_number(big.task_id, deepest, LEGACY_SIZE)
        assert len(page.items) == LEGACY_SIZE, "the deepest legacy page must be full"
    finally:
        await runtime.close()
    rows = []
    for name, _, goal in [*goal_cases, (legacy_name, None, False)]:
        row: dict[str, Any] = {"database": kind, "case": name, "goal_applies": goal}
        for label in tasks:
            values = samples[(name, label)]
            row[f"{label}_p50_ms"] = round(percentile(values, 0.5) * 1000, 3)
            row[f"{label}_p99_ms"] = round(percentile(values, 0.99) * 1000, 3)
            row[f"{label}_samples"] = len(values)
        for label in ("big", "older"):
            for q in ("p50", "p99"):
                ratio = row[f"{label}_{q}_ms"] / row[f"small_{q}_ms"]
                row[f"{label}_ratio_{q}"] = round(ratio, 2)
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"status reads: {args.subtasks:,}-subtask task vs {SMALL}-subtask task "
        f"({args.iterations} samples each, legacy {args.legacy_iterations})"
    )
    for header in (
        "db", "case", "small p50 / p99 ms", "big p50 / p99 ms", "big/small p50, p99",
        "older p50 / p99 ms", "older/small p50, p99", "goal <= 2x",
    ):  # fmt: skip
        table.add_column(header, justify="right")
    for row in rows:
        ratios = [row[f"{t}_ratio_{q}"] for t in ("big", "older") for q in ("p50", "p99")]
        verdict = "-"
        if row["goal_applies"]:
            verdict = "met" if max(ratios) <= GOAL_RATIO else "MISSED"
        table.add_row(
            row["database"], row["case"], _pair(row, "small", "_ms"), _pair(row, "big", "_ms"),
            _pair(row, "big_ratio", ""), _pair(row, "older", "_ms"),
            _pair(row, "older_ratio", ""), verdict,
        )  # fmt: skip
    Console(width=200).print(table)


def _pair(row: dict[str, Any], prefix: str, suffix: str) -> str:
    """`p50 / p99` of one column pair, e.g. `big_p50_ms` and `big_p99_ms`."""
    return f"{row[f'{prefix}_p50{suffix}']:.2f} / {row[f'{prefix}_p99{suffix}']:.2f}"


def main() -> None:
    parser = bench_parser(__doc__)
    add_database_arg(parser)
    parser.add_argument("--subtasks", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--legacy-iterations", type=int, default=20)
    add_json_arg(parser)
    args = parser.parse_args()
    if args.subtasks < 2 * DEEP_ROWS:
        parser.error(f"--subtasks must be at least {2 * DEEP_ROWS:,}")
    import uvloop

    rows: list[dict[str, Any]] = []
    with workspace(args.database, "fbbench-status-") as (work, _, urls):
        for kind, url in urls.items():
            rows += uvloop.run(measure(kind, url, work, args))
    print_rows(rows, args, print_table)


if __name__ == "__main__":
    main()
