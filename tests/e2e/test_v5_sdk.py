"""The official huaweicloudsdkiotda client against `fleetbatch serve`, unchanged but for the
endpoint, AK/SK and project id, with a simulated fleet answering over MQTT (`fleetbatch sim`).

Batch tasks of every type the engine runs, watched to the end; details paged by marker and
by offset, filtered by status and by target; stop, retry, delete; plain and derived signing;
IoTDA error codes carried by the SDK's exceptions; another project's objects stay invisible.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.formdata import FormFile
from huaweicloudsdkcore.region.region import Region
from huaweicloudsdkiotda.v5 import (
    AddDevice,
    AddDeviceGroupDTO,
    AddDeviceGroupRequest,
    AddDeviceRequest,
    AddProduct,
    AsyncDeviceCommandRequest,
    AuthInfo,
    BatchTargets,
    CountAsyncHistoryCommandsRequest,
    CreateAsyncCommandRequest,
    CreateBatchTask,
    CreateBatchTaskRequest,
    CreateCommandRequest,
    CreateMessageRequest,
    CreateOrDeleteDeviceInGroupRequest,
    CreateProductRequest,
    DeleteBatchTaskFileRequest,
    DeleteBatchTaskRequest,
    DeleteDeviceGroupRequest,
    DeleteDeviceRequest,
    DeleteProductRequest,
    DeviceCommandRequest,
    DeviceMessageRequest,
    FreezeDeviceRequest,
    InitialDesired,
    IoTDAClient,
    ListAsyncCommandsRequest,
    ListAsyncHistoryCommandsRequest,
    ListBatchTaskFilesRequest,
    ListBatchTasksRequest,
    ListDeviceGroupsRequest,
    ListDeviceMessagesRequest,
    ListDevicesRequest,
    ListProductsRequest,
    ResetDeviceSecret,
    ResetDeviceSecretRequest,
    RetryBatchTaskRequest,
    ServiceCapability,
    ServiceProperty,
    ShowAsyncDeviceCommandRequest,
    ShowBatchTaskRequest,
    ShowDeviceGroupRequest,
    ShowDeviceMessageRequest,
    ShowDeviceRequest,
    ShowDeviceShadowRequest,
    ShowDevicesInGroupRequest,
    ShowProductRequest,
    StopBatchTaskRequest,
    TaskPolicy,
    UnfreezeDeviceRequest,
    UpdateDesired,
    UpdateDesireds,
    UpdateDevice,
    UpdateDeviceGroupDTO,
    UpdateDeviceGroupRequest,
    UpdateDeviceRequest,
    UpdateDeviceShadowDesiredDataRequest,
    UpdateProduct,
    UpdateProductRequest,
    UploadBatchTaskFileRequest,
    UploadBatchTaskFileRequestBody,
)

from fleetbatch.devices import codec
from fleetbatch.settings import Settings
from support import LOOPBACK
from support.cli import FLEETBATCH, run_cli, run_cli_json, store_flags
from support.mqtt_device import RawDevice
from support.mqtt_device import credentials as mqtt_credentials
from support.serve import ServeProcess, start_healthy, stop_process
from support.waiting import wait_until_sync

FLEET_SIZE = 6
WAIT_S = 30
FINISHED = {"Success", "Fail", "PartialSuccess", "Stopped"}


@dataclass
class V5Fleet:
    """A server, a simulated fleet, and the credentials an application would be given."""

    server: ServeProcess
    project_id: str
    access_key: str
    secret_key: str
    device_ids: list[str]
    group_id: str
    settings: Settings
    app_id: str = ""
    app_secret: str = ""

    def client(self, *, derived: bool = False, secret_key: str | None = None) -> IoTDAClient:
        """An SDK client as Huawei's samples build one (derived: the enterprise-edition way)."""
        credentials = BasicCredentials(
            self.access_key, secret_key or self.secret_key, self.project_id
        )
        builder = IoTDAClient.new_builder()
        if derived:
            credentials = credentials.with_derived_predicate(
                BasicCredentials.get_default_derived_predicate()
            )
            builder = builder.with_region(Region("cn-north-4", self.server.http_url))
        else:
            builder = builder.with_endpoint(self.server.http_url)
        return builder.with_credentials(credentials).build()

    @property
    def failing(self) -> str:
        return self.device_ids[1]


def wait_online(settings: Settings, app_id: str, count: int) -> None:
    flags = store_flags(settings)

    def online() -> bool:
        listed = run_cli_json("devices", "list", *flags, "--app", app_id, "--status", "ONLINE")
        return bool(listed["count"] == count)

    wait_until_sync(online, timeout_s=WAIT_S, interval_s=0.2, message="fleet online")


@contextmanager
def running_fleet(settings: Settings, tmp_path: Path) -> Iterator[V5Fleet]:
    flags = store_flags(settings)
    app = run_cli_json("admin", "create-app", *flags, "--name", "v5sdk")
    fleet_path = tmp_path / "fleet.json"
    created = run_cli_json(
        "admin", "create-devices", *flags, "--app", app["app_id"], "--count", str(FLEET_SIZE),
        "--group", "all", "--out", str(fleet_path),
    )  # fmt: skip
    device_ids = [d["device_id"] for d in json.loads(fleet_path.read_text())["devices"]]
    db_flags = [] if settings.database is None else ["--database", settings.database]
    server = start_healthy(settings.data_dir, *db_flags)
    sim = subprocess.Popen(
        [
            *FLEETBATCH, "sim", "--fleet", str(fleet_path),
            "--mqtt", f"mqtt://{LOOPBACK}:{server.mqtt_port}",
            "--behavior", f"{device_ids[1]}:fail_rate=1,fail_code=5", "--json",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_online(settings, app["app_id"], FLEET_SIZE)
        yield V5Fleet(
            server, app["project_id"], app["access_key"], app["secret_key"],
            device_ids, created["group_id"], settings, app["app_id"], app["secret"],
        )  # fmt: skip
    finally:
        sim.kill()
        sim.communicate(timeout=WAIT_S)
        stop_process(server)


def create(client: IoTDAClient, task_type: str, **fields: Any) -> Any:
    body = CreateBatchTask(task_name=f"t_{task_type}", task_type=task_type, **fields)
    return client.create_batch_task(CreateBatchTaskRequest(body=body))


def show(client: IoTDAClient, task_id: str, **query: Any) -> Any:
    return client.show_batch_task(ShowBatchTaskRequest(task_id=task_id, **query))


def wait_finished(client: IoTDAClient, task_id: str) -> Any:
    last: list[Any] = []

    def finished() -> Any:
        last.append(show(client, task_id).batchtask)
        return last[-1] if last[-1].status in FINISHED else None

    return wait_until_sync(
        finished, timeout_s=WAIT_S, interval_s=0.1, message=lambda: f"task finished: {last[-1:]}"
    )


def refused(call: Any, *args: Any, **kwargs: Any) -> ClientRequestException:
    with pytest.raises(ClientRequestException) as caught:
        call(*args, **kwargs)
    assert caught.value.request_id, "every error carries X-Request-Id"
    return caught.value


def assert_visible_to_legacy(fleet: V5Fleet, task_id: str) -> None:
    """The same task through the OceanConnect dialect (a command task is a DeviceCmd)."""
    from fleetbatch.sdk.legacy import (
        Authentication,
        BatchProcess,
        NorthApiClient,
        QueryOneTaskOutDTO,
    )

    ca = str(fleet.settings.data_dir / "tls" / "ca.pem")
    north = NorthApiClient(
        LOOPBACK, fleet.server.https_port, fleet.app_id, fleet.app_secret, verify=ca
    )
    token = json.loads(Authentication(north).getAuthToken())["accessToken"]
    view = QueryOneTaskOutDTO.from_json(
        BatchProcess(north).queryOneTask(task_id, None, None, token)
    )
    assert (view.taskId, view.taskType, view.status) == (task_id, "DeviceCmd", "Complete")
    assert (view.totalCnt, view.successCnt, view.failCnt) == (FLEET_SIZE, FLEET_SIZE - 1, 1)


DOCUMENTS: dict[str, dict[str, Any]] = {
    "createCommands": {"service_id": "Reboot", "command_name": "reboot", "paras": {"delay": 5}},
    "createAsyncCommands": {
        "service_id": "Reboot",
        "command_name": "reboot",
        "paras": {"delay": 5},
        "send_strategy": "immediately",
    },
    "createMessages": {"message": "hello", "name": "greeting"},
    "updateDeviceShadows": {"shadow": [{"service_id": "Meter", "desired": {"limit": 60}}]},
}


def test_batch_tasks_of_every_type_through_the_sdk(settings: Settings, tmp_path: Path) -> None:
    with running_fleet(settings, tmp_path) as fleet:
        client = fleet.client()
        targets = fleet.device_ids
        for task_type, document in DOCUMENTS.items():
            created = create(client, task_type, targets=targets, document=document)
            assert created.status_code == 201
            assert len(created.task_id) == 24
            assert int(created.task_id, 16) >= 0
            assert created.task_id == created.task_id.lower()
            assert created.targets == targets
            assert created.task_progress.total == FLEET_SIZE
            done = wait_finished(client, created.task_id)
            progress = done.task_progress
            assert progress.total == FLEET_SIZE
            assert progress.success + progress.fail == FLEET_SIZE, (task_type, progress)
            assert progress.waitting == progress.processing == progress.stopped == 0
            if task_type in ("createCommands", "createAsyncCommands"):
                assert (progress.success, progress.fail) == (FLEET_SIZE - 1, 1)
                assert done.status == "PartialSuccess"
                failed = show(client, created.task_id, task_detail_status="Fail")
                assert [d.target for d in failed.task_details] == [fleet.failing]
                assert failed.task_details[0].status == "Fail"
                assert failed.task_details[0].error.error_code
                assert failed.page.count == 1
                if task_type == "createCommands":
                    assert_visible_to_legacy(fleet, created.task_id)
            else:
                assert done.status == "Success", (task_type, progress)
        # registry operations: freeze, unfreeze, delete one device
        victim = [targets[-1]]
        for task_type in ("freezeDevices", "unfreezeDevices", "deleteDevices"):
            created = create(client, task_type, targets=victim)
            done = wait_finished(client, created.task_id)
            assert done.status == "Success", (task_type, done.task_progress)
        # group members, through targets_filter
        by_group = create(
            client,
            "createCommands",
            targets_filter={"group_ids": [fleet.group_id]},
            document=DOCUMENTS["createCommands"],
        )
        assert by_group.targets is None
        assert by_group.targets_filter == {"group_ids": [fleet.group_id]}
        done = wait_finished(client, by_group.task_id)
        # the deleted device left the group
        assert done.task_progress.total == FLEET_SIZE - 1
        listed = client.list_batch_tasks(ListBatchTasksRequest(task_type="createCommands"))
        assert listed.page.count == 2
        assert [t.task_id for t in listed.batchtasks] == [
            by_group.task_id,
            listed.batchtasks[1].task_id,
        ]
        partial = client.list_batch_tasks(
            ListBatchTasksRequest(task_type="createCommands", status="PartialSuccess")
        )
        assert partial.page.count == 2
        none = client.list_batch_tasks(
            ListBatchTasksRequest(task_type="createCommands", status="Stopped")
        )
        assert none.page.count == 0
        assert none.batchtasks == []


def test_details_paging_stop_retry_delete_through_the_sdk(
    settings: Settings, tmp_path: Path
) -> None:
    with running_fleet(settings, tmp_path) as fleet:
        client = fleet.client(derived=True)
        task = create(
            client, "createCommands", targets=fleet.device_ids, document=DOCUMENTS["createCommands"]
        )
        done = wait_finished(client, task.task_id)
        assert done.status == "PartialSuccess"
        # by marker, two at a time: every target once, newest first
        seen: list[str] = []
        marker = None
        while True:
            page = show(client, task.task_id, limit=2, marker=marker)
            assert page.page.count == FLEET_SIZE
            if not page.task_details:
                break
            seen += [d.target for d in page.task_details]
            marker = page.page.marker
            assert marker is not None
            assert len(marker) == 24
        assert sorted(seen) == sorted(fleet.device_ids)
        assert seen == list(reversed(fleet.device_ids))
        # by offset: the same order
        assert [d.target for d in show(client, task.task_id, limit=2, offset=2).task_details] == (
            seen[2:4]
        )
        # by target
        one = show(client, task.task_id, target=fleet.failing)
        assert [(d.target, d.status) for d in one.task_details] == [(fleet.failing, "Fail")]
        assert one.page.count == 1
        assert show(client, task.task_id, task_detail_status="Waitting").page.count == 0

        # retry the failed one: it fails again, the task ends as it was
        retried = client.retry_batch_task(
            RetryBatchTaskRequest(task_id=task.task_id, body=BatchTargets(targets=[fleet.failing]))
        )
        assert [(r.target, r.status) for r in retried.targets] == [(fleet.failing, "success")]
        again = wait_finished(client, task.task_id)
        assert again.task_progress.fail == 1
        assert again.task_progress.success == FLEET_SIZE - 1

        # a task scheduled for tomorrow waits; stopping it stops every subtask
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")
        later = create(
            client,
            "createMessages",
            targets=fleet.device_ids[:3],
            document=DOCUMENTS["createMessages"],
            task_policy=TaskPolicy(schedule_time=tomorrow, retry_count=2, retry_interval=10),
        )
        assert later.status == "Waitting"
        assert later.task_policy.schedule_time == tomorrow
        assert later.task_policy.retry_count == 2
        assert later.task_policy.retry_interval == 10
        waiting = show(client, later.task_id, task_detail_status="Waitting")
        assert waiting.page.count == 3
        assert {d.status for d in waiting.task_details} == {"Waitting"}
        # the task runs, so it cannot be deleted yet
        error = refused(client.delete_batch_task, DeleteBatchTaskRequest(task_id=later.task_id))
        assert (error.status_code, error.error_code) == (400, "IOTDA.000006")
        client.stop_batch_task(StopBatchTaskRequest(task_id=later.task_id))
        stopped = show(client, later.task_id)
        assert stopped.batchtask.status == "Stopped"
        assert stopped.batchtask.task_progress.stopped == 3
        # retrying a stopped task runs its subtasks now
        client.retry_batch_task(RetryBatchTaskRequest(task_id=later.task_id))
        assert wait_finished(client, later.task_id).status == "Success"

        deleted = client.delete_batch_task(DeleteBatchTaskRequest(task_id=later.task_id))
        assert deleted.status_code == 204
        gone = refused(client.show_batch_task, ShowBatchTaskRequest(task_id=later.task_id))
        assert gone.status_code == 404


def test_signing_errors_and_project_scope_through_the_sdk(
    settings: Settings, tmp_path: Path
) -> None:
    with running_fleet(settings, tmp_path) as fleet:
        client = fleet.client()
        task = create(
            client, "createMessages", targets=fleet.device_ids, document=DOCUMENTS["createMessages"]
        )
        # a wrong SK, plain or derived: 401 with IoTDA's code
        # (the last character is changed, never kept: a key ending in "x" once made this pass)
        wrong_key = fleet.secret_key[:-1] + ("y" if fleet.secret_key.endswith("x") else "x")
        for derived in (False, True):
            bad = fleet.client(derived=derived, secret_key=wrong_key)
            error = refused(bad.show_batch_task, ShowBatchTaskRequest(task_id=task.task_id))
            assert (error.status_code, error.error_code) == (401, "IOTDA.000002")
        # out-of-range and ill-formed input: the field is named, nothing is created
        error = refused(
            client.show_batch_task, ShowBatchTaskRequest(task_id=task.task_id, limit=51)
        )
        assert (error.status_code, error.error_code) == (400, "IOTDA.000017")
        error = refused(
            client.show_batch_task, ShowBatchTaskRequest(task_id=task.task_id, marker="XYZ")
        )
        assert (error.status_code, error.error_code) == (400, "IOTDA.000018")
        error = refused(
            client.show_batch_task, ShowBatchTaskRequest(task_id=task.task_id, offset=501)
        )
        assert (error.status_code, error.error_code) == (400, "IOTDA.000006")
        assert "offset" in error.error_msg
        ids = fleet.device_ids
        too_many = TaskPolicy(retry_count=6, retry_interval=1)
        for fields, field in [
            ({"targets": ["bad id!"]}, "targets"),
            ({"targets": ids, "task_policy": too_many}, "retry_count"),
            ({"targets": ids, "task_policy": TaskPolicy(retry_count=1)}, "retry_interval"),
            ({}, "targets"),
            ({"targets": ids, "document": {"paras": "x"}}, "paras"),
        ]:  # fmt: skip
            fields.setdefault("document", DOCUMENTS["createCommands"])
            error = refused(client.create_batch_task, CreateBatchTaskRequest(
                body=CreateBatchTask(task_name="bad", task_type="createCommands", **fields)
            ))  # fmt: skip
            assert (error.status_code, error.error_code) == (400, "IOTDA.000006"), fields
            assert field in error.error_msg
        listed = client.list_batch_tasks(ListBatchTasksRequest(task_type="createCommands"))
        assert listed.page.count == 0

        # another project's key sees nothing of this one
        flags = store_flags(fleet.settings)
        other = run_cli_json("admin", "create-app", *flags, "--name", "other")
        outsider = V5Fleet(
            fleet.server, other["project_id"], other["access_key"], other["secret_key"],
            [], "", fleet.settings,
        ).client()  # fmt: skip
        error = refused(outsider.show_batch_task, ShowBatchTaskRequest(task_id=task.task_id))
        assert error.status_code == 404
        assert (
            outsider.list_batch_tasks(ListBatchTasksRequest(task_type="createMessages")).page.count
            == 0
        )
        # ...and cannot name the other project in its path
        trespasser = V5Fleet(
            fleet.server, fleet.project_id, other["access_key"], other["secret_key"],
            [], "", fleet.settings,
        ).client()  # fmt: skip
        error = refused(trespasser.show_batch_task, ShowBatchTaskRequest(task_id=task.task_id))
        assert (error.status_code, error.error_code) == (401, "IOTDA.000002")


def test_products_devices_groups_and_shadows_through_the_sdk(
    settings: Settings, tmp_path: Path
) -> None:
    with running_fleet(settings, tmp_path) as fleet:
        client = fleet.client()
        assert client.list_products(ListProductsRequest()).page.count == 1
        meter = ServiceCapability(
            service_id="Meter",
            service_type="Meter",
            properties=[ServiceProperty(property_name="flow", data_type="int", method="RW")],
        )
        product = client.create_product(
            CreateProductRequest(
                body=AddProduct(
                    name="meter", device_type="WaterMeter", protocol_type="MQTT",
                    data_format="json", service_capabilities=[meter],
                )
            )
        )  # fmt: skip
        assert product.status_code == 201
        pid = product.product_id
        assert product.service_capabilities[0].service_id == "Meter"
        assert product.service_capabilities[0].properties[0].property_name == "flow"
        assert client.show_product(ShowProductRequest(product_id=pid)).name == "meter"
        renamed = client.update_product(
            UpdateProductRequest(product_id=pid, body=UpdateProduct(name="meter2"))
        )
        assert renamed.name == "meter2"
        assert renamed.device_type == "WaterMeter"
        listed = client.list_products(ListProductsRequest(product_name="meter2"))
        assert [p.product_id for p in listed.products] == [pid]

        added = client.add_device(
            AddDeviceRequest(
                body=AddDevice(node_id="n1", product_id=pid, auth_info=AuthInfo(secret="secret123"))
            )
        )
        assert added.status_code == 201
        assert added.device_id == f"{pid}_n1"
        assert added.auth_info.secret == "secret123"
        assert added.status == "INACTIVE"
        assert added.product_name == "meter2"
        again = refused(
            client.add_device,
            AddDeviceRequest(body=AddDevice(node_id="n1", product_id=pid)),
        )
        assert (again.status_code, again.error_code) == (400, "IOTDA.014031")
        device_id = added.device_id
        shown = client.show_device(ShowDeviceRequest(device_id=device_id))
        assert shown.node_id == "n1"
        assert shown.auth_info.secret is None
        assert client.list_devices(ListDevicesRequest(product_id=pid)).page.count == 1
        # marker paging over every device of the project
        seen: list[str] = []
        marker = None
        while True:
            page = client.list_devices(ListDevicesRequest(limit=4, marker=marker))
            if not page.devices:
                break
            seen += [d.device_id for d in page.devices]
            marker = page.page.marker
        assert sorted(seen) == sorted([*fleet.device_ids, device_id])
        assert seen[0] == device_id
        offset = client.list_devices(ListDevicesRequest(limit=2, offset=2)).devices
        assert [d.device_id for d in offset] == seen[2:4]

        updated = client.update_device(
            UpdateDeviceRequest(device_id=device_id, body=UpdateDevice(device_name="kitchen"))
        )
        assert updated.device_name == "kitchen"
        client.freeze_device(FreezeDeviceRequest(device_id=device_id))
        assert client.show_device(ShowDeviceRequest(device_id=device_id)).status == "FROZEN"
        client.unfreeze_device(UnfreezeDeviceRequest(device_id=device_id))
        assert client.show_device(ShowDeviceRequest(device_id=device_id)).status == "INACTIVE"
        asyncio.run(assert_secrets_and_disconnect(fleet, client, device_id))
        children = assert_extension_shadow_cascade_and_times(fleet, client, pid, device_id)
        busy = refused(client.delete_product, DeleteProductRequest(product_id=pid))
        assert busy.status_code == 400
        for child in children:
            client.delete_device(DeleteDeviceRequest(device_id=child))
        assert client.delete_device(DeleteDeviceRequest(device_id=device_id)).status_code == 204
        gone = refused(client.show_device, ShowDeviceRequest(device_id=device_id))
        assert (gone.status_code, gone.error_code) == (404, "IOTDA.014000")
        assert client.delete_product(DeleteProductRequest(product_id=pid)).status_code == 204

        group = client.add_device_group(AddDeviceGroupRequest(body=AddDeviceGroupDTO(name="g1")))
        gid = group.group_id
        assert client.show_device_group(ShowDeviceGroupRequest(group_id=gid)).name == "g1"
        assert client.list_device_groups(ListDeviceGroupsRequest()).page.count == 2
        client.update_device_group(
            UpdateDeviceGroupRequest(group_id=gid, body=UpdateDeviceGroupDTO(description="d"))
        )
        assert client.show_device_group(ShowDeviceGroupRequest(group_id=gid)).description == "d"
        member = fleet.device_ids[0]
        client.create_or_delete_device_in_group(
            CreateOrDeleteDeviceInGroupRequest(
                group_id=gid, action_id="addDevice", device_id=member
            )
        )
        members = client.show_devices_in_group(ShowDevicesInGroupRequest(group_id=gid))
        assert [d.device_id for d in members.devices] == [member]
        client.create_or_delete_device_in_group(
            CreateOrDeleteDeviceInGroupRequest(
                group_id=gid, action_id="removeDevice", device_id=member
            )
        )
        assert client.show_devices_in_group(ShowDevicesInGroupRequest(group_id=gid)).page.count == 0
        client.delete_device_group(DeleteDeviceGroupRequest(group_id=gid))
        assert (
            refused(client.show_device_group, ShowDeviceGroupRequest(group_id=gid)).status_code
            == 404
        )

        # shadows: desired values merged, versions checked
        target = fleet.device_ids[2]
        assert client.show_device_shadow(ShowDeviceShadowRequest(device_id=target)).shadow == []
        desired = UpdateDesireds(
            shadow=[UpdateDesired(service_id="Meter", desired={"limit": 60, "mode": "eco"})]
        )
        changed = client.update_device_shadow_desired_data(
            UpdateDeviceShadowDesiredDataRequest(device_id=target, body=desired)
        )
        assert changed.shadow[0].version == 1
        assert changed.shadow[0].desired.properties == {"limit": 60, "mode": "eco"}
        stale = UpdateDesireds(
            shadow=[UpdateDesired(service_id="Meter", desired={"mode": None}, version=0)]
        )
        error = refused(
            client.update_device_shadow_desired_data,
            UpdateDeviceShadowDesiredDataRequest(device_id=target, body=stale),
        )
        assert (error.status_code, error.error_code) == (400, "IOTDA.000006")
        stale.shadow[0].version = 1
        client.update_device_shadow_desired_data(
            UpdateDeviceShadowDesiredDataRequest(device_id=target, body=stale)
        )
        shown = client.show_device_shadow(ShowDeviceShadowRequest(device_id=target)).shadow
        assert [(s.service_id, s.version, s.desired.properties) for s in shown] == [
            ("Meter", 2, {"limit": 60})
        ]
        assert shown[0].desired.event_time is not None

        # another project sees none of it
        other = run_cli_json("admin", "create-app", *store_flags(fleet.settings), "--name", "o")
        outsider = V5Fleet(
            fleet.server, other["project_id"], other["access_key"], other["secret_key"],
            [], "", fleet.settings,
        ).client()  # fmt: skip
        error = refused(outsider.show_device, ShowDeviceRequest(device_id=member))
        assert error.status_code == 404
        error = refused(outsider.show_device_shadow, ShowDeviceShadowRequest(device_id=target))
        assert error.status_code == 404
        assert outsider.list_devices(ListDevicesRequest()).page.count == 0
        assert outsider.list_device_groups(ListDeviceGroupsRequest()).page.count == 0


def reset_secret(client: IoTDAClient, device_id: str, **fields: Any) -> Any:
    body = ResetDeviceSecret(**fields)
    request = ResetDeviceSecretRequest(device_id=device_id, action_id="resetSecret", body=body)
    return client.reset_device_secret(request)


async def assert_secrets_and_disconnect(
    fleet: V5Fleet, client: IoTDAClient, device_id: str
) -> None:
    """A device connects with its primary or its secondary secret; a forced reset closes the
    connection it has, and only the new secrets open one."""

    async def connack(secret: str) -> tuple[int, RawDevice]:
        device = await RawDevice.open(LOOPBACK, fleet.server.mqtt_port)
        return await device.connect(*mqtt_credentials(device_id, secret)), device

    second = await asyncio.to_thread(
        reset_secret, client, device_id, secret="second123", secret_type="SECONDARY"
    )
    assert (second.device_id, second.secret, second.secret_type) == (
        device_id, "second123", "SECONDARY",
    )  # fmt: skip
    code, connected = await connack("second123")
    assert code == 0
    # without force_disconnect the connection stays (the new secret counts from the next)
    await asyncio.to_thread(reset_secret, client, device_id, secret="interim12")
    connected.send(codec.Pingreq())
    await connected.expect(codec.Pingresp)
    primary = await asyncio.to_thread(
        reset_secret, client, device_id, secret="newsecret1", force_disconnect=True
    )
    assert (primary.secret, primary.secret_type) == ("newsecret1", "PRIMARY")
    await connected.wait_closed()
    await connected.close()
    for secret, expected in (
        ("secret123", 4),
        ("interim12", 4),
        ("second123", 0),
        ("newsecret1", 0),
    ):
        code, device = await connack(secret)
        if secret != "newsecret1":
            await device.close()
        assert code == expected, secret
    # freezing closes the connection too, and a frozen device may not connect
    await asyncio.to_thread(client.freeze_device, FreezeDeviceRequest(device_id=device_id))
    await device.wait_closed()
    await device.close()
    code, refused_device = await connack("newsecret1")
    await refused_device.close()
    assert code == 5
    await asyncio.to_thread(client.unfreeze_device, UnfreezeDeviceRequest(device_id=device_id))


def assert_extension_shadow_cascade_and_times(
    fleet: V5Fleet, client: IoTDAClient, pid: str, gateway: str
) -> list[str]:
    """extension_info and initial shadows on add/update/show; list_devices' cascading and
    time-window filters; bad input refused with nothing created. Returns the children made
    (the caller deletes them, grandchild first)."""
    info = {"site": "north", "floor": 3}
    initial = [InitialDesired(service_id="Meter", desired={"limit": 5})]
    child = client.add_device(
        AddDeviceRequest(
            body=AddDevice(
                node_id="c1", product_id=pid, gateway_id=gateway, extension_info=info,
                shadow=initial,
            )
        )
    )  # fmt: skip
    assert child.extension_info == info
    assert client.show_device(ShowDeviceRequest(device_id=child.device_id)).extension_info == info
    shadow = client.show_device_shadow(ShowDeviceShadowRequest(device_id=child.device_id)).shadow
    assert [(s.service_id, s.version, s.desired.properties) for s in shadow] == [
        ("Meter", 1, {"limit": 5})
    ]
    updated = client.update_device(
        UpdateDeviceRequest(device_id=child.device_id, body=UpdateDevice(extension_info={"a": 1}))
    )
    assert updated.extension_info == {"a": 1}
    grandchild = client.add_device(
        AddDeviceRequest(body=AddDevice(node_id="g1", product_id=pid, gateway_id=child.device_id))
    )
    assert grandchild.extension_info is None

    def ids(**query: Any) -> list[str]:
        return [d.device_id for d in client.list_devices(ListDevicesRequest(**query)).devices]

    assert ids(gateway_id=gateway) == [child.device_id]
    assert ids(gateway_id=gateway, is_cascade_query=True) == [
        grandchild.device_id, child.device_id,
    ]  # fmt: skip
    assert ids(gateway_id=child.device_id, is_cascade_query=True) == [grandchild.device_id]
    hour = timedelta(hours=1)
    past, future = (
        (datetime.now(UTC) + delta).strftime("%Y%m%dT%H%M%SZ") for delta in (-hour, hour)
    )
    everyone = len(fleet.device_ids) + 3
    for window, expected in (((past, future), everyone), ((future, None), 0), ((None, past), 0)):
        listed = client.list_devices(ListDevicesRequest(start_time=window[0], end_time=window[1]))
        assert listed.page.count == expected, window

    # bad input: the right code, and no device made
    too_big = {"k": "x" * 1100}
    bad_shadow = [InitialDesired(service_id="Meter", desired={"a.b": 1})]
    for body, field in (
        (AddDevice(node_id="bad1", product_id=pid, extension_info=too_big), "extension_info"),
        (AddDevice(node_id="bad2", product_id=pid, shadow=bad_shadow), "shadow"),
    ):
        error = refused(client.add_device, AddDeviceRequest(body=body))
        assert (error.status_code, error.error_code) == (400, "IOTDA.000006")
        assert field in error.error_msg
    assert client.list_devices(ListDevicesRequest(product_id=pid)).page.count == 3
    error = refused(
        client.update_device,
        UpdateDeviceRequest(device_id=child.device_id, body=UpdateDevice(extension_info=too_big)),
    )
    assert (error.status_code, error.error_code) == (400, "IOTDA.000006")
    shown = client.show_device(ShowDeviceRequest(device_id=child.device_id))
    assert shown.extension_info == {"a": 1}
    for query, code in (
        ({"start_time": "20241301T000000Z"}, "IOTDA.000009"),
        ({"end_time": "2024-01-01"}, "IOTDA.000009"),
        ({"start_time": future, "end_time": past}, "IOTDA.000006"),
    ):
        error = refused(client.list_devices, ListDevicesRequest(**query))
        assert (error.status_code, error.error_code) == (400, code), query
    error = refused(reset_secret, client, gateway, secret_type="TERTIARY")
    assert (error.status_code, error.error_code) == (400, "IOTDA.000006")
    return [grandchild.device_id, child.device_id]


def xlsx_of(path: Path, rows: list[list[str]]) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    book.save(path)
    return path


def xls_of(path: Path, rows: list[list[str]]) -> Path:
    import xlwt

    book = xlwt.Workbook()
    sheet = book.add_sheet("devices")
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            sheet.write(r, c, value)
    book.save(str(path))
    return path


def upload(client: IoTDAClient, path: Path) -> Any:
    with path.open("rb") as handle:
        body = UploadBatchTaskFileRequestBody(file=FormFile(handle))
        return client.upload_batch_task_file(UploadBatchTaskFileRequest(body=body))


def test_batch_task_files_as_document_source_through_the_sdk(
    settings: Settings, tmp_path: Path
) -> None:
    with running_fleet(settings, tmp_path) as fleet:
        client = fleet.client(derived=True)
        frozen = fleet.device_ids[:2]
        xlsx = upload(
            client,
            xlsx_of(tmp_path / "freeze.xlsx", [["device_id", "note"], *[[d, "x"] for d in frozen]]),
        )
        assert xlsx.status_code == 201
        assert xlsx.file_name == "freeze.xlsx"
        assert xlsx.upload_time
        xls = upload(client, xls_of(tmp_path / "unfreeze.xls", [[d] for d in frozen]))
        files = client.list_batch_task_files(ListBatchTaskFilesRequest()).files
        assert [f.file_id for f in files] == [xls.file_id, xlsx.file_id]

        task = create(client, "freezeDevices", document_source=xlsx.file_id)
        assert task.task_progress.total == 2
        assert wait_finished(client, task.task_id).status == "Success"
        for device_id in frozen:
            shown = client.show_device(ShowDeviceRequest(device_id=device_id))
            assert shown.status == "FROZEN"
        task = create(client, "unfreezeDevices", document_source=xls.file_id)
        assert wait_finished(client, task.task_id).status == "Success"
        assert client.show_device(ShowDeviceRequest(device_id=frozen[0])).status != "FROZEN"

        # not a spreadsheet, a bad id, a file for a command task: refused, nothing kept
        error = refused(upload, client, tmp_path / "fleet.json")
        assert (error.status_code, error.error_code) == (400, "IOTDA.000006")
        bad = xlsx_of(tmp_path / "bad.xlsx", [["dev-1"], ["not an id!"]])
        error = refused(upload, client, bad)
        assert "row 2" in error.error_msg
        error = refused(
            create, client, "createCommands", document_source=xlsx.file_id,
            document=DOCUMENTS["createCommands"],
        )  # fmt: skip
        assert "document_source" in error.error_msg
        assert len(client.list_batch_task_files(ListBatchTaskFilesRequest()).files) == 2

        deleted = client.delete_batch_task_file(DeleteBatchTaskFileRequest(file_id=xls.file_id))
        assert deleted.status_code == 204
        error = refused(create, client, "unfreezeDevices", document_source=xls.file_id)
        assert error.status_code == 404
        files = client.list_batch_task_files(ListBatchTaskFilesRequest()).files
        assert [f.file_id for f in files] == [xlsx.file_id]


def test_task_commands_through_a_servers_v5_api(tmp_path: Path) -> None:
    # the commands only speak HTTP here: the server's store is covered by the SDK tests on both
    settings = Settings(data_dir=tmp_path / "data", database=None)
    with running_fleet(settings, tmp_path) as fleet:
        flags = [
            "--endpoint", fleet.server.http_url, "--ak", fleet.access_key,
            "--sk", fleet.secret_key, "--project-id", fleet.project_id,
        ]  # fmt: skip
        document = json.dumps(DOCUMENTS["createCommands"])
        targets = [arg for d in fleet.device_ids for arg in ("--device", d)]
        created = run_cli_json(
            "task", "create", "--type", "createCommands", "--document", document, *targets, *flags
        )
        assert created["total"] == FLEET_SIZE
        task_id = created["task_id"]
        done = run_cli_json("task", "watch", task_id, "--timeout", str(WAIT_S), *flags)
        assert done["status"] == "partial_success"
        assert done["progress"]["success"] == FLEET_SIZE - 1
        failed = run_cli_json("task", "details", task_id, "--status", "fail", *flags)
        assert [s["target"] for s in failed["subtasks"]] == [fleet.failing]
        # a profile file, derived signing
        profile = tmp_path / "profile.json"
        profile.write_text(json.dumps({
            "endpoint": fleet.server.http_url, "ak": fleet.access_key, "sk": fleet.secret_key,
            "project_id": fleet.project_id, "region": "cn-north-4",
        }))  # fmt: skip
        listed = run_cli_json("task", "list", "--type", "createCommands", "--profile", str(profile))
        assert [t["task_id"] for t in listed["tasks"]] == [task_id]
        shown = run_cli_json("task", "show", task_id, "--profile", str(profile))
        assert shown["name"].startswith("cli_")
        assert shown["status"] == "partial_success"
        retried = run_cli_json(
            "task", "retry", task_id, "--device", fleet.failing, "--profile", str(profile)
        )
        assert retried["results"] == [
            {"target": fleet.failing, "ok": True, "error_code": None, "error_msg": None}
        ]
        run_cli_json("task", "watch", task_id, "--timeout", str(WAIT_S), *flags)
        assert run_cli_json("task", "delete", task_id, *flags) == {
            "task_id": task_id,
            "deleted": True,
        }
        # the store was not opened: the task is gone through the server
        missing = run_cli("task", "show", task_id, *flags)
        assert missing.returncode == 1
        assert "404" in missing.stderr
        bad = run_cli("task", "list", "--type", "createCommands", *flags[:-3], "wrong" * 8,
                      "--project-id", fleet.project_id)  # fmt: skip
        assert bad.returncode == 1
        assert "IOTDA.000002" in bad.stderr
        usage = run_cli("task", "show", task_id, "--endpoint", fleet.server.http_url)
        assert usage.returncode == 2
        assert "--ak" in usage.stderr


def test_single_device_commands_through_the_sdk(settings: Settings, tmp_path: Path) -> None:
    with running_fleet(settings, tmp_path) as fleet:
        client = fleet.client()
        normal = fleet.device_ids[0]
        command = DeviceCommandRequest(service_id="Reboot", command_name="reboot", paras={"d": 1})
        answered = client.create_command(CreateCommandRequest(device_id=normal, body=command))
        assert answered.command_id
        assert answered.response is not None
        assert answered.error_code is None
        failed = client.create_command(CreateCommandRequest(device_id=fleet.failing, body=command))
        assert failed.error_code
        # a device that never connected: not online
        product_id = client.show_device(ShowDeviceRequest(device_id=normal)).product_id
        offline = client.add_device(
            AddDeviceRequest(body=AddDevice(node_id="offline", product_id=product_id))
        ).device_id
        error = refused(
            client.create_command, CreateCommandRequest(device_id=offline, body=command)
        )
        assert (error.status_code, error.error_code) == (403, "IOTDA.014016")

        now = AsyncDeviceCommandRequest(
            service_id="Reboot", command_name="reboot", paras={"d": 2}, send_strategy="immediately"
        )
        created = client.create_async_command(CreateAsyncCommandRequest(device_id=normal, body=now))
        assert created.status_code == 201
        assert created.send_strategy == "immediately"

        def final() -> Any:
            shown = client.show_async_device_command(
                ShowAsyncDeviceCommandRequest(device_id=normal, command_id=created.command_id)
            )
            return shown if shown.status == "SUCCESSFUL" else None

        done = wait_until_sync(final, timeout_s=WAIT_S, interval_s=0.1, message="command done")
        assert done.result is not None
        assert done.sent_time is not None
        later = AsyncDeviceCommandRequest(
            service_id="Reboot", command_name="reboot", paras={}, expire_time=600
        )
        held = client.create_async_command(CreateAsyncCommandRequest(device_id=offline, body=later))
        assert (held.status, held.expire_time, held.send_strategy) == ("PENDING", 600, "delay")
        # not batch tasks, and not another device's
        assert (
            client.list_batch_tasks(
                ListBatchTasksRequest(task_type="createAsyncCommands")
            ).page.count
            == 0
        )
        error = refused(client.show_batch_task, ShowBatchTaskRequest(task_id=held.command_id))
        assert error.status_code == 404
        error = refused(
            client.show_async_device_command,
            ShowAsyncDeviceCommandRequest(device_id=normal, command_id=held.command_id),
        )
        assert error.status_code == 404
        assert_command_lists(client, normal, offline, created.command_id, answered.command_id)


def ids_of(page: Any) -> list[str]:
    return [c.command_id for c in page.commands]


def assert_command_lists(
    client: IoTDAClient, normal: str, offline: str, async_id: str, sync_id: str
) -> None:
    """The queue holds what is not finished, the history what is; filters, paging, errors."""
    update = AsyncDeviceCommandRequest(service_id="Ota", command_name="update", paras={})
    queued = client.create_async_command(CreateAsyncCommandRequest(device_id=offline, body=update))
    queue = client.list_async_commands(ListAsyncCommandsRequest(device_id=offline))
    assert queue.page.count == 2
    assert queue.commands[0].command_id == queued.command_id
    first = queue.commands[0]
    assert (first.status, first.service_id, first.command_name) == ("PENDING", "Ota", "update")
    assert (first.send_strategy, first.expire_time) == ("delay", 24 * 3600)
    assert first.created_time
    assert first.sent_time is None
    named = client.list_async_commands(
        ListAsyncCommandsRequest(device_id=offline, command_name="update")
    )
    assert ids_of(named) == [queued.command_id]
    # the offline device's synchronous command failed at once: history, not queue
    offline_history = client.list_async_history_commands(
        ListAsyncHistoryCommandsRequest(device_id=offline)
    )
    assert [c.status for c in offline_history.commands] == ["FAILED"]
    assert client.list_async_commands(ListAsyncCommandsRequest(device_id=normal)).commands == []

    history = client.list_async_history_commands(ListAsyncHistoryCommandsRequest(device_id=normal))
    assert ids_of(history) == [async_id, sync_id]
    assert {c.status for c in history.commands} == {"SUCCESSFUL"}
    assert all(c.response_time for c in history.commands)
    assert history.page.marker
    one = client.list_async_history_commands(
        ListAsyncHistoryCommandsRequest(device_id=normal, limit=1)
    )
    after = client.list_async_history_commands(
        ListAsyncHistoryCommandsRequest(device_id=normal, marker=one.page.marker)
    )
    skipped = client.list_async_history_commands(
        ListAsyncHistoryCommandsRequest(device_id=normal, limit=1, offset=1)
    )
    assert (ids_of(one), ids_of(after), ids_of(skipped)) == ([async_id], [sync_id], [sync_id])
    for status, expected in (("SUCCESSFUL", 2), ("FAILED", 0), ("PENDING", 0)):
        counted = client.count_async_history_commands(
            CountAsyncHistoryCommandsRequest(device_id=normal, status=status)
        )
        assert counted.count == expected, status
    hour = timedelta(hours=1)
    past, future = (
        (datetime.now(UTC) + delta).strftime("%Y%m%dT%H%M%SZ") for delta in (-hour, hour)
    )
    for window, expected in (((past, future), 2), ((future, None), 0), ((None, past), 0)):
        listed = client.list_async_history_commands(
            ListAsyncHistoryCommandsRequest(
                device_id=normal, start_time=window[0], end_time=window[1]
            )
        )
        assert len(listed.commands) == expected, window

    for request, code in (
        (ListAsyncHistoryCommandsRequest(device_id=normal, status="DONE"), "IOTDA.000006"),
        (ListAsyncCommandsRequest(device_id=normal, start_time="2024-01-01"), "IOTDA.000009"),
        (ListAsyncCommandsRequest(device_id=normal, start_time="20241301T000000Z"), "IOTDA.000009"),
        (ListAsyncCommandsRequest(device_id=normal, limit=51), "IOTDA.000017"),
        (ListAsyncHistoryCommandsRequest(device_id="nobody"), "IOTDA.014000"),
    ):
        call = (
            client.list_async_commands
            if isinstance(request, ListAsyncCommandsRequest)
            else client.list_async_history_commands
        )
        error = refused(call, request)
        assert (error.status_code // 100, error.error_code) == (4, code), request


def test_single_device_messages_through_the_sdk(settings: Settings, tmp_path: Path) -> None:
    with running_fleet(settings, tmp_path) as fleet:
        client = fleet.client()
        device = fleet.device_ids[0]
        sent = client.create_message(
            CreateMessageRequest(
                device_id=device, body=DeviceMessageRequest(message="hello", name="greet")
            )
        )
        assert sent.status_code == 201
        assert sent.result.status in ("PENDING", "DELIVERED")

        def delivered() -> Any:
            shown = client.show_device_message(
                ShowDeviceMessageRequest(device_id=device, message_id=sent.message_id)
            )
            return shown if shown.status == "DELIVERED" else None

        shown = wait_until_sync(delivered, timeout_s=WAIT_S, interval_s=0.1, message="delivered")
        assert (shown.message, shown.name) == ("hello", "greet")
        assert shown.finished_time is not None
        named = DeviceMessageRequest(message_id="m-1", message={"k": "v"}, topic="alerts")
        assert (
            client.create_message(CreateMessageRequest(device_id=device, body=named)).message_id
            == "m-1"
        )
        again = refused(client.create_message, CreateMessageRequest(device_id=device, body=named))
        assert (again.status_code, again.error_code) == (400, "IOTDA.000006")
        listed = client.list_device_messages(ListDeviceMessagesRequest(device_id=device))
        assert [m.message_id for m in listed.messages] == ["m-1", sent.message_id]
        assert listed.messages[0].topic == "alerts"
        # one device's message is not another's, and no batch task
        error = refused(
            client.show_device_message,
            ShowDeviceMessageRequest(device_id=fleet.device_ids[1], message_id="m-1"),
        )
        assert error.status_code == 404
        assert (
            client.list_batch_tasks(ListBatchTasksRequest(task_type="createMessages")).page.count
            == 0
        )
        bad = DeviceMessageRequest(message="x", topic="a", topic_full_name="b")
        error = refused(client.create_message, CreateMessageRequest(device_id=device, body=bad))
        assert "topic" in error.error_msg
