"""The one interface every task type's executor implements, and what it is handed.

Two kinds exist. A *device* executor sends each claimed subtask to its device and reports
each outcome later through a callback (commands, messages: the answer arrives over MQTT).
A *store* executor does its work in the database, inside the very transaction that
claimed the subtasks and records their outcomes (registry operations, shadows), so the
change and its counting commit together; it may act on devices after the commit.
Upgrades (a later issue) are device executors with several steps per subtask.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.registry import Device
from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.tasks import ErrorCode, Task
from fleetbatch.store import devices as device_rows
from fleetbatch.store.subtasks import Claimed, Outcome


@dataclass(slots=True)
class TaskRun:
    """A running task as one engine worker sees it: the task and this worker's bookkeeping."""

    task: Task
    timeout_s: float
    in_flight: int = 0
    # claimed by this worker and not sent yet: the next batch, claimed while the last one
    # is in flight so that no device waits on a claim's round trip to the database
    ready: deque[Claimed] = field(default_factory=deque)
    # no due subtask was left at the last claim; cleared by the sweeper and by wake-ups
    idle: bool = False
    # a fail_wait_retry subtask may be due: the counters showed some at the last applied
    # batch, or a sweep or wake-up came since; saves an empty retry claim per batch
    retries: bool = True
    tokens: float = 0.0
    refilled_at: float = field(default_factory=time.monotonic)

    @property
    def pk(self) -> int:
        return self.task.pk

    def outcome(
        self,
        claimed: Claimed,
        status: SubtaskStatus,
        now_ms: int,
        *,
        output: str | None = None,
        error_code: ErrorCode | str | None = None,
        error_msg: str | None = None,
        phase: str | None = None,
    ) -> Outcome:
        """The outcome of one attempt, with the task's retry policy attached."""
        policy = self.task.policy
        return Outcome(
            id=claimed.id,
            attempt=claimed.attempt,
            status=status,
            output=output,
            error_code=error_code.value if isinstance(error_code, ErrorCode) else error_code,
            error_msg=error_msg,
            phase=phase,
            retry_budget=policy.retry_budget,
            retry_at=now_ms + policy.retry_interval_s * 1000,
        )

    def room(self) -> int:
        """How many more subtasks the task's concurrency limit allows in flight now."""
        limit = self.task.policy.max_concurrency
        return 1 << 30 if limit is None else max(0, limit - self.in_flight)

    def claim_room(self) -> int:
        """How many more subtasks this worker may hold for the task (in flight or ready):
        its concurrency limit in flight, and as many again claimed ahead."""
        limit = self.task.policy.max_concurrency
        held = self.in_flight + len(self.ready)
        return 1 << 30 if limit is None else max(0, 2 * limit - held)

    def allowance(self, now: float) -> int:
        """How many subtasks the task's rate limit allows now (refilled continuously)."""
        rate = self.task.policy.rate_per_min
        if rate is None:
            return 1 << 30
        per_s = rate / 60.0
        capacity = max(1.0, per_s)
        self.tokens = min(capacity, self.tokens + (now - self.refilled_at) * per_s)
        self.refilled_at = now
        return int(self.tokens)

    def spend(self, count: int) -> None:
        """Take `count` from the rate allowance."""
        if self.task.policy.rate_per_min is not None:
            self.tokens -= count


Report = Callable[[TaskRun, Outcome], None]
# a finer step of an attempt still in flight: (the claimed subtask, its new phase)
PhaseReport = Callable[[Claimed, str], None]
Spawn = Callable[[Any], None]


class DeviceExecutor(Protocol):
    """Sends claimed subtasks to devices; every outcome goes to `report`, once."""

    kind: ClassVar[str]  # "device"
    default_timeout_s: float

    def claim_phase(self, task: Task) -> str | None:
        """The phase recorded on a subtask when it is claimed (None: unchanged)."""

    def online_only(self, task: Task) -> bool:
        """Whether only subtasks of online devices may be claimed (held until they connect)."""

    def dispatch(self, run: TaskRun, claimed: Sequence[Claimed], report: Report) -> None:
        """Start every claimed subtask without blocking; outcomes arrive through `report`."""


class StoreExecutor(Protocol):
    """Does the work in the database, in the transaction that claimed the subtasks."""

    kind: ClassVar[str]  # "store"
    default_timeout_s: float

    async def execute(
        self, conn: AsyncConnection, run: TaskRun, claimed: Sequence[Claimed], now_ms: int
    ) -> list[Outcome]:
        """The outcome of each claimed subtask; changes go through `conn` only."""

    async def after_commit(
        self, run: TaskRun, claimed: Sequence[Claimed], outcomes: Sequence[Outcome]
    ) -> None:
        """Act on devices once the change is committed (disconnect, push); must not raise."""


Executor = DeviceExecutor | StoreExecutor


# --- for store executors ----------------------------------------------------------------


async def existing_targets(conn: AsyncConnection, claimed: Sequence[Claimed]) -> dict[int, Device]:
    """The devices the claimed subtasks still name, by pk (a pk reused by another is gone)."""
    pks = [item.device_pk for item in claimed if item.device_pk is not None]
    found = await device_rows.devices_by_pk(conn, pks)
    targets = {item.device_pk: item.target for item in claimed}
    return {pk: device for pk, device in found.items() if targets.get(pk) == device.device_id}


def not_found(run: TaskRun, item: Claimed, now_ms: int) -> Outcome:
    """The outcome of a subtask whose device was deleted since the task began."""
    return run.outcome(
        item,
        SubtaskStatus.FAIL,
        now_ms,
        error_code=ErrorCode.DEVICE_NOT_FOUND,
        error_msg=f"device {item.target} does not exist",
    )
