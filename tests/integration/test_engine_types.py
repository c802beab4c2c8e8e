"""Every task type beyond createCommands, end to end: engine, built-in transport, devices.

Simulated devices answer what the simulator can; a `RawDevice` stands in where the test
must see the bytes a device receives or decide when it acknowledges. Each scenario runs on
SQLite and on PostgreSQL and ends with the counter invariant checked against the rows.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import select

from fleetbatch.devices import codec, topics
from fleetbatch.devices.channel import Delivery, NoResponse
from fleetbatch.domain.registry import CreatedDevice, DeviceStatus, NewDevice
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import ErrorCode, NewTask, Subtask, Task, TaskPolicy, TaskType
from fleetbatch.settings import Settings
from fleetbatch.store import shadows as shadow_rows
from fleetbatch.store.paging import PageRequest
from fleetbatch.store.schema import device_shadows, group_members
from support.broker import plain_broker_channel
from support.engine import Fleet, check_counters, engine_settings, running_fleet
from support.mosquitto import MosquittoBroker
from support.mqtt_device import RawDevice, credentials
from support.waiting import wait_until

S = SubtaskStatus
COMMAND = {"service_id": "svc", "command_name": "reboot", "paras": {"delay": 1}}


# --- helpers ----------------------------------------------------------------------------


async def register(fleet: Fleet, *specs: NewDevice) -> list[CreatedDevice]:
    """Devices the simulator does not run: offline until a test connects them."""
    registry = fleet.runtime.registry
    product = await registry.products.default(fleet.app.app_id)
    return await registry.devices.create_many(fleet.app.app_id, product.product_id, specs)


async def connect(fleet: Fleet, device: CreatedDevice) -> RawDevice:
    """A raw device connected and recorded ONLINE (as the engine's claims see it)."""
    raw = await RawDevice.open("127.0.0.1", fleet.server.mqtt_port)
    assert await raw.connect(*credentials(device.device_id, device.secret)) == 0
    await wait_until(
        lambda: status(fleet, device.device_id, DeviceStatus.ONLINE),
        timeout_s=5,
        message=f"{device.device_id} not recorded ONLINE",
    )
    return raw


async def status(fleet: Fleet, device_id: str, wanted: DeviceStatus) -> bool:
    found = await fleet.runtime.registry.devices.find(device_id)
    return found is not None and found.status is wanted


async def create(
    fleet: Fleet,
    task_type: TaskType,
    targets: Sequence[str],
    document: dict[str, Any] | None = None,
    **policy: Any,
) -> Task:
    new = NewTask(
        app_id=fleet.app.app_id,
        task_type=task_type,
        name=f"{task_type.value}-{len(targets)}-{fleet.runtime.clock.now_ms()}",
        document=document or {},
        policy=TaskPolicy(**policy),
    )
    return await fleet.tasks.create(new, targets)


async def rows(fleet: Fleet, task: Task) -> dict[str, Subtask]:
    _, page = await fleet.tasks.subtasks(task.task_id, page=PageRequest(limit=50))
    assert page.count <= 50
    return {s.target: s for s in page.items}


async def row(fleet: Fleet, task: Task, target: str) -> Subtask:
    _, page = await fleet.tasks.subtasks(task.task_id, target=target)
    assert page.count == 1
    return page.items[0]


async def finished(fleet: Fleet, task: Task, expected: TaskStatus) -> Task:
    done = await fleet.finished(task, timeout_s=15)
    assert done.status is expected, done.status_desc
    await check_counters(fleet.runtime, done)
    return done


def assert_failed(subtask: Subtask, status: SubtaskStatus, code: ErrorCode) -> None:
    assert (subtask.status, subtask.error_code) == (status, code.value), subtask


# --- createMessages ---------------------------------------------------------------------


async def test_messages_reach_devices_and_fail_or_time_out_where_they_cannot(
    settings: Settings,
) -> None:
    async with running_fleet(engine_settings(settings), 3) as fleet:
        raw_target, offline = await register(fleet, NewDevice("raw"), NewDevice("off"))
        raw = await connect(fleet, raw_target)
        try:
            # the system format: an envelope with id, name and content, acknowledged by PUBACK
            document = {"message_id": "m-1", "name": "greeting", "message": {"text": "hi"}}
            targets = [*fleet.device_ids, raw_target.device_id, offline.device_id]
            task = await create(fleet, TaskType.CREATE_MESSAGES, targets, document)
            received = await raw.expect(codec.Publish, timeout_s=10)
            assert received.topic == f"$oc/devices/{raw_target.device_id}/sys/messages/down"
            assert received.qos == 1
            assert json.loads(received.payload) == {
                "object_device_id": raw_target.device_id,
                "id": "m-1",
                "name": "greeting",
                "content": {"text": "hi"},
            }
            raw.send(codec.Puback(received.packet_id))
            done = await finished(fleet, task, TaskStatus.PARTIAL_SUCCESS)
            assert (done.progress.success, done.progress.fail) == (4, 1)
            assert fleet.sim is not None
            assert fleet.sim.stats.messages_received == 3
            found = await rows(fleet, task)
            assert_failed(found[offline.device_id], S.FAIL, ErrorCode.DEVICE_OFFLINE)
            for device_id in (*fleet.device_ids, raw_target.device_id):
                assert found[device_id].status is S.SUCCESS
                assert json.loads(found[device_id].output or "") == {"message_id": "m-1"}

            # raw, base64-decoded, on a custom topic: only a device subscribed to it gets it
            topic = f"$oc/devices/{raw_target.device_id}/user/cfg"
            raw.send(codec.Subscribe(1, [(topic, 1)]))
            assert (await raw.expect(codec.Suback)).return_codes == [1]
            blob = bytes(range(256))
            document = {
                "message": base64.b64encode(blob).decode(),
                "encoding": "base64",
                "payload_format": "raw",
                "topic": "cfg",
            }
            unsubscribed = fleet.device_ids[0]
            task = await create(
                fleet, TaskType.CREATE_MESSAGES, [raw_target.device_id, unsubscribed], document
            )
            received = await raw.expect(codec.Publish, timeout_s=10)
            assert (received.topic, received.payload) == (topic, blob)
            raw.send(codec.Puback(received.packet_id))
            await finished(fleet, task, TaskStatus.PARTIAL_SUCCESS)
            found = await rows(fleet, task)
            assert found[raw_target.device_id].status is S.SUCCESS
            message_id = json.loads(found[raw_target.device_id].output or "")["message_id"]
            assert len(message_id) == 32  # no message_id given: the attempt's request id
            assert_failed(found[unsubscribed], S.TIMEOUT, ErrorCode.NOT_ACKNOWLEDGED)
        finally:
            await raw.close()


async def test_a_message_nobody_acknowledges_times_out(settings: Settings) -> None:
    async with running_fleet(engine_settings(settings), 0) as fleet:
        (target,) = await register(fleet, NewDevice("mute"))
        raw = await connect(fleet, target)
        try:
            task = await create(
                fleet,
                TaskType.CREATE_MESSAGES,
                [target.device_id],
                {"message": "ping"},
                subtask_timeout_s=0.3,
            )
            assert (await raw.expect(codec.Publish)).payload  # received, never acknowledged
            await finished(fleet, task, TaskStatus.FAIL)
            subtask = await row(fleet, task, target.device_id)
            assert_failed(subtask, S.TIMEOUT, ErrorCode.NOT_ACKNOWLEDGED)
        finally:
            await raw.close()


# --- createAsyncCommands ----------------------------------------------------------------


async def test_async_commands_sent_immediately_fail_on_offline_devices(settings: Settings) -> None:
    behaviors = ["*_n000002:fail_rate=1,fail_code=5"]
    async with running_fleet(engine_settings(settings), 3, behaviors=behaviors) as fleet:
        (offline,) = await register(fleet, NewDevice("off"))
        document = {**COMMAND, "send_strategy": "immediately"}
        task = await create(
            fleet,
            TaskType.CREATE_ASYNC_COMMANDS,
            [*fleet.device_ids, offline.device_id],
            document,
        )
        done = await finished(fleet, task, TaskStatus.PARTIAL_SUCCESS)
        assert (done.progress.success, done.progress.fail) == (2, 2)
        found = await rows(fleet, task)
        for device_id in fleet.device_ids[:2]:
            assert (found[device_id].status, found[device_id].phase) == (S.SUCCESS, "SUCCESSFUL")
            assert '"result_code":0' in (found[device_id].output or "")
        failing = found[fleet.device_ids[2]]
        assert_failed(failing, S.FAIL, ErrorCode.DEVICE_RESULT)
        assert failing.phase == "FAILED"
        assert_failed(found[offline.device_id], S.FAIL, ErrorCode.DEVICE_OFFLINE)
        assert found[offline.device_id].phase == "FAILED"


async def test_delayed_async_commands_wait_for_their_devices_or_expire(
    settings: Settings,
) -> None:
    async with running_fleet(engine_settings(settings), 2) as fleet:
        later, never = await register(fleet, NewDevice("later"), NewDevice("never"))
        held = await create(
            fleet,
            TaskType.CREATE_ASYNC_COMMANDS,
            [*fleet.device_ids, later.device_id],
            {**COMMAND, "send_strategy": "delay"},
        )
        expiring = await create(
            fleet,
            TaskType.CREATE_ASYNC_COMMANDS,
            [never.device_id],
            {**COMMAND, "send_strategy": "delay", "expire_time": 1},
        )

        async def online_ones_done() -> bool:
            found = await rows(fleet, held)
            return all(found[d].phase == "SUCCESSFUL" for d in fleet.device_ids)

        await wait_until(online_ones_done, timeout_s=10, message="online devices not done")
        waiting = await row(fleet, held, later.device_id)
        assert (waiting.status, waiting.phase, waiting.attempt) == (S.WAITING, "PENDING", 0)

        raw = await connect(fleet, later)
        try:
            command = await raw.expect(codec.Publish, timeout_s=10)
            assert command.topic.startswith(f"$oc/devices/{later.device_id}/sys/commands/")
            sent = await row(fleet, held, later.device_id)
            assert (sent.status, sent.phase) == (S.PROCESSING, "SENT")
            raw.send(codec.Puback(command.packet_id))

            async def delivered() -> bool:
                return (await row(fleet, held, later.device_id)).phase == "DELIVERED"

            await wait_until(delivered, timeout_s=5, message="DELIVERED not recorded")
            answer = json.dumps({"result_code": 0, "paras": {"ok": True}}).encode()
            raw.send(
                codec.Publish(command.topic.replace("commands/", "commands/response/"), answer)
            )
            await finished(fleet, held, TaskStatus.SUCCESS)
            answered = await row(fleet, held, later.device_id)
            assert answered.phase == "SUCCESSFUL"
            assert json.loads(answered.output or "")["paras"] == {"ok": True}
        finally:
            await raw.close()

        await finished(fleet, expiring, TaskStatus.FAIL)
        expired = await row(fleet, expiring, never.device_id)
        assert_failed(expired, S.TIMEOUT, ErrorCode.EXPIRED)
        assert (expired.phase, expired.attempt) == ("EXPIRED", 0)


# --- updateDeviceShadows ----------------------------------------------------------------


async def test_shadows_are_merged_versioned_pushed_and_take_reports(settings: Settings) -> None:
    async with running_fleet(engine_settings(settings), 2) as fleet:
        raw_target, doomed = await register(fleet, NewDevice("raw"), NewDevice("doomed"))
        raw = await connect(fleet, raw_target)
        registry = fleet.runtime.registry
        try:
            first = {
                "shadow": [
                    {"service_id": "WaterMeter", "desired": {"temperature": 60, "mode": "eco"}},
                    {"service_id": "Valve", "desired": {"open": True}},
                ]
            }
            targets = [*fleet.device_ids, raw_target.device_id, doomed.device_id]
            # scheduled a moment ahead, so a target can be deleted before the task runs
            start_at = fleet.runtime.clock.now_ms() + 300
            task = await create(
                fleet, TaskType.UPDATE_DEVICE_SHADOWS, targets, first, schedule_at_ms=start_at
            )
            await registry.devices.delete(fleet.app.project_id, doomed.device_id)
            done = await finished(fleet, task, TaskStatus.PARTIAL_SUCCESS)
            assert (done.progress.success, done.progress.fail) == (3, 1)
            found = await rows(fleet, task)
            assert_failed(found[doomed.device_id], S.FAIL, ErrorCode.DEVICE_NOT_FOUND)
            assert json.loads(found[raw_target.device_id].output or "") == {
                "shadow": [
                    {
                        "service_id": "WaterMeter",
                        "desired": {"temperature": 60, "mode": "eco"},
                        "version": 1,
                    },
                    {"service_id": "Valve", "desired": {"open": True}, "version": 1},
                ]
            }
            # pushed to the online devices as a property set
            pushed = await raw.expect(codec.Publish, timeout_s=5)
            assert "/sys/properties/set/request_id=" in pushed.topic
            assert json.loads(pushed.payload)["services"] == [
                {"service_id": "WaterMeter", "properties": {"temperature": 60, "mode": "eco"}},
                {"service_id": "Valve", "properties": {"open": True}},
            ]
            assert fleet.sim is not None
            sim = fleet.sim
            await wait_until(
                lambda: all(
                    sim.device(d).properties
                    == {"WaterMeter": {"temperature": 60, "mode": "eco"}, "Valve": {"open": True}}
                    for d in fleet.device_ids
                ),
                timeout_s=5,
                message="the simulated devices did not get the desired properties",
            )

            # a null deletes a key, {} clears the service; each change bumps the version
            second = {
                "shadow": [
                    {"service_id": "WaterMeter", "desired": {"mode": None, "level": 3}},
                    {"service_id": "Valve", "desired": {}},
                ]
            }
            task = await create(
                fleet, TaskType.UPDATE_DEVICE_SHADOWS, [raw_target.device_id], second
            )
            await finished(fleet, task, TaskStatus.SUCCESS)
            pushed = await raw.expect(codec.Publish, timeout_s=5)
            assert json.loads(pushed.payload)["services"] == [
                {"service_id": "WaterMeter", "properties": {"level": 3}}
            ]
            device = await registry.devices.find(raw_target.device_id)
            assert device is not None
            async with fleet.runtime.store.read() as conn:
                shadow = {s.service_id: s for s in await shadow_rows.get_shadow(conn, device.pk)}
            assert shadow["WaterMeter"].desired == {"temperature": 60, "level": 3}
            assert shadow["Valve"].desired == {}
            assert (shadow["WaterMeter"].version, shadow["Valve"].version) == (2, 2)
            assert shadow["WaterMeter"].reported is None

            # the device's reports land in `reported`, merged; a service without a shadow not
            report = {
                "services": [
                    {"service_id": "WaterMeter", "properties": {"temperature": 58}},
                    {"service_id": "Unshadowed", "properties": {"x": 1}},
                ]
            }
            topic = f"$oc/devices/{raw_target.device_id}/sys/properties/report"
            raw.send(codec.Publish(topic, json.dumps(report).encode()))
            raw.send(codec.Publish(topic, b'{"services":[{"service_id":"WaterMeter",'
                                          b'"properties":{"level":2}}]}'))  # fmt: skip

            async def reported() -> Any:
                async with fleet.runtime.store.read() as conn:
                    services = await shadow_rows.get_shadow(conn, device.pk)
                by_id = {s.service_id: s for s in services}
                water = by_id["WaterMeter"]
                return water.reported == {"temperature": 58, "level": 2} and by_id

            by_id = await wait_until(reported, timeout_s=5, message="report not recorded")
            assert set(by_id) == {"WaterMeter", "Valve"}
            assert by_id["WaterMeter"].reported_at is not None
            assert by_id["WaterMeter"].version == 2  # reports do not change the version
        finally:
            await raw.close()


# --- freezeDevices, unfreezeDevices, deleteDevices ---------------------------------------


async def test_freeze_unfreeze_and_delete_devices(settings: Settings) -> None:
    # devices that lose their connection stay away for the test's length
    behaviors = ["backoff_min=60,backoff_max=60"]
    async with running_fleet(engine_settings(settings), 3, behaviors=behaviors) as fleet:
        registry = fleet.runtime.registry
        channel = fleet.server.channel
        assert channel is not None
        sim0, sim1, sim2 = fleet.device_ids
        for device_id in fleet.device_ids:
            # connected and recorded so (active), so unfreezing gives OFFLINE, not INACTIVE
            await wait_until(lambda d=device_id: status(fleet, d, DeviceStatus.ONLINE), timeout_s=5)
        gw, gw2 = await register(fleet, NewDevice("gw"), NewDevice("gw2"))
        child, child2 = await register(
            fleet,
            NewDevice("child", gateway_id=gw.device_id),
            NewDevice("child2", gateway_id=gw2.device_id),
        )

        task = await create(fleet, TaskType.FREEZE_DEVICES, [sim0, sim1, gw.device_id])
        await finished(fleet, task, TaskStatus.SUCCESS)
        await wait_until(
            lambda: channel.is_online(sim0) is False and channel.is_online(sim1) is False,
            timeout_s=5,
            message="frozen devices still connected",
        )
        assert fleet.server.presence is not None
        await fleet.server.presence.flush()  # the disconnects: a frozen status stays
        for device_id in (sim0, sim1, gw.device_id):
            assert await status(fleet, device_id, DeviceStatus.FROZEN), device_id
        assert channel.is_online(sim2)

        task = await create(fleet, TaskType.UNFREEZE_DEVICES, [sim0, sim1, sim2, gw.device_id])
        await finished(fleet, task, TaskStatus.SUCCESS)
        for device_id in (sim0, sim1):
            assert await status(fleet, device_id, DeviceStatus.OFFLINE), device_id
        assert await status(fleet, sim2, DeviceStatus.ONLINE)  # was not frozen: unchanged
        assert await status(fleet, gw.device_id, DeviceStatus.INACTIVE)  # never connected

        # what a deleted device leaves behind goes with it
        group = await registry.groups.create(fleet.app.app_id, "doomed")
        await registry.groups.add_members(fleet.app.project_id, group.group_id, [sim2])
        doomed = await registry.devices.find(sim2)
        assert doomed is not None
        async with fleet.runtime.store.write() as conn:
            now = fleet.runtime.clock.now_ms()
            await shadow_rows.merge_desired(conn, [doomed.pk], [("svc", {"a": 1})], now)

        targets = [gw.device_id, gw2.device_id, child2.device_id, sim2, "nosuch"]
        task = await create(fleet, TaskType.DELETE_DEVICES, targets)
        done = await finished(fleet, task, TaskStatus.PARTIAL_SUCCESS)
        assert (done.progress.success, done.progress.fail) == (3, 2)
        found = await rows(fleet, task)
        assert_failed(found[gw.device_id], S.FAIL, ErrorCode.HAS_CHILDREN)
        assert_failed(found["nosuch"], S.FAIL, ErrorCode.DEVICE_NOT_FOUND)
        for device_id in (gw2.device_id, child2.device_id, sim2):
            assert found[device_id].status is S.SUCCESS
            assert await registry.devices.find(device_id) is None, device_id
        for device_id in (gw.device_id, child.device_id):
            assert await registry.devices.find(device_id) is not None, device_id
        await wait_until(
            lambda: channel.is_online(sim2) is False, timeout_s=5, message="still connected"
        )
        async with fleet.runtime.store.read() as conn:
            for table in (group_members, device_shadows):
                left = await conn.execute(select(table).where(table.c.device_pk == doomed.pk))
                assert left.first() is None, table.name


# --- the channel paths the executors use, in broker mode ------------------------------------


async def test_the_broker_channel_posts_and_reports_deliveries(
    mosquitto_broker: MosquittoBroker,
) -> None:
    channel = plain_broker_channel(mosquitto_broker.url, "fleetbatch-types")
    await channel.start()
    try:
        # DELIVERED here is the broker's PUBACK: nobody needs to listen
        message = topics.message("nobody", {"text": "hi"})
        assert await channel.post(message, timeout_s=5) is Delivery.DELIVERED
        delivered = asyncio.Event()
        reply = channel.submit(
            topics.command("nobody", "r-1"), timeout_s=0.3, on_delivered=delivered.set
        )
        await wait_until(delivered.is_set, timeout_s=5, message="on_delivered not called")
        with pytest.raises(NoResponse):
            await reply
    finally:
        await channel.close()
