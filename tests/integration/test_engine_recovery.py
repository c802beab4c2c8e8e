"""`kill -9` of `fleetbatch serve` in the middle of a task loses nothing and counts nothing twice.

The server runs as a child process over the test's store; simulated devices (in this
process) answer slowly enough that the task is mid-way when the server is killed. A new
server on the same ports takes over once the dead worker's lease has run out: the
subtasks the dead one had in flight are sent again, and the task finishes with every
device counted exactly once. (Devices lost their connections with the server: what the new
one sends before a device is back fails as offline, and the task's retry policy covers it.)
"""

from __future__ import annotations

import asyncio

import pytest

from fleetbatch.domain.states import TaskStatus
from fleetbatch.domain.tasks import NewTask, TaskPolicy, TaskType
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from fleetbatch.sim.fleet import FleetDevice
from fleetbatch.sim.runner import Simulator
from support.engine import check_counters, register_devices
from support.serve import kill_9, restartable_flags, start_healthy, stop_process
from support.waiting import wait_until

DEVICES = 600
BEHAVIORS = ["latency=constant:40", "backoff_min=0.1,backoff_max=0.5"]


async def test_kill_9_mid_task_then_a_restart_finishes_it_exactly_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETBATCH_ENGINE_LEASE_S", "1")
    monkeypatch.setenv("FLEETBATCH_ENGINE_SWEEP_S", "0.1")
    runtime = await Runtime.open(settings)
    try:
        node_ids = (f"n{i:04d}" for i in range(DEVICES))
        app, created = await register_devices(runtime.registry, "recovery", node_ids)
        flags, url = restartable_flags(settings)
        server = await asyncio.to_thread(start_healthy, settings.data_dir, *flags)
        fleet = [FleetDevice(d.device_id, d.secret) for d in created]
        async with Simulator(fleet, url, behaviors=BEHAVIORS) as sim:
            try:
                await sim.wait_connected(timeout_s=30)
                task = await runtime.tasks.create(
                    NewTask(
                        app_id=app.app_id,
                        task_type=TaskType.CREATE_COMMANDS,
                        name="survive",
                        document={"paras": {"n": 1}},
                        # devices reconnect to the new server within a second: what it
                        # sends before that fails offline, and is retried
                        policy=TaskPolicy(max_concurrency=20, retry_count=3, retry_interval_s=1),
                    ),
                    [d.device_id for d in created],
                )

                async def mid_way() -> bool:
                    progress = (await runtime.tasks.get(task.task_id)).progress
                    return progress.success >= DEVICES // 4 and progress.processing > 0

                await wait_until(mid_way, timeout_s=30)
                await asyncio.to_thread(kill_9, server)  # no cleanup, no last flush
                at_kill = await runtime.tasks.get(task.task_id)
                assert not at_kill.finished
                assert 0 < at_kill.progress.success < DEVICES
                await check_counters(runtime, at_kill)

                server = await asyncio.to_thread(start_healthy, settings.data_dir, *flags)

                async def finished() -> bool:
                    return (await runtime.tasks.get(task.task_id)).finished

                await wait_until(finished, timeout_s=60)
            finally:
                await asyncio.to_thread(stop_process, server)
        done = await runtime.tasks.get(task.task_id)
        assert done.status is TaskStatus.SUCCESS
        assert done.progress.success == done.progress.total == DEVICES
        await check_counters(runtime, done)
        # what was in flight at the kill was sent again: some devices answered twice, but
        # no subtask counted twice
        assert sim.stats.commands_answered >= DEVICES
    finally:
        await runtime.close()
