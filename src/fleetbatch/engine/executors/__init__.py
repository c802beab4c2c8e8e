"""One executor per task type, behind the interface in `base`."""

from __future__ import annotations

from fleetbatch.clock import Clock
from fleetbatch.devices.channel import DeviceChannel
from fleetbatch.domain.tasks import TaskType
from fleetbatch.engine.executors.base import Executor
from fleetbatch.engine.executors.commands import CommandExecutor


def build_executors(
    channel: DeviceChannel, clock: Clock, *, command_timeout_s: float | None = None
) -> dict[TaskType, Executor]:
    """The executor of every supported task type, over one device channel."""
    return {
        TaskType.CREATE_COMMANDS: CommandExecutor(channel, clock, timeout_s=command_timeout_s),
    }
