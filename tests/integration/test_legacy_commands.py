"""Legacy single-device commands (v1.4.0) over raw HTTP, on the batch engine's path."""

from __future__ import annotations

from typing import Any

import httpx

from fleetbatch.domain.registry import NewDevice
from fleetbatch.domain.tasks import TaskType
from fleetbatch.engine.device_commands import SOURCE
from fleetbatch.settings import Settings
from support.engine import engine_settings, running_fleet
from support.legacy import BATCH, CMD, assert_error, device_cmd, headers, login
from support.waiting import wait_until

COMMAND = {"serviceId": "svc", "method": "reboot", "paras": {"delay": 1}}
RECORD_KEYS = [
    "commandId", "appId", "deviceId", "command", "callbackUrl", "expireTime", "status",
    "result", "creationTime", "executeTime", "platformIssuedTime", "deliveredTime",
    "issuedTimes", "maxRetransmit",
]  # fmt: skip


async def test_commands_are_sent_held_canceled_and_paged(settings: Settings) -> None:
    async with (
        running_fleet(engine_settings(settings), 1) as fleet,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{fleet.server.http_port}") as client,
    ):
        app, online = fleet.app, fleet.device_ids[0]
        registry = fleet.runtime.registry
        product = await registry.products.default(app.app_id)
        (offline,) = await registry.devices.create_many(
            app.app_id, product.product_id, [NewDevice("sleeper")]
        )
        sent = headers(app.app_id, await login(client, app.app_id, app.secret))
        commands = f"{CMD}/deviceCommands"

        created = await client.post(
            commands, headers=sent, json={"deviceId": online, "command": COMMAND}
        )
        assert created.status_code == 201, created.text
        record = created.json()
        assert list(record) == RECORD_KEYS
        assert (record["deviceId"], record["command"], record["expireTime"]) == (
            online,
            COMMAND,
            172800,
        )
        command_id = record["commandId"]

        async def finished() -> dict[str, Any] | None:
            page = await client.get(commands, headers=sent, params={"deviceId": online})
            found: dict[str, Any] = page.json()["data"][0]
            return found if found["status"] == "SUCCESSFUL" else None

        done = await wait_until(finished, timeout_s=15, message="the command succeeded")
        assert done["commandId"] == command_id
        assert done["result"]["resultCode"] == "SUCCESSFUL"
        assert done["issuedTimes"] == 1
        assert done["executeTime"] is not None
        # the same engine path as a batch subtask, and never a batch task
        task = await fleet.tasks.get(command_id)
        assert (task.task_type, task.source) == (TaskType.CREATE_ASYNC_COMMANDS, SOURCE)
        assert_error(await client.get(f"{BATCH}/tasks/{command_id}", headers=sent), 404, "105005")

        # an offline device's command is held, then canceled; a sent one cannot be
        held = await client.post(
            commands,
            headers=sent,
            json={"deviceId": offline.device_id, "command": COMMAND, "expireTime": 600,
                  "callbackUrl": None, "maxRetransmit": 1},
        )  # fmt: skip
        assert held.status_code == 201
        assert held.json()["status"] == "PENDING"
        held_id = held.json()["commandId"]
        cancel = await client.put(
            f"{commands}/{held_id}", headers=sent, json={"status": "CANCELED"}
        )
        assert cancel.status_code == 200, cancel.text
        assert cancel.json()["status"] == "CANCELED"
        again = await client.put(f"{commands}/{held_id}", headers=sent, json={"status": "CANCELED"})
        assert_error(again, 400, "100022")
        done_cancel = await client.put(
            f"{commands}/{command_id}", headers=sent, json={"status": "CANCELED"}
        )
        assert_error(done_cancel, 400, "100022")

        # expireTime 0: sent at once, an offline device fails it
        now = await client.post(
            commands,
            headers=sent,
            json={"deviceId": offline.device_id, "command": COMMAND, "expireTime": 0},
        )

        async def failed() -> bool:
            page = await client.get(commands, headers=sent, params={"deviceId": offline.device_id})
            return any(c["commandId"] == now.json()["commandId"] and c["status"] == "FAILED"
                       for c in page.json()["data"])  # fmt: skip

        await wait_until(failed, timeout_s=15, message="the unheld command failed")

        # a cancel task cancels every held command of the device
        for _ in range(2):
            response = await client.post(
                commands, headers=sent, json={"deviceId": offline.device_id, "command": COMMAND}
            )
            assert response.json()["status"] == "PENDING"
        cancel_task = await client.post(
            f"{CMD}/deviceCommandCancelTasks", headers=sent, json={"deviceId": offline.device_id}
        )
        assert cancel_task.status_code == 201, cancel_task.text
        body = cancel_task.json()
        assert (body["deviceId"], body["totalCount"]) == (offline.device_id, 2)
        assert {c["status"] for c in body["deviceCommands"]} == {"CANCELED"}
        listed = await client.get(
            f"{CMD}/deviceCommandCancelTasks?&deviceId={offline.device_id}", headers=sent
        )
        assert listed.status_code == 200, listed.text
        assert listed.json()["pagination"]["totalSize"] == 1
        (kept,) = listed.json()["data"]
        assert kept == {**body, "deviceCommands": kept["deviceCommands"]}
        assert [c["commandId"] for c in kept["deviceCommands"]] == [
            c["commandId"] for c in body["deviceCommands"]
        ]
        by_id = await client.get(
            f"{CMD}/deviceCommandCancelTasks", headers=sent, params={"taskId": body["taskId"]}
        )
        assert by_id.json()["pagination"]["totalSize"] == 1

        # paging: newest first, page sizes 1 and 1000, time filters
        page = (await client.get(commands, headers=sent, params={"pageSize": 1})).json()
        assert page["pagination"] == {"pageNo": 0, "pageSize": 1, "totalSize": 5}
        assert len(page["data"]) == 1
        everything = (await client.get(f"{commands}?&pageNo=0&pageSize=1000", headers=sent)).json()
        ids = [c["commandId"] for c in everything["data"]]
        assert len(ids) == 5
        assert ids == sorted(ids, reverse=True)
        assert ids[-1] == command_id
        later = {"startTime": "20991231T000000Z"}
        assert (await client.get(commands, headers=sent, params=later)).json()["data"] == []

        # batch tasks do not count the app's commands as unfinished tasks
        listed = {"type": "DeviceList", "deviceList": [online]}
        batch = await client.post(f"{BATCH}/tasks", headers=sent, json=device_cmd("b", listed))
        assert batch.status_code == 200, batch.text
        assert "taskID" in batch.json()


async def test_command_calls_refuse_bad_input(settings: Settings) -> None:
    async with (
        running_fleet(engine_settings(settings), 1, simulate=False) as fleet,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{fleet.server.http_port}") as client,
    ):
        app, device_id = fleet.app, fleet.device_ids[0]
        sent = headers(app.app_id, await login(client, app.app_id, app.secret))
        commands = f"{CMD}/deviceCommands"
        for body in (
            {},
            {"deviceId": device_id},
            {"deviceId": device_id, "command": {**COMMAND, "serviceId": ""}},
            {"deviceId": device_id, "command": COMMAND, "expireTime": -1},
            {"deviceId": device_id, "command": COMMAND, "expireTime": 172801},
            {"deviceId": device_id, "command": COMMAND, "maxRetransmit": 4},
            {"deviceId": device_id, "command": COMMAND, "callbackUrl": "mailto:x"},
        ):
            assert_error(await client.post(commands, headers=sent, json=body), 400, "100022")
        unknown = {"deviceId": "nobody", "command": COMMAND}
        assert_error(await client.post(commands, headers=sent, json=unknown), 404, "100403")
        for params in ({"pageSize": "0"}, {"pageSize": "1001"}, {"pageNo": "-1"},
                       {"startTime": "yesterday"}):  # fmt: skip
            assert_error(await client.get(commands, headers=sent, params=params), 400, "100022")
        put = await client.put(f"{commands}/{'0' * 24}", headers=sent, json={"status": "CANCELED"})
        assert_error(put, 404, "100022")
        put = await client.put(f"{commands}/{'0' * 24}", headers=sent, json={"status": "SENT"})
        assert_error(put, 400, "100022")
        cancel_tasks = f"{CMD}/deviceCommandCancelTasks"
        for body in ({}, {"deviceId": ""}, {"deviceId": 7}, {"device_id": device_id},
                     {"deviceId": "d" * 65}):  # fmt: skip
            assert_error(await client.post(cancel_tasks, headers=sent, json=body), 400, "100022")
        assert_error(await client.get(commands), 403, "1010005")
        listed = await fleet.tasks.list_tasks(app.project_id)
        assert listed.count == 0
