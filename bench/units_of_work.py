"""The engine's two units of work alone: claiming a batch of subtasks, applying their answers.

    python bench/units_of_work.py [--database sqlite|postgresql|both] [--subtasks 5000]
                                  [--batch 200] [--tasks 4] [--json]

Setup (not measured): a fresh store per database, an app with `--subtasks` devices, and per
round a createCommands task over all of them, made running. Then, with no devices and no
server loops, the task is drained as the dispatcher and the ingestor would: claim `--batch`
subtasks (`steps.claim_batch`), apply a success for each (`steps.apply_outcomes`), until none
is left. Each call is timed whole (wall clock), and the process's CPU is taken over all of
them. On PostgreSQL each call is one statement in autocommit (`store.counted`); on SQLite a
write transaction on the driver connection (`Store.raw_write`).

It tells what the store costs per subtask when nothing else competes for the cores; the
end-to-end benchmark shows what is left of it when the platform and the devices do.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
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
from support.engine import register_devices

COMMAND = {"service_id": "svc", "command_name": "reboot", "paras": {}}
LEASE_MS = 60_000


async def measure(data_dir: Path, url: str | None, kind: str, args: Any) -> dict[str, Any]:
    from fleetbatch.domain.states import SubtaskStatus, TaskStatus
    from fleetbatch.domain.tasks import NewTask, TaskType
    from fleetbatch.engine import steps
    from fleetbatch.runtime import Runtime
    from fleetbatch.settings import Settings
    from fleetbatch.store import tasks as task_rows
    from fleetbatch.store.subtasks import Outcome

    settings = Settings(data_dir=data_dir / kind, database=url)
    runtime = await Runtime.open(settings)
    try:
        node_ids = (f"n{i}" for i in range(args.subtasks))
        app, made = await register_devices(runtime.registry, "bench", node_ids)
        device_ids = [d.device_id for d in made]
        claims: list[float] = []
        applies: list[float] = []
        cpu = 0.0
        for round_no in range(args.tasks):
            new = NewTask(
                app_id=app.app_id,
                task_type=TaskType.CREATE_COMMANDS,
                name=f"units-{round_no}",
                document=COMMAND,
            )
            task = await runtime.tasks.create(new, device_ids)
            async with runtime.store.write() as conn:
                await task_rows.update_task(conn, task.pk, status=TaskStatus.PROCESSING.value)
            cpu0 = time.process_time()
            while True:
                now = int(time.time() * 1000)
                request = steps.ClaimRequest(task.pk, args.batch, now + LEASE_MS, retries=False)
                started = time.perf_counter()
                claimed = await steps.claim_batch(
                    runtime.store, request, worker_id="bench", now_ms=now
                )
                claims.append(time.perf_counter() - started)
                if not claimed:
                    break
                outcomes = [
                    Outcome(c.id, c.attempt, SubtaskStatus.SUCCESS, output='{"result_code": 0}')
                    for c in claimed
                ]
                started = time.perf_counter()
                await steps.apply_outcomes(runtime.store, outcomes, now_ms=now)
                applies.append(time.perf_counter() - started)
            cpu += time.process_time() - cpu0
            done = await runtime.tasks.get(task.task_id)
            if done.progress.success != args.subtasks:
                raise SystemExit(f"round {round_no}: {done.progress.success} applied")
        subtasks = args.subtasks * args.tasks
        return {
            "db": kind,
            "batch": args.batch,
            "subtasks": subtasks,
            "claim_p50_ms": statistics.median(claims) * 1000,
            "claim_p99_ms": percentile(claims, 0.99) * 1000,
            "apply_p50_ms": statistics.median(applies) * 1000,
            "apply_p99_ms": percentile(applies, 0.99) * 1000,
            "us_per_subtask": (sum(claims) + sum(applies)) / subtasks * 1e6,
            "platform_cpu_us_per_subtask": cpu / subtasks * 1e6,
        }
    finally:
        await runtime.close()


def print_table(rows: list[dict[str, Any]], _args: Any) -> None:
    for row in rows:
        print(
            f"{row['db']:>10}: batch {row['batch']}, {row['subtasks']:,} subtasks: "
            f"claim p50 {row['claim_p50_ms']:.2f} ms (p99 {row['claim_p99_ms']:.2f}), "
            f"apply p50 {row['apply_p50_ms']:.2f} ms (p99 {row['apply_p99_ms']:.2f}); "
            f"{row['us_per_subtask']:.1f} µs per subtask in all, "
            f"{row['platform_cpu_us_per_subtask']:.1f} µs of it the platform's CPU"
        )


def main() -> None:
    parser = bench_parser(__doc__)
    add_database_arg(parser)
    parser.add_argument("--subtasks", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=4)
    add_json_arg(parser)
    args = parser.parse_args()
    rows = []
    with workspace(args.database, "fbbench-units-") as (tmp, _pg, urls):
        for kind, url in urls.items():
            rows.append(asyncio.run(measure(tmp, url, kind, args)))
    print_rows(rows, args, print_table)


if __name__ == "__main__":
    main()
