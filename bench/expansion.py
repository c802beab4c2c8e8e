"""Expansion of a broadcast task against one bare INSERT..SELECT of the same rows, in one run.

    python bench/expansion.py [--database sqlite|postgresql|both] [--devices 1000000]
                              [--rounds 2] [--json]

Setup (not measured): a fresh store per database with `--devices` devices registered by one
straight `INSERT .. SELECT` from a generated series (PostgreSQL is ANALYZEd afterwards, as
autovacuum would soon do).

Each round measures, in alternating order:

- expansion: a server process (a real `Server`, engine included, no devices connected)
  creates a broadcast task (`SelectorKind.ALL`, scheduled an hour ahead so that nothing is
  dispatched afterwards) and polls until its status leaves `initializing`; the engine's
  expander does the work in chunks of `engine_expand_chunk` rows. Timed from the create
  call to the first poll that sees the new status (polls every 10 ms). The process's peak
  RSS is its `ru_maxrss` (wait4), its RSS before the task is printed too.
- bare: the same rows (task, device id, device pk, waiting, times) into `subtasks` by one
  `INSERT .. SELECT` in one transaction, from this process.

Both start from an empty `subtasks` table (rows deleted; PostgreSQL VACUUM ANALYZEd and
CHECKPOINTed, so no autovacuum or checkpoint from the previous round lands in the next;
SQLite's WAL checkpointed). The first insert into a new table also grows its files, later
ones reuse the freed pages: hence the alternating order.

Goal (issue 6): expansion <= 1.5x the bare statement and <= 300 MB RSS. The machine is
shared: compare the ratio, measured within one round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (
    add_child_args,
    add_database_arg,
    add_json_arg,
    add_settings_arg,
    bench_parser,
    child_settings,
    print_rows,
    rss_kb,
    run_child,
    setting_flags,
    workspace,
)
from support.waiting import wait_until

GOAL_RATIO = 1.5
GOAL_RSS_MB = 300
COMMAND = {"service_id": "svc", "command_name": "reboot", "paras": {"delay": 1}}
EXPAND_TIMEOUT_S = 1800
POLL_S = 0.01
SCHEDULE_AHEAD_MS = 3600 * 1000

DEVICES_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
INSERT INTO devices (device_id, project_id, app_id, product_id, node_id, name, secret_enc,
                     status, tags, created_at)
SELECT :product || '_bench' || printf('%07d', i), :project, :app, :product,
       'bench' || printf('%07d', i), 'bench' || printf('%07d', i), X'00', 'INACTIVE', '{}', :now
FROM n
"""
DEVICES_POSTGRES = """
INSERT INTO devices (device_id, project_id, app_id, product_id, node_id, name, secret_enc,
                     status, tags, created_at)
SELECT CAST(:product AS TEXT) || '_bench' || lpad(i::text, 7, '0'), :project, :app, :product,
       'bench' || lpad(i::text, 7, '0'), 'bench' || lpad(i::text, 7, '0'), '\\x00'::bytea,
       'INACTIVE', '{}', CAST(:now AS BIGINT)
FROM generate_series(1, CAST(:count AS INTEGER)) AS i
"""
# the expander's statement (store.subtasks.expand_chunk) without its chunk bounds
BARE = """
INSERT INTO subtasks (task_pk, target, device_pk, status, phase, created_at, updated_at)
SELECT CAST(:task_pk AS BIGINT), device_id, pk, 'waiting', NULL, CAST(:now AS BIGINT),
       CAST(:now AS BIGINT)
FROM devices WHERE app_id = :app
"""


# --- the server side (a child process) --------------------------------------------------------


async def server_main(args: argparse.Namespace) -> None:
    from fleetbatch.domain.states import TaskStatus
    from fleetbatch.domain.tasks import NewTask, Selector, SelectorKind, TaskPolicy, TaskType
    from fleetbatch.server import Server, tune_gc

    async with Server(child_settings(args)) as server:
        tune_gc()  # as `fleetbatch serve` does once it is ready
        assert server.runtime is not None
        assert server.engine is not None
        tasks, engine = server.runtime.tasks, server.engine
        rss_before = rss_kb()
        now = server.runtime.clock.now_ms()
        started = time.perf_counter()
        task = await tasks.create(
            NewTask(
                app_id=args.app,
                task_type=TaskType.CREATE_COMMANDS,
                name=f"broadcast-{time.time_ns()}",
                document=COMMAND,
                selector=Selector(SelectorKind.ALL),
                policy=TaskPolicy(schedule_at_ms=now + SCHEDULE_AHEAD_MS),
            )
        )

        async def expanded() -> Any:
            latest = await tasks.get(task.task_id)
            return latest if latest.status is not TaskStatus.INITIALIZING else None

        done = await wait_until(
            expanded, timeout_s=EXPAND_TIMEOUT_S, interval_s=POLL_S, message="task expanded"
        )
        seconds = time.perf_counter() - started
        print(
            json.dumps(
                {
                    "task_pk": task.pk,
                    "status": done.status.value,
                    "subtasks": done.progress.total,
                    "waiting": done.progress.waiting,
                    "expand_s": seconds,
                    "chunks": engine.stats.expanded + 1,
                    "rss_before_mb": rss_before / 1024,
                }
            ),
            flush=True,
        )


# --- the driver --------------------------------------------------------------------------------


class Bench:
    """One database: its store, the app whose devices are the broadcast's targets."""

    def __init__(self, kind: str, url: str | None, data_dir: Path) -> None:
        self.kind, self.url, self.data_dir = kind, url, data_dir
        self.runtime: Any = None
        self.app_id = ""

    async def open(self) -> None:
        from fleetbatch.runtime import Runtime
        from fleetbatch.settings import Settings

        self.runtime = await Runtime.open(Settings(data_dir=self.data_dir, database=self.url))

    async def close(self) -> None:
        await self.runtime.close()

    async def register(self, count: int) -> float:
        """`count` devices in one statement; the seconds it took (setup, not measured)."""
        from sqlalchemy import text

        registry = self.runtime.registry
        app = await registry.apps.create("bench")
        product = await registry.products.default(app.app_id)
        self.app_id = app.app_id
        sql = DEVICES_POSTGRES if self.kind == "postgresql" else DEVICES_SQLITE
        started = time.perf_counter()
        async with self.runtime.store.write() as conn:
            await conn.execute(
                text(sql),
                {
                    "count": count,
                    "product": product.product_id,
                    "project": app.project_id,
                    "app": app.app_id,
                    "now": self.runtime.clock.now_ms(),
                },
            )
        if self.kind == "postgresql":
            await self._maintain("ANALYZE devices")
        return time.perf_counter() - started

    async def bare(self) -> tuple[float, int]:
        """The bare INSERT..SELECT into a throwaway task: (seconds, rows)."""
        from sqlalchemy import text

        from fleetbatch.domain.tasks import NewTask, TaskPolicy, TaskType

        now = self.runtime.clock.now_ms()
        holder = await self.runtime.tasks.create(
            NewTask(
                app_id=self.app_id,
                task_type=TaskType.CREATE_COMMANDS,
                name=f"bare-{time.time_ns()}",
                document=COMMAND,
                policy=TaskPolicy(schedule_at_ms=now + SCHEDULE_AHEAD_MS),
            ),
            [],
        )
        started = time.perf_counter()
        async with self.runtime.store.write() as conn:
            result = await conn.execute(
                text(BARE), {"task_pk": holder.pk, "now": now, "app": self.app_id}
            )
        seconds = time.perf_counter() - started
        await self.remove(holder.pk)
        return seconds, result.rowcount

    async def check(self, task_pk: int) -> tuple[int, int]:
        """(subtask rows, the task's n_total): both must be the device count."""
        from fleetbatch.store import subtasks as subtask_rows
        from fleetbatch.store import tasks as task_rows

        async with self.runtime.store.read() as conn:
            counts = await subtask_rows.count_by_status(conn, task_pk)
            row = await task_rows.get_task_row(conn, pk=task_pk)
        return sum(counts.values()), row.n_total if row is not None else -1

    async def remove(self, task_pk: int) -> None:
        """Delete a task and its subtasks; leave `subtasks` as if they had never been."""
        from fleetbatch.store import subtasks as subtask_rows
        from fleetbatch.store import tasks as task_rows

        async with self.runtime.store.write() as conn:
            await subtask_rows.delete_all(conn, task_pk)
            await task_rows.delete_task(conn, task_pk)
        # the next measurement starts from the same state: no autovacuum or checkpoint due
        # from this round's million rows (PostgreSQL), no WAL left to fold in (SQLite)
        if self.kind == "postgresql":
            await self._maintain("VACUUM (ANALYZE) subtasks")
            await self._maintain("CHECKPOINT")
        else:
            await self._maintain("PRAGMA wal_checkpoint(TRUNCATE)")

    async def _maintain(self, statement: str) -> None:
        # VACUUM refuses to run in a transaction block: autocommit on the driver connection
        async with self.runtime.store.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql(statement)


def expand_in_child(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child", "--data-dir", str(bench.data_dir),
        "--app", bench.app_id,
    ]  # fmt: skip
    if bench.url:
        command += ["--database-url", bench.url]
    run = run_child(command + setting_flags(args.settings))
    result: dict[str, Any] = json.loads(run.stdout)
    result["peak_rss_mb"] = run.peak_rss_mb
    result["child_cpu_s"] = run.cpu_s
    return result


async def measure(
    kind: str, url: str | None, work: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    bench = Bench(kind, url, work / kind)
    await bench.open()
    rows = []
    try:
        print(f"{kind}: registering {args.devices:,} devices ...", file=sys.stderr)
        setup_s = await bench.register(args.devices)
        print(f"{kind}: registered in {setup_s:.1f} s", file=sys.stderr)
        for round_no in range(1, args.rounds + 1):
            order = ("bare", "expansion") if round_no % 2 else ("expansion", "bare")
            row: dict[str, Any] = {"database": kind, "devices": args.devices, "round": round_no}
            row["order"] = " then ".join(order)
            for phase in order:
                if phase == "bare":
                    row["bare_s"], row["bare_rows"] = await bench.bare()
                    continue
                result = await asyncio.to_thread(expand_in_child, bench, args)
                rows_found, n_total = await bench.check(result["task_pk"])
                await bench.remove(result["task_pk"])
                row.update(
                    expand_s=result["expand_s"],
                    expand_status=result["status"],
                    subtasks=rows_found,
                    counter_total=n_total,
                    chunks=result["chunks"],
                    rss_before_mb=round(result["rss_before_mb"], 1),
                    peak_rss_mb=round(result["peak_rss_mb"], 1),
                )
            row["ratio"] = round(row["expand_s"] / row["bare_s"], 3)
            row["bare_s"] = round(row["bare_s"], 3)
            row["expand_s"] = round(row["expand_s"], 3)
            print(f"  {json.dumps(row)}", file=sys.stderr)
            rows.append(row)
    finally:
        await bench.close()
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    settings = "".join(f", {name}={value}" for name, value in args.settings)
    table = Table(
        title=f"broadcast expansion vs one INSERT..SELECT ({args.devices:,} devices{settings})"
    )
    for header in (
        "db", "round", "order", "bare s", "expansion s", "ratio", "chunks", "rows / counter",
        "RSS before MB", "peak RSS MB",
    ):  # fmt: skip
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(
            row["database"], str(row["round"]), row["order"], f"{row['bare_s']:.2f}",
            f"{row['expand_s']:.2f}", f"{row['ratio']:.2f}", str(row["chunks"]),
            f"{row['subtasks']:,} / {row['counter_total']:,}", f"{row['rss_before_mb']:.0f}",
            f"{row['peak_rss_mb']:.0f}",
        )  # fmt: skip
    console = Console(width=160)
    console.print(table)
    for kind in dict.fromkeys(row["database"] for row in rows):
        mine = [row for row in rows if row["database"] == kind]
        ratio = max(row["ratio"] for row in mine)
        rss = max(row["peak_rss_mb"] for row in mine)
        console.print(
            f"{kind}: worst ratio {ratio:.2f} (goal <= {GOAL_RATIO}: "
            f"{'met' if ratio <= GOAL_RATIO else 'MISSED'}), peak RSS {rss:.0f} MB "
            f"(goal <= {GOAL_RSS_MB}: {'met' if rss <= GOAL_RSS_MB else 'MISSED'})"
        )


def main() -> None:
    parser = bench_parser(__doc__)
    add_database_arg(parser)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    add_settings_arg(parser, "engine_expand_chunk=50000")
    add_json_arg(parser)
    add_child_args(parser, "--child", "--data-dir", "--database-url", "--app")
    args = parser.parse_args()
    import uvloop

    if args.child:
        uvloop.run(server_main(args))
        return
    rows: list[dict[str, Any]] = []
    with workspace(args.database, "fbbench-expand-") as (work, _, urls):
        for kind, url in urls.items():
            rows += uvloop.run(measure(kind, url, work, args))
    print_rows(rows, args, print_table)


if __name__ == "__main__":
    main()
