"""One executor per task type, behind the interface in `base`."""

from __future__ import annotations

from fleetbatch.clock import Clock
from fleetbatch.devices.channel import DeviceChannel
from fleetbatch.domain.tasks import TaskType
from fleetbatch.engine.executors.async_commands import AsyncCommandExecutor
from fleetbatch.engine.executors.base import Executor
from fleetbatch.engine.executors.commands import CommandExecutor
from fleetbatch.engine.executors.messages import MessageExecutor
from fleetbatch.engine.executors.registry_ops import (
    DeleteExecutor,
    FreezeExecutor,
    UnfreezeExecutor,
)
from fleetbatch.engine.executors.shadows import ShadowExecutor


def build_executors(
    channel: DeviceChannel, clock: Clock, *, command_timeout_s: float | None = None
) -> dict[TaskType, Executor]:
    """The executor of every supported task type, over one device channel."""
    return {
        TaskType.CREATE_COMMANDS: CommandExecutor(channel, clock, timeout_s=command_timeout_s),
        TaskType.CREATE_ASYNC_COMMANDS: AsyncCommandExecutor(
            channel, clock, timeout_s=command_timeout_s
        ),
        TaskType.CREATE_MESSAGES: MessageExecutor(channel, clock),
        TaskType.UPDATE_DEVICE_SHADOWS: ShadowExecutor(channel, clock),
        TaskType.FREEZE_DEVICES: FreezeExecutor(channel),
        TaskType.UNFREEZE_DEVICES: UnfreezeExecutor(channel),
        TaskType.DELETE_DEVICES: DeleteExecutor(channel),
    }
