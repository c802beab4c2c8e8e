"""`/iocm/app/cmd/v1.4.0`: single-device commands (spec: oceanconnect-legacy §3).

A thin mapping over `engine.device_commands`: create (201 + the command record), page,
cancel one (PUT status CANCELED), cancel a device's pending commands (a cancel task),
list cancel tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response

from fleetbatch.api.legacy.common import (
    Caller,
    LegacyRoute,
    authenticate,
    json_body,
    json_response,
    mapped,
    query_int,
    query_value,
    read_wire,
    runtime_of,
)
from fleetbatch.api.legacy.errors import Api, fail, translate
from fleetbatch.api.legacy.schemas import (
    DeviceCmdCancelTaskIn,
    PostDeviceCommandIn,
    UpdateDeviceCommandIn,
    openapi_body,
)
from fleetbatch.domain.errors import FleetbatchError, NotFound
from fleetbatch.domain.ids import is_hex24
from fleetbatch.domain.outbox import result_detail
from fleetbatch.domain.timefmt import from_compact, to_compact
from fleetbatch.engine import device_commands as dc
from fleetbatch.engine.device_commands import CancelTask, DeviceCommand, DeviceCommands

router = APIRouter(prefix="/iocm/app/cmd/v1.4.0", route_class=LegacyRoute)

API = Api.COMMANDS
R = TypeVar("R")
MAX_PAGE_SIZE = 1000  # spec §3.2 (unconfirmed): 1-1000, default 1000


def commands_of(request: Request) -> DeviceCommands:
    """The app's device-command service (one per app, made on first use)."""
    state = request.app.state
    service: DeviceCommands | None = getattr(state, "device_commands", None)
    if service is None:
        service = DeviceCommands(runtime_of(request).tasks)
        state.device_commands = service
    return service


def _time(epoch_ms: int | None) -> str | None:
    return to_compact(epoch_ms) if epoch_ms is not None else None


def command_view(command: DeviceCommand) -> dict[str, Any]:
    """The command record (spec §3.1: DeviceCommandRespV4)."""
    result = None
    if command.finished:
        result = {"resultCode": command.status, "resultDetail": result_detail(command.result)}
    delivered = command.status in ("DELIVERED", "SUCCESSFUL", "FAILED", "TIMEOUT")
    return {
        "commandId": command.command_id,
        "appId": command.app_id,
        "deviceId": command.device_id,
        "command": {
            "serviceId": command.service_id,
            "method": command.command_name,
            "paras": dict(command.paras),
        },
        "callbackUrl": command.callback_url,
        "expireTime": command.expire_time_s,
        "status": command.status,
        "result": result,
        "creationTime": to_compact(command.created_at),
        "executeTime": _time(command.finished_at),
        "platformIssuedTime": _time(command.sent_at),
        # the platform keeps no separate delivery time: the last change after it
        "deliveredTime": _time(command.updated_at) if delivered else None,
        "issuedTimes": command.issued_times,
        "maxRetransmit": command.max_retransmit,
    }


async def _own_device(request: Request, app_id: str, device_id: str) -> None:
    device = await runtime_of(request).registry.devices.find(device_id)
    if device is None or device.app_id != app_id:
        raise fail(API, 404, "100403", f"device {device_id}")


@router.post("/deviceCommands", openapi_extra=openapi_body(PostDeviceCommandIn))
@router.post("/deviceCommands/", include_in_schema=False)
async def post_device_command(request: Request) -> Response:
    """Create a command: 201 and its record; held PENDING while the device is offline."""
    caller = await authenticate(request, API, query_value(request, "appId"))
    body = await json_body(request, API, "100022")
    wire = read_wire(PostDeviceCommandIn, body, API, "100022")
    if wire.callback_url is not None and not wire.callback_url.startswith(("http://", "https://")):
        raise fail(API, 400, "100022", "callbackUrl must be an http:// or https:// URL")
    await _own_device(request, caller.acting_app_id, wire.device_id)
    expire = dc.DEFAULT_EXPIRE_S if wire.expire_time is None else wire.expire_time
    with mapped(API):
        command = await commands_of(request).send(
            caller.acting_app_id,
            wire.device_id,
            wire.command.service_id,
            wire.command.method,
            wire.command.paras,
            expire_time_s=expire,
            max_retransmit=wire.max_retransmit or 0,
            callback_url=wire.callback_url,
            creator_app_id=caller.app.app_id,
        )
    return json_response(command_view(command), 201)


def _time_filter(request: Request, name: str) -> int | None:
    raw = query_value(request, name)
    if raw is None:
        return None
    try:
        return from_compact(raw)
    except ValueError:
        raise fail(API, 400, "100022", f"{name} must look like 20151212T121212Z") from None


@dataclass(frozen=True, slots=True)
class PageQuery:
    """The caller, paging and time filters both command listings take, and their answer."""

    caller: Caller
    page_no: int
    page_size: int
    created_from_ms: int | None
    created_to_ms: int | None

    async def answer(
        self,
        list_page: Callable[..., Awaitable[tuple[int, list[R]]]],
        view: Callable[[R], dict[str, Any]],
        **filters: str | None,
    ) -> Response:
        """The page `list_page` reads for the acting app with these filters, each record
        through `view`: `pagination` (pageNo, pageSize, totalSize) and `data` (spec §3.2)."""
        with mapped(API):
            total, records = await list_page(
                self.caller.acting_app_id,
                self.page_no,
                self.page_size,
                created_from_ms=self.created_from_ms,
                created_to_ms=self.created_to_ms,
                **filters,
            )
        pagination = {"pageNo": self.page_no, "pageSize": self.page_size, "totalSize": total}
        return json_response({"pagination": pagination, "data": [view(r) for r in records]})


async def _page_query(request: Request) -> PageQuery:
    caller = await authenticate(request, API, query_value(request, "appId"))
    page_no = query_int(request, "pageNo", API, "100022", default=0, low=0, high=10**9)
    page_size = query_int(
        request, "pageSize", API, "100022", default=MAX_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE
    )
    start, end = _time_filter(request, "startTime"), _time_filter(request, "endTime")
    return PageQuery(caller, page_no, page_size, start, end)


@router.get("/deviceCommands")
@router.get("/deviceCommands/", include_in_schema=False)
async def query_device_commands(request: Request) -> Response:
    """Commands newest first: pageNo ≥ 0, pageSize 1-1000, deviceId, startTime, endTime."""
    query = await _page_query(request)
    return await query.answer(
        commands_of(request).page, command_view, device_id=query_value(request, "deviceId")
    )


@router.put("/deviceCommands/{command_id}", openapi_extra=openapi_body(UpdateDeviceCommandIn))
async def update_device_command(request: Request, command_id: str) -> Response:
    """`{"status": "CANCELED"}` cancels a PENDING command: 200 and its record."""
    caller = await authenticate(request, API, query_value(request, "appId"))
    read_wire(UpdateDeviceCommandIn, await json_body(request, API, "100022"), API, "100022")
    if not is_hex24(command_id):
        raise fail(API, 404, "100022", f"command {command_id} does not exist")
    try:
        command = await commands_of(request).cancel(caller.acting_app_id, command_id)
    except NotFound:
        raise fail(API, 404, "100022", f"command {command_id} does not exist") from None
    except FleetbatchError as error:
        raise translate(API, error) from error
    return json_response(command_view(command))


@router.post("/deviceCommandCancelTasks", openapi_extra=openapi_body(DeviceCmdCancelTaskIn))
@router.post("/deviceCommandCancelTasks/", include_in_schema=False)
async def create_cancel_task(request: Request) -> Response:
    """`{deviceId}`: cancel the device's PENDING commands; the cancel task with them."""
    caller = await authenticate(request, API, query_value(request, "appId"))
    body = await json_body(request, API, "100022")
    device_id = read_wire(DeviceCmdCancelTaskIn, body, API, "100022").device_id
    await _own_device(request, caller.acting_app_id, device_id)
    with mapped(API):
        task = await commands_of(request).cancel_device(caller.acting_app_id, device_id)
    return json_response(cancel_task_view(task), 201)


def cancel_task_view(task: CancelTask) -> dict[str, Any]:
    """A cancel task (spec §3.3: taskId, appId, deviceId, status, totalCount, deviceCommands)."""
    return {
        "taskId": task.task_id,
        "appId": task.app_id,
        "deviceId": task.device_id,
        "status": task.status,
        "totalCount": len(task.commands),
        "deviceCommands": [command_view(c) for c in task.commands],
    }


@router.get("/deviceCommandCancelTasks")
@router.get("/deviceCommandCancelTasks/", include_in_schema=False)
async def query_cancel_tasks(request: Request) -> Response:
    """Cancel tasks newest first: pageNo, pageSize 1-1000, taskId, deviceId, status, times."""
    query = await _page_query(request)
    return await query.answer(
        commands_of(request).cancel_tasks,
        cancel_task_view,
        task_id=query_value(request, "taskId"),
        device_id=query_value(request, "deviceId"),
        status=query_value(request, "status"),
    )
