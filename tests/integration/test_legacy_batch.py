"""Legacy DeviceCmd batch tasks reaching devices: every selector type, S000 and S001 views.

Raw HTTP against an in-process server whose devices are simulated; each task is read back
through the legacy calls and through `TaskService` (what the v5 dialect maps), on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from fleetbatch.clock import SystemClock
from fleetbatch.domain.registry import NewDevice
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import TaskType
from fleetbatch.server import Server
from fleetbatch.settings import Settings
from support.engine import Fleet, check_counters, engine_settings, running_fleet
from support.legacy import BATCH, assert_error, device_cmd, headers, login
from support.waiting import wait_until

S000_KEYS = [
    "appId", "taskId", "taskName", "operator", "taskFrom", "taskType", "status", "startTime",
    "timeout", "totalCnt", "successCnt", "failCnt", "timeoutCnt", "expiredCnt", "completeCnt",
    "progress", "successRate", "param",
]  # fmt: skip
FLEET = 6
FAILING = 5  # the simulator answers this device's commands with result_code 5


async def create(client: httpx.AsyncClient, sent: dict[str, str], body: dict[str, Any]) -> str:
    response = await client.post(f"{BATCH}/tasks", headers=sent, json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["taskID"]
    return task_id


async def complete(
    client: httpx.AsyncClient, sent: dict[str, str], task_id: str, **params: str
) -> dict[str, Any]:
    """The S000 view once the task reads Complete."""

    async def read() -> dict[str, Any] | None:
        response = await client.get(f"{BATCH}/tasks/{task_id}", headers=sent, params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["status"] == "Complete" else None

    view: dict[str, Any] = await wait_until(read, timeout_s=20, message=f"{task_id} Complete")
    return view


async def details(
    client: httpx.AsyncClient, sent: dict[str, str], task_id: str, **params: Any
) -> dict[str, Any]:
    response = await client.get(
        f"{BATCH}/taskDetails", headers=sent, params={"taskId": task_id, **params}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert list(body) == ["totalCount", "pageNo", "pageSize", "taskDetails"]
    return body


def counters(view: dict[str, Any]) -> tuple[int, ...]:
    keys = ("totalCnt", "successCnt", "failCnt", "timeoutCnt", "expiredCnt", "completeCnt")
    return tuple(view[k] for k in (*keys, "progress", "successRate"))


async def prepare(fleet: Fleet) -> dict[str, str]:
    """Groups (one nested) and a location over the simulated fleet."""
    registry = fleet.runtime.registry
    app, ids = fleet.app, fleet.device_ids
    parent = await registry.groups.create(app.app_id, "hall")
    child = await registry.groups.create(app.app_id, "hall-east", parent_group_id=parent.group_id)
    await registry.groups.add_members(app.project_id, parent.group_id, ids[0:2])
    await registry.groups.add_members(app.project_id, child.group_id, [ids[2]])
    for device_id in ids[3:5]:
        await registry.devices.update(app.project_id, device_id, location="floor-7")
    return {"parent": parent.group_id, "child": child.group_id}


async def test_every_selector_type_completes_with_the_right_counters(settings: Settings) -> None:
    behaviors = [f"*_n{FAILING:06d}:fail_rate=1,fail_code=5"]
    async with (
        running_fleet(engine_settings(settings), FLEET, behaviors=behaviors) as fleet,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{fleet.server.http_port}") as client,
    ):
        groups = await prepare(fleet)
        app, ids = fleet.app, fleet.device_ids
        sent = headers(app.app_id, await login(client, app.app_id, app.secret))
        # (param, expected counters: total, success, fail, timeout, expired, complete,
        #  progress, successRate)
        cases: list[tuple[dict[str, Any], tuple[int, ...]]] = [
            (
                {"type": "DeviceList", "deviceList": [ids[0], ids[FAILING], "no-such-device"]},
                (3, 1, 2, 0, 0, 3, 1000, 333),
            ),
            (
                {
                    "type": "DeviceType",
                    "deviceType": "Default",
                    "manufacturerId": "fleetbatch",
                    "model": "simulated",
                },
                (6, 5, 1, 0, 0, 6, 1000, 833),
            ),
            ({"type": "DeviceArea", "deviceLocation": "floor-7"}, (2, 2, 0, 0, 0, 2, 1000, 1000)),
            ({"type": "GroupList", "groupList": ["hall"]}, (3, 3, 0, 0, 0, 3, 1000, 1000)),
            (
                {"type": "GroupIdList", "groupList": [groups["child"]]},
                (1, 1, 0, 0, 0, 1, 1000, 1000),
            ),
            ({"type": "Broadcast"}, (6, 5, 1, 0, 0, 6, 1000, 833)),
        ]
        for number, (param, expected) in enumerate(cases):
            tags = [{"tagName": "case", "tagValue": param["type"]}]
            body = device_cmd(f"selector-{number}", {**param, "maxRetransmit": 0}, tags=tags)
            task_id = await create(client, sent, body)
            view = await complete(client, sent, task_id)
            assert list(view) == S000_KEYS
            assert counters(view) == expected, (param["type"], view)
            assert view["param"] == {**param, "command": body["param"]["command"],
                                     "maxRetransmit": 0}  # fmt: skip
            assert (view["taskType"], view["taskFrom"], view["timeout"]) == (
                "DeviceCmd",
                "Northbound",
                10,
            )
            assert (view["appId"], view["operator"], view["taskName"]) == (
                app.app_id,
                app.app_id,
                f"selector-{number}",
            )
            assert re.fullmatch(r"\d{8}T\d{6}Z", view["startTime"])
            tagged = await client.get(
                f"{BATCH}/tasks/{task_id}", headers=sent, params={"select": "tag"}
            )
            assert tagged.json()["tags"] == tags

            # the same task through the service every dialect maps
            task = await fleet.tasks.get(task_id)
            assert task.task_type is TaskType.CREATE_ASYNC_COMMANDS
            assert task.status in (TaskStatus.SUCCESS, TaskStatus.PARTIAL_SUCCESS)
            assert (task.progress.total, task.progress.success) == expected[:2]
            await check_counters(fleet.runtime, task)


async def test_details_page_with_every_filter_and_at_the_size_limits(settings: Settings) -> None:
    behaviors = [f"*_n{FAILING:06d}:fail_rate=1,fail_code=5"]
    async with (
        running_fleet(engine_settings(settings), FLEET, behaviors=behaviors) as fleet,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{fleet.server.http_port}") as client,
    ):
        app, ids = fleet.app, fleet.device_ids
        sent = headers(app.app_id, await login(client, app.app_id, app.secret))
        task_id = await create(client, sent, device_cmd("details", {"type": "Broadcast"}))
        await complete(client, sent, task_id)

        everything = await details(client, sent, task_id)
        assert (everything["totalCount"], everything["pageNo"], everything["pageSize"]) == (
            6,
            0,
            25,
        )
        items = everything["taskDetails"]
        assert [item["param"]["deviceId"] for item in items] == ids  # creation order
        by_device = {item["param"]["deviceId"]: item for item in items}
        success = by_device[ids[0]]
        assert success["status"] == "Success"
        assert success["error"] is None
        output = json.loads(success["output"])
        assert list(output) == ["requestId", "commandResult"]
        assert re.fullmatch(r"[0-9a-f]{32}", output["requestId"])
        failed = by_device[ids[FAILING]]
        assert failed["status"] == "Fail"
        error = json.loads(failed["error"])
        assert list(error) == ["error_code", "error_desc"]
        assert error["error_code"] == "device.result_code"

        # each status filter
        for wire, count in (("Success", 5), ("Fail", 1), ("Pending", 0), ("WaitResult", 0),
                            ("Timeout", 0)):  # fmt: skip
            page = await details(client, sent, task_id, status=wire)
            assert page["totalCount"] == count, wire
            assert {item["status"] for item in page["taskDetails"]} <= {wire}
            assert len(page["taskDetails"]) == count
        # deviceId and commandId filters
        page = await details(client, sent, task_id, deviceId=ids[3])
        assert [i["param"]["deviceId"] for i in page["taskDetails"]] == [ids[3]]
        command_id = by_device[ids[2]]["param"]["commandId"]
        page = await details(client, sent, task_id, commandId=command_id)
        assert [i["param"]["commandId"] for i in page["taskDetails"]] == [command_id]
        assert page["totalCount"] == 1
        page = await details(client, sent, task_id, deviceId=ids[3], status="Fail")
        assert page["totalCount"] == 0

        # page-size limits: 1 (each page one item, all of them once) and 250
        seen = []
        for page_no in range(FLEET + 1):
            page = await details(client, sent, task_id, pageNo=page_no, pageSize=1)
            assert (page["totalCount"], page["pageNo"], page["pageSize"]) == (6, page_no, 1)
            seen.extend(i["param"]["deviceId"] for i in page["taskDetails"])
        assert seen == ids
        page = await details(client, sent, task_id, pageSize=250)
        assert (page["pageSize"], len(page["taskDetails"])) == (250, 6)
        page = await details(client, sent, task_id, pageNo=1, pageSize=4, status="Success")
        assert (page["totalCount"], len(page["taskDetails"])) == (5, 1)


async def test_an_offline_device_keeps_its_command_pending_and_the_task_running(
    settings: Settings,
) -> None:
    async with (
        running_fleet(engine_settings(settings), 1) as fleet,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{fleet.server.http_port}") as client,
    ):
        registry = fleet.runtime.registry
        product = await registry.products.default(fleet.app.app_id)
        (offline,) = await registry.devices.create_many(
            fleet.app.app_id, product.product_id, [NewDevice("sleeper")]
        )
        app = fleet.app
        sent = headers(app.app_id, await login(client, app.app_id, app.secret))
        listed = {"type": "DeviceList", "deviceList": [fleet.device_ids[0], offline.device_id]}
        task_id = await create(client, sent, device_cmd("held", listed))

        async def one_done() -> dict[str, Any] | None:
            response = await client.get(f"{BATCH}/tasks/{task_id}", headers=sent)
            view: dict[str, Any] = response.json()
            return view if view["successCnt"] == 1 else None

        view = await wait_until(one_done, timeout_s=15, message="the online device answered")
        assert view["status"] == "Running"
        assert (view["completeCnt"], view["progress"], view["successRate"]) == (1, 500, 500)
        pending = await details(client, sent, task_id, status="Pending")
        assert [i["param"]["deviceId"] for i in pending["taskDetails"]] == [offline.device_id]
        assert json.loads(pending["taskDetails"][0]["output"]) == {
            "requestId": None,
            "commandResult": None,
        }
        # a stopped task: the held command never ran, it counts as expired
        await fleet.tasks.stop(task_id)
        view = (await client.get(f"{BATCH}/tasks/{task_id}", headers=sent)).json()
        assert view["status"] == "Complete"
        assert (view["expiredCnt"], view["completeCnt"], view["progress"]) == (1, 1, 1000)
        stopped = (await fleet.tasks.get(task_id)).progress
        assert stopped.count(SubtaskStatus.STOPPED) == 1
        assert_error(
            await client.get(f"{BATCH}/taskDetails", headers=sent, params={"taskId": task_id,
                             "status": "Expired"}), 400, "100022"
        )  # fmt: skip


class MovableClock:
    """The system clock plus an offset the test moves forward (the only time double)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return SystemClock().now_ms() + self.offset_ms


async def test_a_task_past_its_timeout_reads_timeout(settings: Settings) -> None:
    clock = MovableClock()
    async with Server(engine_settings(settings), clock=clock) as server:
        assert server.runtime is not None
        registry = server.runtime.registry
        app = await registry.apps.create("timeouts")
        product = await registry.products.default(app.app_id)
        (device,) = await registry.devices.create_many(
            app.app_id, product.product_id, [NewDevice("asleep")]
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as client:
            sent = headers(app.app_id, await login(client, app.app_id, app.secret))
            listed = {"type": "DeviceList", "deviceList": [device.device_id]}
            task_id = await create(client, sent, device_cmd("late", listed, timeout=10))
            view = (await client.get(f"{BATCH}/tasks/{task_id}", headers=sent)).json()
            assert (view["status"], view["timeout"]) == ("Running", 10)
            clock.offset_ms = 10 * 60 * 1000 + 1000  # the task's 10 minutes have passed

            async def timed_out() -> dict[str, Any] | None:
                response = await client.get(f"{BATCH}/tasks/{task_id}", headers=sent)
                body: dict[str, Any] = response.json()
                return body if body["status"] == "Timeout" else None

            view = await wait_until(timed_out, timeout_s=15, message="the task timed out")
            assert (view["timeoutCnt"], view["completeCnt"], view["successRate"]) == (1, 1, 0)
            page = await details(client, sent, task_id, status="Timeout")
            (item,) = page["taskDetails"]
            assert json.loads(item["error"])["error_code"] == "task.timeout"
            assert (await server.runtime.tasks.get(task_id)).status is TaskStatus.TIMEOUT
