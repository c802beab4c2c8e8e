"""Command-status callbacks through the transactional outbox, to a receiver that fails half
the time: every notification delivered, none lost, repeats counted."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import select

from fleetbatch.devices import codec
from fleetbatch.domain.outbox import retry_delay_s
from fleetbatch.domain.registry import NewDevice
from fleetbatch.settings import Settings
from fleetbatch.store import outbox as outbox_rows
from fleetbatch.store.schema import outbox
from support.engine import Fleet, engine_settings, running_fleet
from support.legacy import BATCH, CMD, device_cmd, headers, login
from support.mqtt_device import RawDevice, credentials
from support.receiver import CallbackReceiver
from support.waiting import wait_until

FLEET = 20
FAILING = 3


def outbox_settings(settings: Settings) -> Settings:
    return engine_settings(
        settings,
        outbox_poll_s=0.02,
        outbox_backoff_s=0.02,
        outbox_backoff_max_s=0.2,
        outbox_timeout_s=2.0,
    )


async def outbox_rows_all(fleet: Fleet) -> list[Any]:
    async with fleet.runtime.store.read() as conn:
        return list((await conn.execute(select(outbox).order_by(outbox.c.id))).all())


async def test_callbacks_reach_a_flaky_receiver_at_least_once(settings: Settings) -> None:
    behaviors = [f"*_n{FAILING:06d}:fail_rate=1,fail_code=9"]
    async with (
        CallbackReceiver(fail_rate=0.5) as receiver,
        running_fleet(outbox_settings(settings), FLEET, behaviors=behaviors) as fleet,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{fleet.server.http_port}") as client,
    ):
        app = fleet.app
        sent = headers(app.app_id, await login(client, app.app_id, app.secret))
        body = device_cmd("callbacks", {"type": "Broadcast", "callbackUrl": receiver.url})
        created = await client.post(f"{BATCH}/tasks", headers=sent, json=body)
        task_id = created.json()["taskID"]
        task = await fleet.finished(await fleet.tasks.get(task_id))
        assert (task.progress.success, task.progress.fail) == (FLEET - 1, 1)

        async def all_delivered() -> bool:
            async with fleet.runtime.store.read() as conn:
                counted = await outbox_rows.counts(conn)
            return counted["pending"] == 0 and counted["delivered"] > 0

        await wait_until(all_delivered, timeout_s=30, message="every callback delivered")
        rows = await outbox_rows_all(fleet)
        # every row acknowledged at least once: none lost
        assert set(receiver.acked) == {row.id for row in rows}
        events = Counter(
            (body["deviceId"], body["result"]["resultCode"]) for body in receiver.bodies.values()
        )
        for device_id in fleet.device_ids:
            final = "FAILED" if device_id.endswith(f"n{FAILING:06d}") else "SUCCESSFUL"
            assert events[(device_id, "SENT")] == 1
            assert events[(device_id, final)] == 1
        failed = next(b for b in receiver.bodies.values() if b["result"]["resultCode"] == "FAILED")
        assert list(failed) == ["deviceId", "commandId", "result"]
        assert list(failed["result"]) == ["resultCode", "resultDetail"]
        assert receiver.failed > 0
        assert sum(row.attempts for row in rows) == receiver.requests
        print(  # the figures the issue asks to report
            f"\ncallbacks: rows={len(rows)} delivered={len(receiver.acked)} "
            f"requests={receiver.requests} refused={receiver.failed} "
            f"duplicates={receiver.duplicates} lost={len(rows) - len(receiver.acked)}"
        )

        # a single-device command's callback carries the command id of that API
        command = await client.post(
            f"{CMD}/deviceCommands",
            headers=sent,
            json={
                "deviceId": fleet.device_ids[0],
                "command": {"serviceId": "svc", "method": "ping"},
                "callbackUrl": receiver.url,
            },
        )
        command_id = command.json()["commandId"]

        async def command_notified() -> bool:
            return any(
                b["commandId"] == command_id and b["result"]["resultCode"] == "SUCCESSFUL"
                for b in receiver.bodies.values()
            )

        await wait_until(command_notified, timeout_s=15, message="the command's callback")


def test_retry_delays_double_up_to_the_cap() -> None:
    assert [retry_delay_s(n, 1.0, 10.0) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert retry_delay_s(10_000, 1.0, 300.0) == 300.0


async def test_a_command_reports_sent_delivered_and_its_result_in_order(settings: Settings) -> None:
    async with (
        CallbackReceiver(fail_rate=0.0) as receiver,
        running_fleet(outbox_settings(settings), 0) as fleet,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{fleet.server.http_port}") as client,
    ):
        registry = fleet.runtime.registry
        product = await registry.products.default(fleet.app.app_id)
        (device,) = await registry.devices.create_many(
            fleet.app.app_id, product.product_id, [NewDevice("raw")]
        )
        raw = await RawDevice.open("127.0.0.1", fleet.server.mqtt_port)
        try:
            assert await raw.connect(*credentials(device.device_id, device.secret)) == 0
            app = fleet.app
            sent = headers(app.app_id, await login(client, app.app_id, app.secret))
            created = await client.post(
                f"{CMD}/deviceCommands",
                headers=sent,
                json={"deviceId": device.device_id, "command": {"serviceId": "svc",
                      "method": "open"}, "callbackUrl": receiver.url},
            )  # fmt: skip
            command_id = created.json()["commandId"]
            publish = await raw.expect(codec.Publish, timeout_s=10)
            raw.send(codec.Puback(publish.packet_id))

            def codes() -> list[str]:
                ordered = sorted(receiver.bodies.items())
                return [body["result"]["resultCode"] for _, body in ordered]

            await wait_until(lambda: codes() == ["SENT", "DELIVERED"], timeout_s=10,
                             message=lambda: f"SENT, DELIVERED; got {codes()}")  # fmt: skip
            answer = json.dumps({"result_code": 0, "paras": {"opened": True}}).encode()
            raw.send(
                codec.Publish(publish.topic.replace("commands/", "commands/response/"), answer)
            )
            await wait_until(lambda: len(codes()) == 3, timeout_s=10, message="the result")
            last = sorted(receiver.bodies.items())[-1][1]
            assert last == {
                "deviceId": device.device_id,
                "commandId": command_id,
                "result": {"resultCode": "SUCCESSFUL", "resultDetail": {"opened": True}},
            }
        finally:
            await raw.close()
