"""Single-device messages on the batch engine's path (v5 CreateMessage and its reads).

A message is a `createMessages` task with one subtask and its own source, so it is sent,
acknowledged, retried and timed out exactly like one device of a batch task, and never
listed among batch tasks. Its id (given, or generated) is the task's name and the MQTT
message id; it is unique per device. Status: PENDING until the device's PUBACK, then
DELIVERED; FAILED or TIMEOUT otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetbatch.domain.errors import AlreadyExists, NotFound
from fleetbatch.domain.ids import new_object_id
from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.tasks import NewTask, Subtask, Task, TaskType
from fleetbatch.engine.service import TaskService
from fleetbatch.store import device_commands as command_rows
from fleetbatch.store import device_messages as message_rows

SOURCE = "device_message"
S = SubtaskStatus
STATUS = {
    S.WAITING: "PENDING",
    S.PROCESSING: "PENDING",
    S.FAIL_WAIT_RETRY: "PENDING",
    S.SUCCESS: "DELIVERED",
    S.FAIL: "FAILED",
    S.TIMEOUT: "TIMEOUT",
    S.STOPPED: "FAILED",
}
# list_device_messages has no paging: the newest this many
MAX_LISTED = 100


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """One message to one device."""

    message_id: str
    device_id: str
    document: Mapping[str, Any]
    status: str
    error_code: str | None
    error_msg: str | None
    created_at: int
    finished_at: int | None


def message_from(task: Task, subtask: Subtask) -> DeviceMessage:
    """The message a one-subtask task stands for."""
    return DeviceMessage(
        message_id=task.name,
        device_id=subtask.target,
        document=task.document,
        status=STATUS[subtask.status],
        error_code=subtask.error_code,
        error_msg=subtask.error_msg,
        created_at=task.created_at,
        finished_at=subtask.finished_at,
    )


class DeviceMessages:
    """Send and read single-device messages."""

    def __init__(self, tasks: TaskService) -> None:
        self.tasks = tasks

    async def send(self, app_id: str, device_id: str, document: Mapping[str, Any]) -> DeviceMessage:
        """Queue a message (the `createMessages` document); AlreadyExists for a repeated id."""
        message_id = document.get("message_id") or new_object_id()
        if await self._found(app_id, device_id, message_id):
            raise AlreadyExists("message", message_id)
        new = NewTask(
            app_id=app_id,
            task_type=TaskType.CREATE_MESSAGES,
            name=message_id,
            document={**document, "message_id": message_id},
            source=SOURCE,
        )
        await self.tasks.create(new, [device_id])
        return await self.get(app_id, device_id, message_id)

    async def _found(self, app_id: str, device_id: str, message_id: str) -> DeviceMessage | None:
        async with self.tasks.store.read() as conn:
            rows = await message_rows.message_rows(
                conn, app_id=app_id, source=SOURCE, message_id=message_id
            )
        for task, subtask in rows:
            if subtask.target == device_id:
                return message_from(task, subtask)
        return None

    async def get(self, app_id: str, device_id: str, message_id: str) -> DeviceMessage:
        """The device's message; NotFound otherwise."""
        found = await self._found(app_id, device_id, message_id)
        if found is None:
            raise NotFound("message", message_id)
        return found

    async def recent(self, app_id: str, device_id: str) -> list[DeviceMessage]:
        """The device's newest messages (at most `MAX_LISTED`), newest first."""
        async with self.tasks.store.read() as conn:
            _, rows = await command_rows.page_commands(
                conn,
                app_id=app_id,
                source=SOURCE,
                page_no=0,
                page_size=MAX_LISTED,
                device_id=device_id,
            )
        return [message_from(task, subtask) for task, subtask in rows]
