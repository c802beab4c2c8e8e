"""`kill -9` of `fleetbatch serve` while it delivers callbacks loses none of them.

The outbox rows were committed with the subtask changes; the killed server's leased rows
are delivered again by the restarted one once their lease runs out. The receiver (in this
process, on loopback) is slow and refuses half the requests, so deliveries are mid-way
at the kill.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy import select

from fleetbatch.domain.tasks import NewTask, TaskType
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from fleetbatch.sim.fleet import FleetDevice
from fleetbatch.sim.runner import Simulator
from fleetbatch.store import outbox as outbox_rows
from fleetbatch.store.schema import outbox
from support.engine import register_devices
from support.receiver import CallbackReceiver
from support.serve import kill_9, restartable_flags, start_healthy, stop_process
from support.waiting import wait_until

DEVICES = 30


async def test_kill_9_during_delivery_loses_no_callback(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (
        ("OUTBOX_POLL_S", "0.05"),
        ("OUTBOX_BACKOFF_S", "0.05"),
        ("OUTBOX_BACKOFF_MAX_S", "0.2"),
        ("OUTBOX_PER_URL", "2"),
        ("OUTBOX_TIMEOUT_S", "1"),
        ("OUTBOX_LEASE_S", "1"),
        ("ENGINE_SWEEP_S", "0.1"),
    ):
        monkeypatch.setenv(f"FLEETBATCH_{name}", value)
    runtime = await Runtime.open(settings)
    try:
        node_ids = (f"n{i:04d}" for i in range(DEVICES))
        app, created = await register_devices(runtime.registry, "outbox-recovery", node_ids)
        flags, url = restartable_flags(settings)
        server = await asyncio.to_thread(start_healthy, settings.data_dir, *flags)
        fleet = [FleetDevice(d.device_id, d.secret) for d in created]
        async with (
            CallbackReceiver(fail_rate=0.5, delay_s=0.02) as receiver,
            Simulator(fleet, url) as sim,
        ):
            try:
                await sim.wait_connected(timeout_s=30)
                task = await runtime.tasks.create(
                    NewTask(
                        app_id=app.app_id,
                        task_type=TaskType.CREATE_ASYNC_COMMANDS,
                        name="callbacks",
                        document={"service_id": "svc", "command_name": "ping", "paras": {}},
                        callback_url=receiver.url,
                        source="legacy",
                    ),
                    [d.device_id for d in created],
                )

                async def mid_way() -> bool:
                    async with runtime.store.read() as conn:
                        counted = await outbox_rows.counts(conn)
                    return len(receiver.acked) >= 5 and counted["pending"] > 0

                await wait_until(mid_way, timeout_s=30, message="deliveries under way")
                # leased rows stay leased, nothing is marked
                await asyncio.to_thread(kill_9, server)
                async with runtime.store.read() as conn:
                    at_kill = await outbox_rows.counts(conn)
                assert at_kill["pending"] > 0

                server = await asyncio.to_thread(start_healthy, settings.data_dir, *flags)

                async def all_delivered() -> bool:
                    done = (await runtime.tasks.get(task.task_id)).finished
                    async with runtime.store.read() as conn:
                        return done and (await outbox_rows.counts(conn))["pending"] == 0

                await wait_until(all_delivered, timeout_s=60, message="every callback delivered")
            finally:
                await asyncio.to_thread(stop_process, server)
        async with runtime.store.read() as conn:
            rows = (await conn.execute(select(outbox.c.id))).scalars().all()
        assert set(receiver.acked) == set(rows)  # lost = 0
        finals = Counter(
            b["deviceId"]
            for b in receiver.bodies.values()
            if b["result"]["resultCode"] == "SUCCESSFUL"
        )
        assert set(finals) == {d.device_id for d in created}
        print(
            f"\nkill -9 during delivery: rows={len(rows)} pending_at_kill={at_kill['pending']} "
            f"delivered={len(receiver.acked)} requests={receiver.requests} "
            f"refused={receiver.failed} duplicates={receiver.duplicates} "
            f"lost={len(set(rows) - set(receiver.acked))}"
        )
    finally:
        await runtime.close()
