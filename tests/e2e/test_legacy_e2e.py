"""The legacy dialect end to end: `fleetbatch serve` as a process, simulated devices, our
legacy SDK over HTTPS (trusting the data dir's CA) and raw HTTP in the sloppy forms the
original SDKs send; each task read back through the service layer of another process.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from fleetbatch.domain.registry import NewDevice
from fleetbatch.domain.tasks import TaskType
from fleetbatch.runtime import Runtime
from fleetbatch.sdk.legacy import (
    Authentication,
    AuthOutDTO,
    AuthRefreshInDTO,
    BatchProcess,
    BatchTaskCreateInDTO,
    CommandDTO,
    CommandDTOV4,
    CreateDeviceCmdCancelTaskInDTO,
    DeviceUpgrade,
    NorthApiClient,
    NorthApiException,
    ObjectNode,
    PostDeviceCommandInDTO,
    QueryDeviceCmdCancelTaskInDTO,
    QueryDeviceCommandInDTO,
    QueryOneTaskOutDTO,
    QueryTaskDetailsInDTO,
    QueryTaskDetailsOutDTO,
    QueryUpgradeSubTaskInDTO,
    SignalDelivery,
    TagDTO2,
    UpdateDeviceCommandInDTO,
    set_default_client,
)
from fleetbatch.settings import Settings
from fleetbatch.sim import FleetDevice, Simulator
from fleetbatch.tls import ensure_tls_files
from support import LOOPBACK
from support.serve import start_healthy, stop_process
from support.waiting import wait_until

T = TypeVar("T")
FLEET = 5
FAILING = 4


def database_flags(settings: Settings) -> list[str]:
    return [] if settings.database is None else ["--database", settings.database]


async def call(function: Callable[..., T], *args: Any) -> T:
    """A blocking SDK call off the loop the simulated devices run on."""
    return await asyncio.to_thread(function, *args)


async def test_sdk_and_raw_http_drive_batch_tasks_on_a_served_fleet(
    settings: Settings, tmp_path: Path
) -> None:
    async with await Runtime.open(settings) as runtime:
        registry = runtime.registry
        app = await registry.apps.create("legacy-e2e")
        product = await registry.products.default(app.app_id)
        devices = await registry.devices.create_many(
            app.app_id, product.product_id, [NewDevice(f"n{i:06d}") for i in range(FLEET)]
        )
        ids = [d.device_id for d in devices]
        group = await registry.groups.create(app.app_id, "line-1")
        await registry.groups.add_members(app.project_id, group.group_id, ids[:2])
        await registry.devices.update(app.project_id, ids[2], location="dock")

    server = start_healthy(settings.data_dir, *database_flags(settings))
    ca = str(settings.data_dir / "tls" / "ca.pem")
    client = NorthApiClient(LOOPBACK, server.https_port, app.app_id, app.secret, verify=ca)
    fleet = [FleetDevice(d.device_id, d.secret) for d in devices]
    behaviors = [f"*_n{FAILING:06d}:fail_rate=1,fail_code=3"]
    try:
        async with Simulator(
            fleet, f"mqtt://{LOOPBACK}:{server.mqtt_port}", behaviors=behaviors
        ) as sim:
            await sim.wait_connected(timeout_s=30)
            auth = Authentication(client)
            token = json.loads(await call(auth.getAuthToken))["accessToken"]
            # the legacy SDKs present a client certificate: it is never asked for, never refused
            own = await asyncio.to_thread(ensure_tls_files, Settings(data_dir=tmp_path / "app"))
            with NorthApiClient(
                LOOPBACK, server.https_port, app.app_id, app.secret, verify=ca,
                cert=(str(own.cert), str(own.key)),
            ) as with_cert:  # fmt: skip
                assert json.loads(await call(Authentication(with_cert).getAuthToken))["scope"]
            batch = BatchProcess(client)
            command = CommandDTO(serviceId="svc", method="reboot", paras={"on": True})
            cases: list[tuple[ObjectNode, int, int]] = [
                (ObjectNode(type="DeviceList", deviceList=ids[:3]), 3, 3),
                (
                    ObjectNode(
                        type="DeviceType",
                        deviceType="Default",
                        manufacturerId="fleetbatch",
                        model="simulated",
                    ),
                    FLEET,
                    FLEET - 1,
                ),
                (ObjectNode(type="DeviceArea", deviceLocation="dock"), 1, 1),
                (ObjectNode(type="GroupList", groupList=["line-1"]), 2, 2),
                (ObjectNode(type="GroupIdList", groupList=[group.group_id]), 2, 2),
                (ObjectNode(type="Broadcast"), FLEET, FLEET - 1),
            ]
            task_ids = []
            for number, (param, total, success) in enumerate(cases):
                param.command = command
                dto = BatchTaskCreateInDTO(
                    taskName=f"sdk-{number}",
                    taskType="DeviceCmd",
                    timeout=10,
                    param=param,
                    tags=[TagDTO2(tagName="n", tagValue=str(number))],
                )
                created = json.loads(await call(batch.createBatchTask, dto, token))
                task_id = created["taskID"]
                task_ids.append(task_id)

                async def complete(task_id: str = task_id) -> QueryOneTaskOutDTO | None:
                    text = await call(batch.queryOneTask, task_id, "tag", None, token)
                    view = QueryOneTaskOutDTO.from_json(text)
                    return view if view.status == "Complete" else None

                view = await wait_until(complete, timeout_s=30, message=f"{param.type} Complete")
                assert (view.totalCnt, view.successCnt, view.completeCnt) == (total, success, total)
                assert view.failCnt == total - success
                assert view.successRate == success * 1000 // total
                assert view.progress == 1000
                assert view.tags == [{"tagName": "n", "tagValue": str(number)}]
                for size in (1, 250):
                    query = QueryTaskDetailsInDTO(taskId=task_id, pageNo=0, pageSize=size)
                    page = QueryTaskDetailsOutDTO.from_json(
                        await call(batch.queryTaskDetails, query, token)
                    )
                    assert page.totalCount == total
                    assert len(page.taskDetails or []) == min(size, total)
                for status, count in (("Success", success), ("Fail", total - success)):
                    query = QueryTaskDetailsInDTO(taskId=task_id, status=status, pageSize=250)
                    page = QueryTaskDetailsOutDTO.from_json(
                        await call(batch.queryTaskDetails, query, token)
                    )
                    assert page.totalCount == count, (param.type, status)

            # errors raise with the HTTP status, error_code and error_desc
            dto = BatchTaskCreateInDTO(
                taskName="sdk-0",
                taskType="DeviceCmd",
                timeout=10,
                param=ObjectNode(type="Broadcast", command=command),
            )
            with pytest.raises(NorthApiException) as raised:
                await call(batch.createBatchTask, dto, token)
            assert (raised.value.httpStatus, raised.value.error_code) == (200, "105002")
            assert raised.value.error_desc == "The batch task name exists."
            with pytest.raises(NorthApiException) as raised:
                await call(batch.queryOneTask, task_ids[0], None, None, "not-a-token")
            assert (raised.value.httpStatus, raised.value.error_code) == (403, "1010005")

            await sdk_commands_round(client, app.app_id, app.secret, ids[0], server.https_port)

            # raw HTTP, in the forms the legacy SDKs send, on both listeners
            for base, verify in ((server.https_url, ca), (server.http_url, True)):
                await raw_http_round(base, verify, app.app_id, app.secret, ids)
    finally:
        client.close()
        stop_process(server)

    # the same tasks, read by another process through the service every dialect maps
    async with await Runtime.open(settings) as runtime:
        for task_id in task_ids:
            task = await runtime.tasks.get(task_id)
            assert task.task_type is TaskType.CREATE_ASYNC_COMMANDS
            assert task.source == "legacy"
            assert task.finished


async def sdk_commands_round(
    client: NorthApiClient, app_id: str, secret: str, device_id: str, https_port: int
) -> None:
    """SignalDelivery, token refresh, the clientInfo login and an error of DeviceUpgrade."""
    # the original's way: a clientInfo dict, certificate not checked; it becomes the default
    info = {"platformIp": LOOPBACK, "platformPort": str(https_port), "appId": app_id,
            "secret": secret}  # fmt: skip
    login = AuthOutDTO.from_json(await call(Authentication().getAuthToken, info))
    assert (login.tokenType, login.expiresIn, login.scope) == ("bearer", 3600, "default")
    try:
        refreshed = AuthOutDTO.from_json(
            await call(
                Authentication().refreshAuthToken,
                AuthRefreshInDTO(appId=app_id, secret=secret, refreshToken=login.refreshToken),
            )
        )
        token = refreshed.accessToken
        assert token
        signal = SignalDelivery()  # the default client the login set
        command = PostDeviceCommandInDTO(
            deviceId=device_id, command=CommandDTOV4(serviceId="svc", method="ping", paras={})
        )
        record = json.loads(await call(signal.postDeviceCommand, command, None, token))
        assert record["deviceId"] == device_id

        async def successful() -> bool:
            query = QueryDeviceCommandInDTO(deviceId=device_id, pageNo=0, pageSize=10)
            page = json.loads(await call(signal.queryDeviceCommand, query, token))
            return any(
                c["commandId"] == record["commandId"] and c["status"] == "SUCCESSFUL"
                for c in page["data"]
            )

        await wait_until(successful, timeout_s=30, message="the SDK's command succeeded")
        cancel = UpdateDeviceCommandInDTO(status="CANCELED")
        with pytest.raises(NorthApiException) as raised:
            await call(signal.updateDeviceCommand, cancel, record["commandId"], None, token)
        assert (raised.value.httpStatus, raised.value.error_code) == (400, "100022")
        cancel_task = CreateDeviceCmdCancelTaskInDTO(deviceId=device_id)
        canceled = json.loads(
            await call(signal.createDeviceCmdCancelTask, cancel_task, None, token)
        )
        assert canceled["totalCount"] == 0
        listed_query = QueryDeviceCmdCancelTaskInDTO(deviceId=device_id, pageNo=0, pageSize=5)
        listed = json.loads(await call(signal.queryDeviceCmdCancelTask, listed_query, token))
        assert [t["taskId"] for t in listed["data"]] == [canceled["taskId"]]
        # the upgrade server side comes with its own issue: the call reaches it and fails
        query_sub = QueryUpgradeSubTaskInDTO(pageNo=0, pageSize=10)
        with pytest.raises(NorthApiException) as raised:
            await call(DeviceUpgrade(client).queryUpgradeSubTask, query_sub, "0" * 24, token)
        assert raised.value.httpStatus == 404
        # logout ends the token: the next call is refused as the gateway refuses it
        await call(Authentication().logoutAuthToken, token)
        with pytest.raises(NorthApiException) as raised:
            await call(signal.queryDeviceCommand, QueryDeviceCommandInDTO(), token)
        assert (raised.value.httpStatus, raised.value.error_code) == (403, "1010005")
    finally:
        set_default_client(None)


async def raw_http_round(
    base: str, verify: str | bool, app_id: str, secret: str, ids: list[str]
) -> None:
    trust = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
    async with httpx.AsyncClient(base_url=base, verify=trust, timeout=10) as client:
        login = await client.post(
            "/iocm/app/sec/v1.1.0/login",
            content=f"appId={app_id}&secret={secret}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        token = login.json()["accessToken"]
        sent = {
            "app_key": app_id,
            "Authorization": f"bearer {token}",  # lower case, as NODE sends it
            "Content-Type": "application/json",  # on GETs too, as PY sends it
        }
        body = {
            "appId": None,
            "taskName": f"raw-{base[:5]}",
            "taskType": "DeviceCmd",
            "timeout": 10,
            "param": {
                "type": "DeviceList",
                "deviceList": ids[:2],
                "deviceType": None,
                "groupList": None,
                "command": {"serviceId": "svc", "method": "ping", "paras": None},
                "callbackUrl": None,
                "maxRetransmit": None,
            },
            "tags": None,
        }
        created = await client.post("/iocm/app/batchtask/v1.1.0/tasks/", headers=sent, json=body)
        assert created.status_code == 200, created.text
        task_id = created.json()["taskID"]

        async def complete() -> dict[str, Any] | None:
            # a bare `?` and no parameters at all
            response = await client.get(
                f"/iocm/app/batchtask/v1.1.0/tasks/{task_id}?", headers=sent
            )
            view: dict[str, Any] = response.json()
            return view if view.get("status") == "Complete" else None

        view = await wait_until(complete, timeout_s=30, message="raw task Complete")
        assert (view["totalCnt"], view["successCnt"]) == (2, 2)
        assert "tags" not in view
        # `?&` and unencoded values, as PY builds its query strings
        url = f"/iocm/app/batchtask/v1.1.0/taskDetails?&taskId={task_id}&pageNo=0&pageSize=250"
        page = await client.get(url, headers=sent)
        assert page.status_code == 200, page.text
        assert page.json()["totalCount"] == 2
