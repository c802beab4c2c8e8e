"""The internal vocabulary of task and subtask states (DESIGN: rules of the engine).

Wire words (`Waitting`, `WaitResult`, `Complete`) appear only in the dialect mappings.
"""

from __future__ import annotations

from enum import StrEnum


class SubtaskStatus(StrEnum):
    """Where one device's part of a task stands."""

    WAITING = "waiting"
    PROCESSING = "processing"
    SUCCESS = "success"
    FAIL = "fail"
    FAIL_WAIT_RETRY = "fail_wait_retry"
    TIMEOUT = "timeout"
    STOPPED = "stopped"


TERMINAL_SUBTASK_STATUSES = frozenset(
    {SubtaskStatus.SUCCESS, SubtaskStatus.FAIL, SubtaskStatus.TIMEOUT, SubtaskStatus.STOPPED}
)


class TaskStatus(StrEnum):
    """Where a whole batch task stands."""

    INITIALIZING = "initializing"
    WAITING = "waiting"  # scheduled for later
    PROCESSING = "processing"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SUCCESS = "success"
    FAIL = "fail"
    PARTIAL_SUCCESS = "partial_success"
    TIMEOUT = "timeout"


FINISHED_TASK_STATUSES = frozenset(
    {
        TaskStatus.STOPPED,
        TaskStatus.SUCCESS,
        TaskStatus.FAIL,
        TaskStatus.PARTIAL_SUCCESS,
        TaskStatus.TIMEOUT,
    }
)


def counter_column(status: SubtaskStatus) -> str:
    """The task-row column that counts subtasks in `status`."""
    return f"n_{status.value}"
