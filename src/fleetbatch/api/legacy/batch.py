"""`/iocm/app/batchtask/v1.1.0`: create a DeviceCmd batch task, read it, page its details.

A thin mapping over `TaskService`: a DeviceCmd task is an internal createAsyncCommands
task (commands held for offline devices until the task's timeout, PENDING → SENT →
DELIVERED → SUCCESSFUL / FAILED / TIMEOUT), so it is the same task in every dialect.
Seeds: S003 (create), S000 (queryOneTask), S001 (taskDetails).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from fleetbatch.api.legacy.common import (
    LegacyRoute,
    act_for,
    authenticate,
    json_body,
    json_response,
    mapped,
    query_int,
    query_value,
    read_wire,
    runtime_of,
)
from fleetbatch.api.legacy.errors import Api, fail
from fleetbatch.api.legacy.schemas import BatchTaskCreateIn, DeviceCmdParam, openapi_body
from fleetbatch.domain import legacy as L
from fleetbatch.domain.errors import NotFound
from fleetbatch.domain.ids import format_record_id, is_hex24
from fleetbatch.domain.tasks import (
    DEVICE_COMMAND_SOURCE,
    NewTask,
    Selector,
    SelectorKind,
    Subtask,
    Task,
    TaskPolicy,
    TaskType,
    request_id_for,
)
from fleetbatch.domain.timefmt import to_compact

router = APIRouter(prefix="/iocm/app/batchtask/v1.1.0", route_class=LegacyRoute)

SOURCE = "legacy"
_TASK_TYPES = {
    TaskType.CREATE_ASYNC_COMMANDS: L.DEVICE_CMD,
    TaskType.CREATE_COMMANDS: L.DEVICE_CMD,
    TaskType.DELETE_DEVICES: "DeviceDel",
}


# --- create -----------------------------------------------------------------------------


def _bad(detail: str) -> Exception:
    return fail(Api.CREATE, 400, "50400", detail)


def _targets(param: DeviceCmdParam) -> tuple[Selector | None, list[str] | None]:
    """The selector, or the explicit device list, that `param.type` names (S003)."""
    kind = param.type
    if kind == "DeviceList":
        if not param.device_list:
            raise _bad("param.deviceList is required for DeviceList")
        if any(not isinstance(d, str) or not 1 <= len(d) <= 128 for d in param.device_list):
            raise _bad("param.deviceList: each device id is 1 to 128 characters")
        return None, list(dict.fromkeys(param.device_list))
    if kind == "DeviceType":
        if not (param.device_type and param.manufacturer_id and param.model):
            raise _bad("param.deviceType, manufacturerId and model are required for DeviceType")
        return (
            Selector(
                SelectorKind.DEVICE_TYPE,
                device_type=param.device_type,
                manufacturer_id=param.manufacturer_id,
                model=param.model,
            ),
            None,
        )
    if kind == "DeviceArea":
        if not param.device_location:
            raise _bad("param.deviceLocation is required for DeviceArea")
        return Selector(SelectorKind.AREA, area=param.device_location), None
    if kind in ("GroupList", "GroupIdList"):
        groups = param.group_list
        if not groups or any(not isinstance(g, str) or not 1 <= len(g) <= 64 for g in groups):
            raise _bad(f"param.groupList is required for {kind}: group names or ids of 1-64")
        unique = tuple(dict.fromkeys(groups))
        if kind == "GroupList":
            return Selector(SelectorKind.GROUP_NAMES, group_names=unique), None
        return Selector(SelectorKind.GROUPS, group_ids=unique), None
    if kind == "Broadcast":
        return Selector(SelectorKind.ALL), None
    raise _bad(f"param.type must be one of {', '.join(sorted(L.PARAM_TYPES))}")


def _check_callback(url: str | None) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise _bad("param.callbackUrl must be an http:// or https:// URL")


@router.post(
    "/tasks", openapi_extra=openapi_body(BatchTaskCreateIn, nested={"param": DeviceCmdParam})
)
@router.post("/tasks/", include_in_schema=False)
async def create_batch_task(request: Request) -> Response:
    """S003: `{"taskID": ...}`; errors as the seed lists them (some with HTTP 200)."""
    caller = await authenticate(request, Api.CREATE)
    body = await json_body(request, Api.CREATE, "50400")
    caller = await act_for(request, Api.CREATE, caller, body.get("appId"))
    wire = read_wire(BatchTaskCreateIn, body, Api.CREATE, "50400")
    if wire.task_type not in L.DOCUMENTED_TASK_TYPES:
        raise _bad(f"taskType must be one of {', '.join(sorted(L.DOCUMENTED_TASK_TYPES))}")
    if wire.task_type != L.DEVICE_CMD:
        raise _bad(f"taskType {wire.task_type} cannot be created here; only DeviceCmd can")
    param = read_wire(DeviceCmdParam, wire.param, Api.CREATE, "50400", where="param.")
    _check_callback(param.callback_url)
    selector, device_ids = _targets(param)
    tags: dict[str, str] = {}
    for tag in wire.tags or ():
        if tag.tag_name in tags:
            raise _bad(f"tags: tagName {tag.tag_name} is given twice")
        tags[tag.tag_name] = tag.tag_value
    runtime = runtime_of(request)
    if device_ids is not None:
        foreign = await runtime.registry.devices.owned_by_others(caller.acting_app_id, device_ids)
        if foreign:
            raise fail(Api.CREATE, 401, "100028", f"device {foreign[0]} belongs to another app")
    timeout_s = wire.timeout * 60
    command = param.command
    echo = param.model_dump(by_alias=True, exclude_none=True)
    new = NewTask(
        app_id=caller.acting_app_id,
        task_type=TaskType.CREATE_ASYNC_COMMANDS,
        name=wire.task_name,
        document={
            "service_id": command.service_id,
            "command_name": command.method,
            "paras": command.paras or {},
            # held for offline devices until the task times out (S003: pending commands)
            "send_strategy": "delay",
            "expire_time": timeout_s,
        },
        selector=selector,
        policy=TaskPolicy(max_retransmit=param.max_retransmit or 0, timeout_s=timeout_s),
        callback_url=param.callback_url,
        tags=tags,
        source=SOURCE,
        creator_app_id=caller.app.app_id,
        ext_info={"legacy": {"param": echo, "timeout": wire.timeout}},
    )
    with mapped(Api.CREATE):
        task = await runtime.tasks.create(
            new,
            device_ids,
            unique_name=True,
            max_unfinished=runtime.settings.legacy_max_unfinished_tasks,
        )
    return json_response({"taskID": task.task_id})


# --- read -------------------------------------------------------------------------------


def legacy_task_type(task: Task) -> str:
    """S000 taskType of an internal task."""
    return _TASK_TYPES.get(task.task_type, task.task_type.value)


def _legacy_echo(task: Task) -> dict[str, Any] | None:
    ext = task.ext_info
    if isinstance(ext, dict) and isinstance(ext.get("legacy"), dict):
        echo: dict[str, Any] = ext["legacy"]
        return echo
    return None


def param_of(task: Task) -> dict[str, Any]:
    """S000 `param`: as created here, or derived for a task another dialect created."""
    echo = _legacy_echo(task)
    if echo is not None and isinstance(echo.get("param"), dict):
        param: dict[str, Any] = echo["param"]
        return param
    selector = task.selector
    derived: dict[str, Any]
    if selector is None:
        derived = {"type": "DeviceList", "deviceList": list(task.targets or ())}
    elif selector.kind is SelectorKind.DEVICE_TYPE:
        derived = {
            "type": "DeviceType",
            "deviceType": selector.device_type,
            "manufacturerId": selector.manufacturer_id,
            "model": selector.model,
        }
    elif selector.kind is SelectorKind.AREA:
        derived = {"type": "DeviceArea", "deviceLocation": selector.area}
    elif selector.kind is SelectorKind.GROUP_NAMES:
        derived = {"type": "GroupList", "groupList": list(selector.group_names)}
    elif selector.kind is SelectorKind.GROUPS:
        derived = {"type": "GroupIdList", "groupList": list(selector.group_ids)}
    else:
        derived = {"type": "Broadcast"}
    document = task.document
    if "service_id" in document:
        derived["command"] = {
            "serviceId": document.get("service_id"),
            "method": document.get("command_name"),
            "paras": document.get("paras"),
        }
    if task.callback_url:
        derived["callbackUrl"] = task.callback_url
    if task.policy.max_retransmit:
        derived["maxRetransmit"] = task.policy.max_retransmit
    return derived


def task_view(task: Task, *, with_tags: bool) -> dict[str, Any]:
    """S000 QueryOneTaskOutDTO."""
    echo = _legacy_echo(task)
    if echo is not None:
        timeout = echo.get("timeout")
    else:
        timeout = task.policy.timeout_s // 60 if task.policy.timeout_s else None
    view: dict[str, Any] = {
        "appId": task.app_id,
        "taskId": task.task_id,
        "taskName": task.name,
        "operator": task.creator_app_id or task.app_id,
        "taskFrom": L.task_from(task.source),
        "taskType": legacy_task_type(task),
        "status": L.TASK_STATUS[task.status],
        "startTime": to_compact(task.created_at),
        "timeout": timeout,
        **L.task_counts(task.progress),
        "param": param_of(task),
    }
    if with_tags:
        view["tags"] = [{"tagName": k, "tagValue": v} for k, v in task.tags.items()]
    return view


async def _visible_task(request: Request, api: Api, task_id: str, app_id: str) -> Task:
    """The acting app's batch task; 404/105005 for any other id."""
    if not is_hex24(task_id):
        raise fail(api, 404, "105005", f"task {task_id}")
    try:
        task = await runtime_of(request).tasks.get(task_id)
    except NotFound:
        raise fail(api, 404, "105005", f"task {task_id}") from None
    if task.app_id != app_id or task.source == DEVICE_COMMAND_SOURCE:
        raise fail(api, 404, "105005", f"task {task_id}")
    return task


@router.get("/tasks")
@router.get("/tasks/", include_in_schema=False)
async def query_without_task_id(request: Request) -> Response:
    """A query without its mandatory taskId: 400/100019 (S000 "Illegal request")."""
    await authenticate(request, Api.QUERY, query_value(request, "appId"))
    raise fail(Api.QUERY, 400, "100019", "taskId is required")


@router.get("/tasks/{task_id}")
@router.get("/tasks/{task_id}/", include_in_schema=False)
async def query_one_task(request: Request, task_id: str) -> Response:
    """S000 queryOneTask: every field; `tags` only with `select=tag`."""
    caller = await authenticate(request, Api.QUERY, query_value(request, "appId"))
    select = query_value(request, "select")
    if select is not None and select != "tag":
        raise fail(Api.QUERY, 400, "100022", "select can only be tag")
    task = await _visible_task(request, Api.QUERY, task_id, caller.acting_app_id)
    return json_response(task_view(task, with_tags=select == "tag"))


def detail_view(subtask: Subtask) -> dict[str, Any]:
    """S001 QueryTaskDetailDTOCloud2NA; `output` and `error` are JSON text."""
    result = orjson.loads(subtask.output) if subtask.output else None
    request_id = request_id_for(subtask.id, subtask.attempt) if subtask.attempt else None
    output = orjson.dumps({"requestId": request_id, "commandResult": result}).decode()
    error = None
    if subtask.error_code is not None:
        error = orjson.dumps(
            {"error_code": subtask.error_code, "error_desc": subtask.error_msg or ""}
        ).decode()
    return {
        "status": L.SUBTASK_STATUS[subtask.status],
        "output": output,
        "error": error,
        "param": {"deviceId": subtask.target, "commandId": format_record_id(subtask.id)},
    }


def _subtask_id(command_id: str | None) -> int | None:
    """The subtask a commandId names (-1, matching none, beyond the id range)."""
    if command_id is None:
        return None
    value = int(command_id, 16)
    return value if value < 1 << 63 else -1


@router.get("/taskDetails")
@router.get("/taskDetails/", include_in_schema=False)
async def query_task_details(request: Request) -> Response:
    """S001 taskDetails: filters status / deviceId / commandId, pageNo ≥ 0, pageSize 1-250."""
    api = Api.QUERY
    caller = await authenticate(request, api, query_value(request, "appId"))
    task_id = query_value(request, "taskId")
    if task_id is None:
        raise fail(api, 400, "100022", "taskId is required")
    wire_status = query_value(request, "status")
    statuses = None
    if wire_status is not None:
        statuses = L.statuses_for(wire_status)
        if statuses is None:
            raise fail(api, 400, "100022", "status must be Pending, WaitResult, Success, "
                       "Fail or Timeout")  # fmt: skip
    device_id = query_value(request, "deviceId")
    command_id = query_value(request, "commandId")
    if command_id is not None and not is_hex24(command_id):
        raise fail(api, 400, "100022", "commandId is not a command id of this platform")
    page_no = query_int(request, "pageNo", api, "100022", default=0, low=0, high=10**9)
    page_size = query_int(
        request, "pageSize", api, "100022",
        default=L.DEFAULT_PAGE_SIZE, low=1, high=L.MAX_PAGE_SIZE,
    )  # fmt: skip
    task = await _visible_task(request, api, task_id, caller.acting_app_id)
    with mapped(api):
        _, page = await runtime_of(request).tasks.subtasks_by_number(
            task.task_id,
            page_no,
            page_size,
            statuses=statuses,
            target=device_id,
            subtask_id=_subtask_id(command_id),
        )
    return json_response(
        {
            "totalCount": page.count,
            "pageNo": page_no,
            "pageSize": page_size,
            "taskDetails": [detail_view(s) for s in page.items],
        }
    )
