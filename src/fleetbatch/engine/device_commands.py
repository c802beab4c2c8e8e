"""Single-device commands on the batch engine's path, for every dialect.

A command is a createAsyncCommands task with one subtask and its own source, so it is
dispatched, retried, timed out and counted exactly like one device of a batch task, and
never listed among batch tasks. Its status is the subtask's async-command phase
(PENDING, SENT, DELIVERED, SUCCESSFUL, FAILED, TIMEOUT, EXPIRED), or CANCELED once
stopped. The legacy v1.4.0 deviceCommands call maps this module; the v5 dialect's
single-device async commands can map the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fleetbatch.domain.errors import Conflict, InvalidInput, NotFound
from fleetbatch.domain.ids import ObjectIdGenerator
from fleetbatch.domain.registry import Page
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import (
    DEVICE_COMMAND_SOURCE,
    NewTask,
    Subtask,
    Task,
    TaskPolicy,
    TaskType,
)
from fleetbatch.engine.service import TaskService
from fleetbatch.store import device_commands as command_rows
from fleetbatch.store.paging import PageRequest

SOURCE = DEVICE_COMMAND_SOURCE
PENDING = "PENDING"
CANCELED = "CANCELED"
# a cancel task is carried out when it is made
CANCEL_DONE = "SUCCESS"
# legacy v1.4.0: a command waits this long for its device unless told otherwise (48 h)
DEFAULT_EXPIRE_S = 48 * 3600
MAX_EXPIRE_S = 48 * 3600
MAX_RETRANSMIT = 3
_FINAL = ("SUCCESSFUL", "FAILED", "TIMEOUT", "EXPIRED", CANCELED)
# every status a command can show, in the order of its life
STATUSES = ("PENDING", "SENT", "DELIVERED", *_FINAL)


@dataclass(frozen=True, slots=True)
class DeviceCommand:
    """One command to one device, as every dialect shows it."""

    command_id: str
    app_id: str
    creator_app_id: str | None
    device_id: str
    service_id: str
    command_name: str
    paras: Mapping[str, Any]
    callback_url: str | None
    expire_time_s: int
    max_retransmit: int
    status: str
    result: Any  # the device's answer (paras of its response), or None
    issued_times: int
    created_at: int
    sent_at: int | None
    finished_at: int | None
    updated_at: int

    @property
    def finished(self) -> bool:
        """Whether the status is final."""
        return self.status in _FINAL


def command_from(task: Task, subtask: Subtask) -> DeviceCommand:
    """The command a one-subtask task stands for."""
    document = task.document
    stopped = subtask.status is SubtaskStatus.STOPPED
    status = CANCELED if stopped else subtask.phase or PENDING
    return DeviceCommand(
        command_id=task.task_id,
        app_id=task.app_id,
        creator_app_id=task.creator_app_id,
        device_id=subtask.target,
        service_id=str(document.get("service_id", "")),
        command_name=str(document.get("command_name", "")),
        paras=document.get("paras") or {},
        callback_url=task.callback_url,
        expire_time_s=int(document.get("expire_time", 0)),
        max_retransmit=task.policy.max_retransmit,
        status=status,
        result=orjson.loads(subtask.output) if subtask.output else None,
        issued_times=subtask.attempt,
        created_at=task.created_at,
        sent_at=subtask.started_at,
        finished_at=subtask.finished_at,
        updated_at=subtask.updated_at,
    )


@dataclass(frozen=True, slots=True)
class CancelTask:
    """A request to cancel a device's pending commands, carried out when made."""

    task_id: str
    app_id: str
    device_id: str
    status: str
    commands: tuple[DeviceCommand, ...]
    created_at: int


class DeviceCommands:
    """Send, read, page and cancel single-device commands."""

    def __init__(self, tasks: TaskService) -> None:
        self.tasks = tasks
        self._ids = ObjectIdGenerator()

    async def send(
        self,
        app_id: str,
        device_id: str,
        service_id: str,
        command_name: str,
        paras: Mapping[str, Any] | None = None,
        *,
        expire_time_s: int = DEFAULT_EXPIRE_S,
        max_retransmit: int = 0,
        callback_url: str | None = None,
        creator_app_id: str | None = None,
    ) -> DeviceCommand:
        """Queue a command; held (PENDING) while the device is offline, up to `expire_time_s`.

        0 sends it at once whatever the device's state (an offline device fails it).
        Raises InvalidInput, NotFound (app or device of another app).
        """
        if not 0 <= expire_time_s <= MAX_EXPIRE_S:
            raise InvalidInput("expireTime", f"must be 0 to {MAX_EXPIRE_S} seconds")
        if not 0 <= max_retransmit <= MAX_RETRANSMIT:
            raise InvalidInput("maxRetransmit", f"must be 0 to {MAX_RETRANSMIT}")
        new = NewTask(
            app_id=app_id,
            task_type=TaskType.CREATE_ASYNC_COMMANDS,
            name=f"command to {device_id}"[:256],
            document={
                "service_id": service_id,
                "command_name": command_name,
                "paras": dict(paras or {}),
                "send_strategy": "delay" if expire_time_s else "immediately",
                "expire_time": expire_time_s,
            },
            policy=TaskPolicy(max_retransmit=max_retransmit),
            callback_url=callback_url,
            source=SOURCE,
            creator_app_id=creator_app_id,
        )
        task = await self.tasks.create(new, [device_id])
        return await self.get(app_id, task.task_id)

    async def get(self, app_id: str, command_id: str) -> DeviceCommand:
        """The app's command; NotFound otherwise."""
        async with self.tasks.store.read() as conn:
            found = await command_rows.command_rows(conn, source=SOURCE, task_ids=[command_id])
        if not found or found[0][0].app_id != app_id:
            raise NotFound("command", command_id)
        return command_from(*found[0])

    async def page(
        self,
        app_id: str,
        page_no: int,
        page_size: int,
        *,
        device_id: str | None = None,
        created_from_ms: int | None = None,
        created_to_ms: int | None = None,
        unfinished_only: bool = False,
    ) -> tuple[int, list[DeviceCommand]]:
        """(total, page `page_no` from 0) of the app's commands, newest first."""
        statuses = (
            tuple(s.value for s in (TaskStatus.PROCESSING, TaskStatus.WAITING))
            if unfinished_only
            else None
        )
        async with self.tasks.store.read() as conn:
            total, rows = await command_rows.page_commands(
                conn,
                app_id=app_id,
                source=SOURCE,
                page_no=page_no,
                page_size=page_size,
                device_id=device_id,
                created_from_ms=created_from_ms,
                created_to_ms=created_to_ms,
                statuses=statuses,
            )
        return total, [command_from(task, subtask) for task, subtask in rows]

    async def device_page(
        self,
        app_id: str,
        device_id: str,
        page: PageRequest,
        *,
        finished: bool,
        status: str | None = None,
        command_name: str | None = None,
        created_from_ms: int | None = None,
        created_to_ms: int | None = None,
    ) -> Page[DeviceCommand]:
        """A marker page of one device's commands, newest first: those still in its queue
        (not `finished`: held, sent or awaiting retry), or its history (finished).

        Raises InvalidInput for a status word no command has.
        """
        if status is not None and status not in STATUSES:
            raise InvalidInput("status", "must be one of " + ", ".join(STATUSES))
        async with self.tasks.store.read() as conn:
            found = await command_rows.device_commands_page(
                conn,
                app_id=app_id,
                source=SOURCE,
                device_id=device_id,
                page=page,
                finished=finished,
                status=status,
                command_name=command_name,
                created_from_ms=created_from_ms,
                created_to_ms=created_to_ms,
            )
        return Page([command_from(*row) for row in found.items], found.count, found.marker)

    async def cancel(self, app_id: str, command_id: str) -> DeviceCommand:
        """Cancel a command that was not sent yet (PENDING); Conflict otherwise."""
        command = await self.get(app_id, command_id)
        if command.status != PENDING:
            raise Conflict(f"command {command_id} is {command.status}; only PENDING is canceled")
        # it may have finished meanwhile: the record read below says how
        with contextlib.suppress(Conflict):
            await self.tasks.stop(command_id)
        return await self.get(app_id, command_id)

    async def cancel_device(self, app_id: str, device_id: str) -> CancelTask:
        """Cancel every PENDING command of a device, as a cancel task kept for listing."""
        commands = await self._cancel_pending(app_id, device_id)
        task = CancelTask(
            task_id=self._ids.new(),
            app_id=app_id,
            device_id=device_id,
            status=CANCEL_DONE,
            commands=tuple(commands),
            created_at=self.tasks.clock.now_ms(),
        )
        async with self.tasks.store.write() as conn:
            await command_rows.insert_cancel_task(
                conn,
                task_id=task.task_id,
                app_id=app_id,
                device_id=device_id,
                status=task.status,
                command_ids=[c.command_id for c in commands],
                now_ms=task.created_at,
            )
        return task

    async def cancel_tasks(
        self,
        app_id: str,
        page_no: int,
        page_size: int,
        *,
        task_id: str | None = None,
        device_id: str | None = None,
        status: str | None = None,
        created_from_ms: int | None = None,
        created_to_ms: int | None = None,
    ) -> tuple[int, list[CancelTask]]:
        """(total, page `page_no` from 0) of the app's cancel tasks, newest first."""
        async with self.tasks.store.read() as conn:
            total, rows = await command_rows.page_cancel_tasks(
                conn,
                app_id=app_id,
                page_no=page_no,
                page_size=page_size,
                task_id=task_id,
                device_id=device_id,
                status=status,
                created_from_ms=created_from_ms,
                created_to_ms=created_to_ms,
            )
            ids = [i for row in rows for i in orjson.loads(row.command_ids)]
            found = await command_rows.command_rows(conn, source=SOURCE, task_ids=ids)
        commands = {task.task_id: command_from(task, sub) for task, sub in found}
        return total, [
            CancelTask(
                task_id=row.task_id,
                app_id=row.app_id,
                device_id=row.device_id,
                status=row.status,
                commands=tuple(commands[i] for i in orjson.loads(row.command_ids) if i in commands),
                created_at=row.created_at,
            )
            for row in rows
        ]

    async def _cancel_pending(self, app_id: str, device_id: str) -> Sequence[DeviceCommand]:
        """Cancel every PENDING command of a device; the commands canceled."""
        canceled = []
        page_no = 0
        while True:
            _, commands = await self.page(
                app_id, page_no, 500, device_id=device_id, unfinished_only=True
            )
            for command in commands:
                if command.status == PENDING:
                    try:
                        canceled.append(await self.cancel(app_id, command.command_id))
                    except Conflict:
                        continue  # sent meanwhile
            if len(commands) < 500:
                return [c for c in canceled if c.status == CANCELED]
            page_no += 1
