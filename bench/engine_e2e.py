"""Engine end to end: a createCommands task against the bare command round-trip loop, in one run.

    python bench/engine_e2e.py [--database sqlite|postgresql|both] [--devices 1000,5000]
                               [--rounds 3] [--in-flight 200] [--window-s 5] [--json]

For each database and fleet size, one platform process (a real `Server`: built-in transport,
engine, store) and one simulator process (`fleetbatch sim`) are started; once every device
answered a probe, each round runs, in the same processes and over the same devices:

- bare: `bench/transport.py`'s loop, commands straight through the device channel with
  `--in-flight` kept outstanding, for `--window-s` seconds (no engine, no database);
- task: one createCommands task over every device, with `max_concurrency` and the engine's
  `engine_max_in_flight` both set to `--in-flight`, so both sides keep the same window.

The task's rate is its subtasks over **first dispatch -> last result applied** (the earliest
`started_at` to the latest `finished_at` of its subtask rows, epoch ms); the wall time from
the create call to the engine's finish callback (subtask inserts and finalising included) is
printed too. CPU shares are of one core over each phase: the platform process, the
simulator, and PostgreSQL's processes. The engine's counters give claims and flushes per
task and their average batch. Goal (issue 6): task subtasks/s >= 0.5x the bare loop's round
trips/s. The machine is shared: compare the ratio, measured within one round, not the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (
    PostgresServer,
    RoundTripLoop,
    add_child_args,
    add_database_arg,
    add_json_arg,
    add_load_args,
    add_settings_arg,
    bench_parser,
    child_settings,
    children_of,
    device_ids_of,
    emit,
    make_fleet,
    postgres_cpu_s,
    print_rows,
    proc_cpu_s,
    read_fleet,
    setting_flags,
    start_sim,
    stop_children,
    subset,
    workspace,
)
from support.waiting import wait_until

GOAL_RATIO = 0.5
COMMAND = {"service_id": "svc", "command_name": "reboot", "paras": {"delay": 1}}
TASK_TIMEOUT_S = 300
CONNECT_TIMEOUT_S = 120


# --- the platform side (a child process) ---------------------------------------------------


async def platform_main(args: argparse.Namespace) -> None:
    from fleetbatch.devices.transport import BuiltinTransport
    from fleetbatch.server import Server, tune_gc

    fleet = await asyncio.to_thread(read_fleet, args.fleet)
    device_ids = device_ids_of(fleet)
    settings = child_settings(args, engine_max_in_flight=args.in_flight)
    async with Server(settings) as server:
        tune_gc()  # as `fleetbatch serve` does once it is ready
        transport = server.channel
        assert isinstance(transport, BuiltinTransport)
        emit("listening", port=server.mqtt_port)
        await wait_until(
            lambda: len(transport.sessions) >= len(device_ids),
            timeout_s=CONNECT_TIMEOUT_S,
            message="every simulated device connected",
        )
        bare = RoundTripLoop(transport, device_ids, args.in_flight)
        if missing := await bare.probe_all():
            emit("error", message=f"{len(missing)} devices never answered")
            return
        await bare.run(args.warmup_s)
        runner = TaskRunner(server, fleet["app_id"], device_ids, args.in_flight)
        await runner.run(0)  # warm-up: first statements, plans and caches
        emit("ready")
        for round_no in range(1, args.rounds + 1):
            emit("phase_start", phase="bare")
            cpu0 = time.process_time()
            done, failed, elapsed = await bare.run(args.window_s)
            emit(
                "bare",
                round=round_no,
                round_trips=done,
                failed=failed,
                seconds=elapsed,
                cpu_s=time.process_time() - cpu0,
            )
            emit("phase_start", phase="task")
            emit("task", round=round_no, **await runner.run(round_no))


class TaskRunner:
    """Creates one createCommands task over the fleet and waits for the engine to finish it."""

    def __init__(self, server: Any, app_id: str, device_ids: list[str], in_flight: int) -> None:
        self.server = server
        self.app_id = app_id
        self.device_ids = device_ids
        self.in_flight = in_flight
        self._waiting: dict[str, asyncio.Future[float]] = {}
        server.engine.add_finish_listener(self._finished)

    def _finished(self, task: Any, _status: Any) -> None:
        future = self._waiting.get(task.name)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    async def run(self, round_no: int) -> dict[str, Any]:
        from sqlalchemy import func, select

        from fleetbatch.domain.tasks import NewTask, TaskPolicy, TaskType
        from fleetbatch.store.schema import subtasks

        runtime, engine = self.server.runtime, self.server.engine
        name = f"bench-{round_no}-{time.time_ns()}"
        finished = asyncio.get_running_loop().create_future()
        self._waiting[name] = finished
        before = _engine_counts(engine)
        cpu0 = time.process_time()
        started = time.perf_counter()
        task = await runtime.tasks.create(
            NewTask(
                app_id=self.app_id,
                task_type=TaskType.CREATE_COMMANDS,
                name=name,
                document=COMMAND,
                policy=TaskPolicy(max_concurrency=self.in_flight),
            ),
            self.device_ids,
        )
        created = time.perf_counter()
        async with asyncio.timeout(TASK_TIMEOUT_S):
            ended = await finished
        cpu = time.process_time() - cpu0
        after = _engine_counts(engine)
        del self._waiting[name]
        s = subtasks.c
        async with runtime.store.read() as conn:
            first, last = (
                await conn.execute(
                    select(func.min(s.started_at), func.max(s.finished_at)).where(
                        s.task_pk == task.pk
                    )
                )
            ).one()
        done = await runtime.tasks.get(task.task_id)
        deltas = {key: after[key] - before[key] for key in after}
        return {
            "subtasks": done.progress.total,
            "success": done.progress.success,
            "status": done.status.value,
            "create_s": created - started,
            "created_to_finished_s": ended - started,
            "dispatch_to_applied_s": (last - first) / 1000,
            "cpu_s": cpu,
            **deltas,
        }


def _engine_counts(engine: Any) -> dict[str, int]:
    stats = engine.stats
    return {
        "claims": stats.claims,
        "claimed": stats.claimed,
        "flushes": stats.flushes,
        "applied": stats.applied,
    }


# --- the driver ------------------------------------------------------------------------------


class CpuMeter:
    """CPU shares of the simulator, the platform and PostgreSQL over one phase."""

    def __init__(self, platform: int, sim: int, pg: PostgresServer | None) -> None:
        self.platform, self.sim, self.pg = platform, sim, pg
        self._start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float, float]:
        return (
            time.perf_counter(),
            proc_cpu_s([self.platform]),
            proc_cpu_s(children_of(self.sim)),
            postgres_cpu_s(self.pg),
        )

    def start(self) -> None:
        self._start = self._now()

    def shares(self) -> dict[str, float]:
        now = self._now()
        wall = now[0] - self._start[0]
        platform, sim, db = ((now[i] - self._start[i]) / wall for i in (1, 2, 3))
        return {"platform_cpu": platform, "sim_cpu": sim, "db_cpu": db}


def run_platform(
    fleet: Path, data_dir: Path, database: str | None, args: argparse.Namespace, pg: Any
) -> list[dict[str, Any]]:
    """One platform process and one simulator over `fleet`; the events of every round."""
    command = [
        sys.executable, __file__, "--platform", "--fleet", str(fleet), "--data-dir",
        str(data_dir), "--in-flight", str(args.in_flight), "--window-s", str(args.window_s),
        "--warmup-s", str(args.warmup_s), "--rounds", str(args.rounds),
    ]  # fmt: skip
    if database:
        command += ["--database-url", database]
    command += setting_flags(args.settings)
    platform = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert platform.stdout is not None
    sim: subprocess.Popen[str] | None = None
    meter: CpuMeter | None = None
    rounds: dict[int, dict[str, Any]] = {}
    try:
        for line in platform.stdout:
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "listening":
                sim = start_sim(fleet, f"mqtt://127.0.0.1:{event['port']}")
                meter = CpuMeter(platform.pid, sim.pid, pg)
            elif kind == "phase_start":
                assert meter is not None
                meter.start()
            elif kind in ("bare", "task"):
                assert meter is not None
                event.update(meter.shares())
                rounds.setdefault(event.pop("round"), {})[kind] = event
            elif kind == "error":
                raise SystemExit(f"platform: {event['message']}")
        if platform.wait(timeout=60) != 0:
            raise SystemExit(f"platform process exited {platform.returncode}")
    finally:
        stop_children(platform, sim)
    return [{"round": r, **rounds[r]} for r in sorted(rounds)]


def summarise(kind: str, devices: int, rnd: dict[str, Any]) -> dict[str, Any]:
    """One row of the report from one round's two phases."""
    bare, task = rnd["bare"], rnd["task"]
    bare_rate = bare["round_trips"] / bare["seconds"]
    task_rate = task["subtasks"] / task["dispatch_to_applied_s"]
    return {
        "database": kind,
        "devices": devices,
        "round": rnd["round"],
        "bare_round_trips_per_s": round(bare_rate),
        "bare_failed": bare["failed"],
        "task_subtasks_per_s": round(task_rate),
        "ratio": round(task_rate / bare_rate, 3),
        "task_created_to_finished_s": round(task["created_to_finished_s"], 3),
        "task_dispatch_to_applied_s": round(task["dispatch_to_applied_s"], 3),
        "task_create_call_s": round(task["create_s"], 3),
        "task_status": task["status"],
        "task_success": task["success"],
        "bare_cpu_us_per_round_trip": round(bare["cpu_s"] * 1e6 / max(bare["round_trips"], 1)),
        "task_cpu_us_per_subtask": round(task["cpu_s"] * 1e6 / max(task["subtasks"], 1)),
        "bare_platform_cpu": round(bare["platform_cpu"], 2),
        "task_platform_cpu": round(task["platform_cpu"], 2),
        "task_sim_cpu": round(task["sim_cpu"], 2),
        "task_db_cpu": round(task["db_cpu"], 2),
        "claims": task["claims"],
        "avg_claim": round(task["claimed"] / max(task["claims"], 1), 1),
        "flushes": task["flushes"],
        "avg_flush": round(task["applied"] / max(task["flushes"], 1), 1),
    }


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"createCommands task vs bare round-trip loop ({args.in_flight} in flight, "
        f"bare window {args.window_s:g} s"
        + "".join(f", {name}={value}" for name, value in args.settings)
        + ")"
    )
    columns = (
        ("db", "database"), ("devices", "devices"), ("round", "round"),
        ("bare rt/s", "bare_round_trips_per_s"), ("task st/s", "task_subtasks_per_s"),
        ("ratio", "ratio"), ("dispatch->applied s", "task_dispatch_to_applied_s"),
        ("created->finished s", "task_created_to_finished_s"),
        ("platform CPU bare/task", None), ("sim CPU", "task_sim_cpu"), ("db CPU", "task_db_cpu"),
        ("CPU us/op bare/task", None), ("claims (avg)", None), ("flushes (avg)", None),
    )  # fmt: skip
    for header, _ in columns:
        table.add_column(header, justify="right")
    for row in rows:
        cells = []
        for header, key in columns:
            if key is not None:
                value = row[key]
                cells.append(f"{value:,}" if isinstance(value, int) else str(value))
            elif header.startswith("platform"):
                cells.append(f"{row['bare_platform_cpu']:.0%} / {row['task_platform_cpu']:.0%}")
            elif header.startswith("CPU"):
                cells.append(
                    f"{row['bare_cpu_us_per_round_trip']} / {row['task_cpu_us_per_subtask']}"
                )
            elif header.startswith("claims"):
                cells.append(f"{row['claims']} ({row['avg_claim']})")
            else:
                cells.append(f"{row['flushes']} ({row['avg_flush']})")
        table.add_row(*cells)
    console = Console(width=200)
    console.print(table)
    for (kind, devices), ratios in _ratios(rows).items():
        verdict = "met" if min(ratios) >= GOAL_RATIO else "MISSED"
        console.print(
            f"{kind} {devices:,} devices: ratio {min(ratios):.2f}-{max(ratios):.2f} "
            f"(goal >= {GOAL_RATIO}: {verdict})"
        )


def _ratios(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[float]]:
    found: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        found.setdefault((row["database"], row["devices"]), []).append(row["ratio"])
    return found


def main() -> None:
    parser = bench_parser(__doc__)
    add_database_arg(parser)
    parser.add_argument("--devices", default="1000,5000")
    parser.add_argument("--rounds", type=int, default=3)
    add_load_args(parser, window_s=5.0)
    add_settings_arg(parser, "engine_flush_ms=10")
    add_json_arg(parser)
    add_child_args(parser, "--platform", "--fleet", "--data-dir", "--database-url")
    args = parser.parse_args()
    if args.platform:
        import uvloop

        uvloop.run(platform_main(args))
        return

    sizes = [int(s) for s in args.devices.split(",")]
    rows: list[dict[str, Any]] = []
    with workspace(args.database, "fbbench-e2e-") as (work, pg, urls):
        for kind in urls:
            data_dir = work / kind
            full = work / f"{kind}-fleet.json"
            print(f"{kind}: registering {max(sizes):,} devices ...", file=sys.stderr)
            make_fleet(data_dir, max(sizes), full, urls[kind])
            for n in sizes:
                fleet = work / f"{kind}-fleet-{n}.json"
                subset(full, n, fleet)
                for rnd in run_platform(fleet, data_dir, urls[kind], args, pg):
                    row = summarise(kind, n, rnd)
                    row["settings"] = dict(args.settings)
                    rows.append(row)
                    if not args.json:
                        print(
                            f"  {kind} {n:,} round {row['round']}: bare "
                            f"{row['bare_round_trips_per_s']:,}/s, task "
                            f"{row['task_subtasks_per_s']:,}/s, ratio {row['ratio']}",
                            file=sys.stderr,
                        )
    print_rows(rows, args, print_table)


if __name__ == "__main__":
    main()
