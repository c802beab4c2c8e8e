"""Batch tasks over v5 (spec: iotda-v5 §4; ShowBatchTask: seed 002): wire schemas and mapping.

A thin mapping over `TaskService`: requests become `NewTask`s in the internal vocabulary,
tasks and subtasks go back out with IoTDA's names and status words (`wire`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from fleetbatch.api.v5 import wire
from fleetbatch.api.v5.common import (
    EXCLUDE_NONE,
    ID_PATTERN,
    PageOut,
    Paging,
    RuntimeDep,
    Signed,
    app_of,
    paged,
)
from fleetbatch.api.v5.route import Caller, V5Route
from fleetbatch.domain.errors import Conflict, InvalidInput, NotFound
from fleetbatch.domain.registry import check_group_id
from fleetbatch.domain.tasks import (
    DEVICE_COMMAND_SOURCE,
    MAX_RETRIES,
    REGISTRY_TASK_TYPES,
    NewTask,
    Selector,
    SelectorKind,
    Subtask,
    Task,
    TaskPolicy,
    TaskType,
)
from fleetbatch.domain.timefmt import from_compact, to_compact
from fleetbatch.engine.device_messages import SOURCE as DEVICE_MESSAGE_SOURCE
from fleetbatch.engine.service import TargetResult
from fleetbatch.runtime import Runtime

# single-device commands and messages are tasks inside, never batch tasks on the wire
SINGLE_DEVICE_SOURCES = (DEVICE_COMMAND_SOURCE, DEVICE_MESSAGE_SOURCE)

router = APIRouter(route_class=V5Route, tags=["Batch tasks"])

MAX_TARGETS = 30_000
MAX_BATCH_TARGETS = 100
MAX_EXT_INFO_CHARS = 512
MAX_RETRY_INTERVAL_MIN = 1440
COMPACT_TIME = r"^\d{8}T\d{6}Z$"

TaskTypeWord = Literal[
    "firmwareUpgrade",
    "softwareUpgrade",
    "moduleUpgrade",
    "createDevices",
    "updateDevices",
    "deleteDevices",
    "freezeDevices",
    "unfreezeDevices",
    "createCommands",
    "createAsyncCommands",
    "createMessages",
    "updateDeviceShadows",
]
TaskStatusWord = Literal[
    "Initializing",
    "Waitting",
    "Processing",
    "Success",
    "Fail",
    "PartialSuccess",
    "Stopped",
    "Stopping",
]
DetailStatusWord = Literal[
    "Success", "Fail", "Processing", "FailWaitRetry", "Stopped", "Waitting", "Removed"
]
TargetId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=ID_PATTERN)]
TaskId = Annotated[
    str,
    Path(pattern=r"^[a-f0-9]{1,24}$", description="Task id: 24 lower-case hex"),
]


class TaskPolicyWire(BaseModel):
    """TaskPolicy: when the task runs and how failed subtasks are retried."""

    schedule_time: str | None = Field(
        None,
        pattern=COMPACT_TIME,
        description="yyyyMMdd'T'HHmmss'Z' (UTC), within 7 days; absent: now",
        examples=["20151212T121212Z"],
    )
    retry_count: int | None = Field(
        None, ge=0, le=MAX_RETRIES, description="Automatic retries of a failed subtask, ≤5"
    )
    retry_interval: int | None = Field(
        None,
        ge=1,
        le=MAX_RETRY_INTERVAL_MIN,
        description="Minutes between retries, ≤1440; comes with retry_count",
    )


class CreateBatchTask(BaseModel):
    """CreateBatchTask body; exactly one target source is used: targets > targets_filter >
    document_source."""

    app_id: str | None = Field(None, max_length=36, pattern=ID_PATTERN)
    task_name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_\u4e00-\u9fa5]+$")
    task_type: TaskTypeWord
    task_mode: Literal["GATEWAY"] | None = None
    need_confirm: bool | None = None
    task_ext_info: Any = Field(None, description="Echoed; at most 512 characters as JSON")
    targets: list[TargetId] | None = Field(None, max_length=MAX_TARGETS)
    targets_filter: dict[str, Any] | None = Field(
        None, description='Only {"group_ids": [group_id, ...]}: members of these groups'
    )
    document: dict[str, Any] | None = None
    task_policy: TaskPolicyWire | None = None
    document_source: str | None = Field(None, max_length=128, pattern=ID_PATTERN)


class TaskProgressWire(BaseModel):
    """Subtask counts by state."""

    total: int
    processing: int
    success: int
    fail: int
    waitting: int
    fail_wait_retry: int
    stopped: int
    removed: int


class TaskWire(BaseModel):
    """Task: the request echoed, with status and live progress."""

    task_id: str = Field(description="24 lower-case hex")
    task_name: str
    task_type: str
    task_mode: str | None = None
    need_confirm: bool | None = None
    task_ext_info: Any = None
    targets: list[str] | None = None
    targets_filter: dict[str, Any] | None = None
    document: dict[str, Any] | None = None
    task_policy: TaskPolicyWire | None = None
    status: TaskStatusWord
    status_desc: str | None = None
    task_progress: TaskProgressWire
    create_time: str = Field(description="yyyyMMdd'T'HHmmss'Z'")


class ErrorInfoWire(BaseModel):
    """Why a subtask failed."""

    error_code: str | None = None
    error_msg: str | None = None


class TaskDetailWire(BaseModel):
    """TaskDetail: one target's subtask."""

    target: str
    status: Literal["Waitting", "Processing", "Success", "Fail", "FailWaitRetry", "Stopped"]
    output: str | None = None
    error: ErrorInfoWire | None = None


class ShowBatchTaskWire(BaseModel):
    """ShowBatchTask: the whole task and one page of its subtasks."""

    batchtask: TaskWire
    task_details: list[TaskDetailWire]
    page: PageOut


class ListBatchTasksWire(BaseModel):
    """ListBatchTasks: one page of tasks, newest first."""

    batchtasks: list[TaskWire]
    page: PageOut


class BatchTargets(BaseModel):
    """Which targets stop/retry/confirm act on; absent or empty: every eligible subtask."""

    model_config = ConfigDict(extra="forbid")

    targets: list[TargetId] | None = Field(None, max_length=MAX_BATCH_TARGETS)


class BatchTargetResultWire(BaseModel):
    """What happened to one named target."""

    target: str
    status: Literal["success", "failure"]
    error_code: str | None = None
    error_msg: str | None = None


class BatchTargetResultsWire(BaseModel):
    """Stop/retry/confirm response."""

    targets: list[BatchTargetResultWire]


# --- mapping ----------------------------------------------------------------------------------


def new_task(
    body: CreateBatchTask, app_id: str, file_device_ids: list[str] | None = None
) -> tuple[NewTask, list[str] | None]:
    """The internal request and its explicit device list (None when a selector names them).

    `file_device_ids`: what the `document_source` file lists, when that is the source.
    """
    try:
        task_type = TaskType(body.task_type)
    except ValueError:
        raise InvalidInput("task_type", f"{body.task_type} is not supported yet") from None
    if body.need_confirm:
        raise InvalidInput("need_confirm", "applies only to upgrade tasks")
    if body.task_ext_info is not None:
        ext = json.dumps(body.task_ext_info, ensure_ascii=False, separators=(",", ":"))
        if len(ext) > MAX_EXT_INFO_CHARS:
            raise InvalidInput("task_ext_info", f"must be at most {MAX_EXT_INFO_CHARS} characters")
    device_ids: list[str] | None = None
    selector: Selector | None = None
    if body.targets is not None:
        if not body.targets:
            raise InvalidInput("targets", "must name at least one device")
        if len(set(body.targets)) != len(body.targets):
            raise InvalidInput("targets", "names a device more than once")
        device_ids = list(body.targets)
    elif body.targets_filter is not None:
        selector = Selector(SelectorKind.GROUPS, group_ids=_group_ids(body.targets_filter))
    elif body.document_source is not None:
        if task_type not in REGISTRY_TASK_TYPES:
            raise InvalidInput(
                "document_source", "serves deleteDevices, freezeDevices and unfreezeDevices"
            )
        assert file_device_ids is not None
        device_ids = file_device_ids
    else:
        raise InvalidInput("targets", "give targets, targets_filter or document_source")
    new = NewTask(
        app_id=app_id,
        task_type=task_type,
        name=body.task_name,
        document=body.document or {},
        selector=selector,
        policy=_policy(body.task_policy),
        targets=tuple(body.targets) if body.targets is not None else None,
        targets_filter=body.targets_filter if body.targets is None else None,
        ext_info=body.task_ext_info,
        mode=body.task_mode,
        source="v5",
    )
    return new, device_ids


def _group_ids(targets_filter: dict[str, Any]) -> tuple[str, ...]:
    if set(targets_filter) != {"group_ids"}:
        raise InvalidInput("targets_filter", "the only key supported is group_ids")
    group_ids = targets_filter["group_ids"]
    if not isinstance(group_ids, list) or not group_ids:
        raise InvalidInput("targets_filter.group_ids", "must be a non-empty list of group ids")
    for group_id in group_ids:
        check_group_id("targets_filter.group_ids", group_id)
    return tuple(group_ids)


def _policy(wire_policy: TaskPolicyWire | None) -> TaskPolicy:
    if wire_policy is None:
        return TaskPolicy()
    if (wire_policy.retry_count is None) != (wire_policy.retry_interval is None):
        raise InvalidInput(
            "task_policy.retry_interval", "retry_count and retry_interval go together"
        )
    schedule_at = None
    if wire_policy.schedule_time is not None:
        try:
            schedule_at = from_compact(wire_policy.schedule_time)
        except ValueError as exc:
            raise InvalidInput("task_policy.schedule_time", str(exc)) from None
    return TaskPolicy(
        schedule_at_ms=schedule_at,
        retry_count=wire_policy.retry_count or 0,
        retry_interval_s=(wire_policy.retry_interval or 0) * 60,
    )


def task_wire(task: Task) -> dict[str, Any]:
    """A task as IoTDA's Task object."""
    policy: dict[str, Any] = {}
    if task.policy.schedule_at_ms is not None:
        policy["schedule_time"] = to_compact(task.policy.schedule_at_ms)
    if task.policy.retry_count:
        policy["retry_count"] = task.policy.retry_count
        policy["retry_interval"] = task.policy.retry_interval_s // 60
    return {
        "task_id": task.task_id,
        "task_name": task.name,
        "task_type": task.task_type.value,
        "task_mode": task.mode,
        "need_confirm": task.need_confirm,
        "task_ext_info": task.ext_info,
        "targets": list(task.targets) if task.targets is not None else None,
        "targets_filter": dict(task.targets_filter) if task.targets_filter is not None else None,
        "document": dict(task.document) or None,
        "task_policy": policy or None,
        "status": wire.task_word(task.status, task.progress),
        "status_desc": task.status_desc,
        "task_progress": wire.progress_wire(task.progress),
        "create_time": to_compact(task.created_at),
    }


def detail_wire(subtask: Subtask) -> dict[str, Any]:
    """A subtask as IoTDA's TaskDetail."""
    detail: dict[str, Any] = {
        "target": subtask.target,
        "status": wire.SUBTASK_WORDS[subtask.status],
        "output": subtask.output,
    }
    if subtask.error_code is not None:
        code = wire.SUBTASK_ERROR_CODES.get(subtask.error_code, subtask.error_code)
        detail["error"] = {"error_code": code, "error_msg": subtask.error_msg}
    return detail


def results_wire(results: list[TargetResult]) -> dict[str, Any]:
    """Stop/retry per-target results."""
    return {
        "targets": [
            {"target": r.target, "status": "success"}
            if r.ok
            else {
                "target": r.target,
                "status": "failure",
                "error_code": r.error_code,
                "error_msg": r.error_msg,
            }
            for r in results
        ]
    }


async def batch_task(runtime: Runtime, project_id: str, task_id: str) -> Task:
    """The project's batch task; a single-device command (a task inside) is not one."""
    task = await runtime.tasks.get(task_id, project_id=project_id)
    if task.source in SINGLE_DEVICE_SOURCES:
        raise NotFound("task", task_id)
    return task


# --- operations -------------------------------------------------------------------------------


@router.post(
    "/batchtasks",
    status_code=201,
    response_model=TaskWire,
    summary="CreateBatchTask",
    **EXCLUDE_NONE,
)
async def create_batch_task(
    body: CreateBatchTask, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """Create a batch task over devices (targets, group members); it starts at once or at
    schedule_time."""
    app = await app_of(runtime, who, body.app_id)
    from_file = None
    if body.targets is None and body.targets_filter is None and body.document_source:
        from_file = await runtime.registry.batch_files.device_ids(
            who.project_id, body.document_source
        )
    new, device_ids = new_task(body, app.app_id, from_file)
    return task_wire(await runtime.tasks.create(new, device_ids))


@router.get(
    "/batchtasks", response_model=ListBatchTasksWire, summary="ListBatchTasks", **EXCLUDE_NONE
)
async def list_batch_tasks(
    runtime: RuntimeDep,
    who: Signed,
    paging: Paging,
    task_type: Annotated[TaskTypeWord, Query(description="Task type (required)")],
    status: Annotated[TaskStatusWord | None, Query(description="Task status")] = None,
    app_id: Annotated[str | None, Query(max_length=36, pattern=ID_PATTERN)] = None,
) -> dict[str, Any]:
    """The project's tasks of one type, newest first."""
    internal = wire.TASK_FILTERS[status] if status is not None else None
    page = await runtime.tasks.list_tasks(
        who.project_id,
        paging,
        app_id=app_id,
        task_type=task_type,
        status=internal,
        exclude_sources=SINGLE_DEVICE_SOURCES,
    )
    return paged("batchtasks", page, task_wire)


@router.get(
    "/batchtasks/{task_id}",
    response_model=ShowBatchTaskWire,
    summary="ShowBatchTask",
    **EXCLUDE_NONE,
)
async def show_batch_task(
    task_id: TaskId,
    runtime: RuntimeDep,
    who: Signed,
    paging: Paging,
    task_detail_status: Annotated[
        DetailStatusWord | None, Query(description="Only subtasks in this state")
    ] = None,
    target: Annotated[
        str | None,
        Query(max_length=128, pattern=ID_PATTERN, description="Only this device's subtask"),
    ] = None,
) -> dict[str, Any]:
    """The whole task and one page of its subtasks (newest first below the marker)."""
    statuses = wire.SUBTASK_FILTERS[task_detail_status] if task_detail_status else None
    task, page = await runtime.tasks.subtasks(
        task_id, project_id=who.project_id, page=paging, target=target, statuses=statuses
    )
    if task.source in SINGLE_DEVICE_SOURCES:
        raise NotFound("task", task_id)
    return {"batchtask": task_wire(task), **paged("task_details", page, detail_wire)}


@router.delete(
    "/batchtasks/{task_id}", status_code=204, response_class=Response, summary="DeleteBatchTask"
)
async def delete_batch_task(task_id: TaskId, runtime: RuntimeDep, who: Signed) -> Response:
    """Delete a finished task (Success, Fail, PartialSuccess, Stopped) and its subtasks."""
    await batch_task(runtime, who.project_id, task_id)
    await runtime.tasks.delete(task_id, project_id=who.project_id)
    return Response(status_code=204)


OptionalTargets = Annotated[BatchTargets | None, Body()]


async def _named_targets(
    runtime: Runtime, who: Caller, task_id: str, body: BatchTargets | None
) -> list[str] | None:
    """The targets a stop or retry names (None: the whole task) once the batch task is found."""
    await batch_task(runtime, who.project_id, task_id)
    return body.targets if body and body.targets else None


@router.post(
    "/batchtasks/{task_id}/stop",
    response_model=BatchTargetResultsWire,
    summary="StopBatchTask",
    **EXCLUDE_NONE,
)
async def stop_batch_task(
    task_id: TaskId, runtime: RuntimeDep, who: Signed, body: OptionalTargets = None
) -> dict[str, Any]:
    """Stop the task, or the named targets' waiting, processing and retry-waiting subtasks."""
    targets = await _named_targets(runtime, who, task_id, body)
    results = await runtime.tasks.stop(task_id, project_id=who.project_id, targets=targets)
    return results_wire(results)


@router.post(
    "/batchtasks/{task_id}/retry",
    response_model=BatchTargetResultsWire,
    summary="RetryBatchTask",
    **EXCLUDE_NONE,
)
async def retry_batch_task(
    task_id: TaskId, runtime: RuntimeDep, who: Signed, body: OptionalTargets = None
) -> dict[str, Any]:
    """Run the failed, retry-waiting and stopped subtasks again (all, or the named targets')."""
    targets = await _named_targets(runtime, who, task_id, body)
    results = await runtime.tasks.retry(task_id, project_id=who.project_id, targets=targets)
    return results_wire(results)


@router.post(
    "/batchtasks/{task_id}/confirm",
    response_model=BatchTargetResultsWire,
    summary="ConfirmBatchTask",
    **EXCLUDE_NONE,
)
async def confirm_batch_task(
    task_id: TaskId, runtime: RuntimeDep, who: Signed, body: OptionalTargets = None
) -> dict[str, Any]:
    """Release subtasks held for confirmation; only upgrade tasks created with need_confirm
    wait for it, and fleetbatch runs no upgrade tasks yet."""
    task = await batch_task(runtime, who.project_id, task_id)
    raise Conflict(f"task {task.task_id} ({task.task_type.value}) does not wait for confirmation")
