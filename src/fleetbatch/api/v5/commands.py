"""Single-device commands over v5 (spec: iotda-v5 §5.4): a thin mapping over
`engine.device_commands`, so a command to one device takes the path of a batch subtask.

An async command is a one-subtask `createAsyncCommands` task (its id is the command id); a
synchronous command is one sent at once (`immediately`) whose answer the call waits for,
up to the platform's command timeout, reading the command's record (the engine that
delivers it may run in another process).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from fleetbatch.api.v5.common import (
    EXCLUDE_NONE,
    ID_PATTERN,
    CompactTime,
    DeviceId,
    PageOut,
    Paging,
    RuntimeDep,
    Signed,
    device_app_id,
    paged,
    time_window,
)
from fleetbatch.api.v5.route import Caller, V5Route, WireError
from fleetbatch.api.v5.wire import SUBTASK_ERROR_CODES
from fleetbatch.domain.errors import NotFound
from fleetbatch.domain.timefmt import to_compact
from fleetbatch.engine import device_commands as dc
from fleetbatch.engine.device_commands import DeviceCommand, DeviceCommands
from fleetbatch.runtime import Runtime
from fleetbatch.store.paging import PageRequest

router = APIRouter(route_class=V5Route, tags=["Commands"])

CommandId = Annotated[str, Path(max_length=100, pattern=ID_PATTERN)]
DEFAULT_EXPIRE_S = 24 * 3600
# how often a synchronous call reads its command's record while it waits
SYNC_POLL_S = 0.05
# beyond the command timeout: the engine's own timeout of the attempt lands first
SYNC_MARGIN_S = 2.0
COMMAND_TIMED_OUT = ("IOTDA.014111", "Command request timed out.")


class CreateCommand(BaseModel):
    """CreateCommand / the command fields of CreateAsyncCommand."""

    service_id: str | None = Field(None, min_length=1, max_length=64)
    command_name: str | None = Field(None, min_length=1, max_length=128)
    paras: dict[str, Any]


class CreateAsyncCommand(CreateCommand):
    """CreateAsyncCommand body."""

    expire_time: int | None = Field(
        None, ge=0, le=dc.MAX_EXPIRE_S, description="Seconds the command waits (delay only)"
    )
    send_strategy: Literal["immediately", "delay"] = "delay"


class CommandResultWire(BaseModel):
    """CreateCommand response: the device's answer, or why there is none."""

    command_id: str
    response: Any = None
    error_code: str | None = None
    error_msg: str | None = None


class AsyncCommandSummaryWire(BaseModel):
    """AsyncDeviceListCommand: a listed command, without its paras and result."""

    device_id: str
    command_id: str
    service_id: str | None = None
    command_name: str | None = None
    expire_time: int
    status: str = Field(
        description="PENDING, SENT, DELIVERED, SUCCESSFUL, FAILED, TIMEOUT, EXPIRED (CANCELED)"
    )
    created_time: str
    sent_time: str | None = None
    delivered_time: str | None = None
    response_time: str | None = None
    send_strategy: str


class AsyncCommandWire(AsyncCommandSummaryWire):
    """An async command's record (CreateAsyncCommand, ShowAsyncDeviceCommand)."""

    paras: dict[str, Any]
    result: Any = None


class ListAsyncCommandsWire(BaseModel):
    """ListAsyncCommands: a page of the device's queue (PENDING, SENT, DELIVERED)."""

    commands: list[AsyncCommandSummaryWire]
    page: PageOut


class HistoryPageOut(BaseModel):
    """HistoryCommandPage: only the marker of the page's last record."""

    marker: str | None = Field(None, description="Pass as the next page's marker")


class ListAsyncHistoryCommandsWire(BaseModel):
    """ListAsyncHistoryCommands: a page of the device's finished commands."""

    commands: list[AsyncCommandSummaryWire]
    page: HistoryPageOut


class CountWire(BaseModel):
    """CountAsyncHistoryCommands."""

    count: int


StatusWord = Annotated[
    str | None, Query(max_length=16, description="Command status, e.g. PENDING or SUCCESSFUL")
]
CommandName = Annotated[str | None, Query(min_length=1, max_length=128)]


@dataclass(frozen=True, slots=True)
class CommandFilters:
    """What a listing of a device's commands is filtered by (creation times in ms)."""

    status: str | None
    command_name: str | None
    created_from_ms: int | None
    created_to_ms: int | None


def command_filters(
    start_time: CompactTime = None,
    end_time: CompactTime = None,
    status: StatusWord = None,
    command_name: CommandName = None,
) -> CommandFilters:
    """The query filters of ListAsyncCommands, ListAsyncHistoryCommands and the count."""
    created_from_ms, created_to_ms = time_window(start_time, end_time)
    return CommandFilters(status, command_name, created_from_ms, created_to_ms)


Filters = Annotated[CommandFilters, Depends(command_filters)]


def commands_of(request: Request, runtime: Runtime) -> DeviceCommands:
    """The device-command service (one per app, shared with the legacy dialect)."""
    state = request.app.state
    service: DeviceCommands | None = getattr(state, "device_commands", None)
    if service is None:
        service = DeviceCommands(runtime.tasks)
        state.device_commands = service
    return service


def command_wire(command: DeviceCommand) -> dict[str, Any]:
    """A command as IoTDA's async command record."""
    answered = command.status in ("SUCCESSFUL", "FAILED") and command.finished_at is not None
    return {
        "device_id": command.device_id,
        "command_id": command.command_id,
        "service_id": command.service_id or None,
        "command_name": command.command_name or None,
        "paras": dict(command.paras),
        "expire_time": command.expire_time_s,
        "status": command.status,
        "result": command.result,
        "created_time": to_compact(command.created_at),
        "sent_time": to_compact(command.sent_at) if command.sent_at else None,
        "response_time": to_compact(command.finished_at)
        if answered and command.finished_at
        else None,
        "send_strategy": "delay" if command.expire_time_s else "immediately",
    }


@router.post(
    "/devices/{device_id}/async-commands",
    status_code=201,
    response_model=AsyncCommandWire,
    summary="CreateAsyncCommand",
    **EXCLUDE_NONE,
)
async def create_async_command(
    device_id: DeviceId,
    body: CreateAsyncCommand,
    request: Request,
    runtime: RuntimeDep,
    who: Signed,
) -> dict[str, Any]:
    """Queue a command for a device: sent now (`immediately`), or held while it is offline
    for up to expire_time seconds (`delay`, 24 h unless given)."""
    app_id = await device_app_id(runtime, who, device_id)
    expire_s = 0 if body.send_strategy == "immediately" else body.expire_time
    command = await commands_of(request, runtime).send(
        app_id,
        device_id,
        body.service_id or "",
        body.command_name or "",
        body.paras,
        expire_time_s=DEFAULT_EXPIRE_S if expire_s is None else expire_s,
    )
    return command_wire(command)


async def _device_page(
    request: Request,
    runtime: Runtime,
    who: Caller,
    device_id: str,
    paging: PageRequest,
    filters: CommandFilters,
    *,
    finished: bool,
) -> dict[str, Any]:
    """One list response of a device's commands: its queue or its history."""
    app_id = await device_app_id(runtime, who, device_id)
    page = await commands_of(request, runtime).device_page(
        app_id,
        device_id,
        paging,
        finished=finished,
        status=filters.status,
        command_name=filters.command_name,
        created_from_ms=filters.created_from_ms,
        created_to_ms=filters.created_to_ms,
    )
    return paged("commands", page, command_wire)


@router.get(
    "/devices/{device_id}/async-commands",
    response_model=ListAsyncCommandsWire,
    summary="ListAsyncCommands",
    **EXCLUDE_NONE,
)
async def list_async_commands(
    device_id: DeviceId,
    request: Request,
    runtime: RuntimeDep,
    who: Signed,
    paging: Paging,
    filters: Filters,
) -> dict[str, Any]:
    """The device's queue, newest first: commands held (PENDING), sent (SENT) or at the
    device (DELIVERED) and not finished; created within the time window, if given."""
    return await _device_page(request, runtime, who, device_id, paging, filters, finished=False)


@router.get(
    "/devices/{device_id}/async-commands-history",
    response_model=ListAsyncHistoryCommandsWire,
    summary="ListAsyncHistoryCommands",
    **EXCLUDE_NONE,
)
async def list_async_history_commands(
    device_id: DeviceId,
    request: Request,
    runtime: RuntimeDep,
    who: Signed,
    paging: Paging,
    filters: Filters,
) -> dict[str, Any]:
    """The device's finished commands, newest first: SUCCESSFUL, FAILED, TIMEOUT, EXPIRED
    (and CANCELED by the legacy dialect)."""
    return await _device_page(request, runtime, who, device_id, paging, filters, finished=True)


@router.post(
    "/devices/{device_id}/async-commands-history/count",
    response_model=CountWire,
    summary="CountAsyncHistoryCommands",
)
async def count_async_history_commands(
    device_id: DeviceId, request: Request, runtime: RuntimeDep, who: Signed, filters: Filters
) -> dict[str, Any]:
    """How many finished commands the device has, filtered as its history is."""
    page = PageRequest(limit=1)
    body = await _device_page(request, runtime, who, device_id, page, filters, finished=True)
    return {"count": body["page"]["count"]}


@router.get(
    "/devices/{device_id}/async-commands/{command_id}",
    response_model=AsyncCommandWire,
    summary="ShowAsyncDeviceCommand",
    **EXCLUDE_NONE,
)
async def show_async_device_command(
    device_id: DeviceId, command_id: CommandId, request: Request, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """One async command of a device, with its status and the device's answer."""
    app_id = await device_app_id(runtime, who, device_id)
    command = await commands_of(request, runtime).get(app_id, command_id)
    if command.device_id != device_id:
        raise NotFound("command", command_id)
    return command_wire(command)


@router.post(
    "/devices/{device_id}/commands",
    response_model=CommandResultWire,
    summary="CreateCommand",
    **EXCLUDE_NONE,
)
async def create_command(
    device_id: DeviceId, body: CreateCommand, request: Request, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """Send a command to an online device and wait for its answer (the command timeout,
    20 s by default; then IOTDA.014111 in the body)."""
    app_id = await device_app_id(runtime, who, device_id)
    commands = commands_of(request, runtime)
    command = await commands.send(
        app_id, device_id, body.service_id or "", body.command_name or "", body.paras,
        expire_time_s=0,
    )  # fmt: skip
    try:
        async with asyncio.timeout(runtime.settings.command_timeout_s + SYNC_MARGIN_S):
            while not command.finished:
                await asyncio.sleep(SYNC_POLL_S)
                command = await commands.get(app_id, command.command_id)
    except TimeoutError:
        code, message = COMMAND_TIMED_OUT
        return {"command_id": command.command_id, "error_code": code, "error_msg": message}
    if command.status == "SUCCESSFUL":
        return {"command_id": command.command_id, "response": command.result}
    _, page = await runtime.tasks.subtasks(command.command_id, project_id=who.project_id)
    subtask = page.items[0]
    code = SUBTASK_ERROR_CODES.get(subtask.error_code or "", subtask.error_code or "")
    if code == "IOTDA.014016":
        raise WireError(403, code, "Operation not allowed. The device is not online.")
    if command.status == "TIMEOUT":
        code, message = COMMAND_TIMED_OUT
        return {"command_id": command.command_id, "error_code": code, "error_msg": message}
    # the device answered with a failure: its answer is the response (as IoTDA passes it on)
    return {
        "command_id": command.command_id,
        "response": command.result,
        "error_code": code or None,
        "error_msg": subtask.error_msg,
    }
