"""`updateDeviceShadows`: desired properties merged into each device's shadow, then pushed.

spec: iotda-v5 §4.3 and §5.5. A store executor: the shadows of a whole batch change in the
transaction that claims its subtasks (one read of the rows there are, one write each for
the changed and the new ones), so a subtask succeeds exactly when its shadow changed. After
the commit the desired values go to the devices that are online (a property set, T6), fire
and forget: a device that misses it asks for its shadow when it connects (T10), and its
reports land in `reported` (see `engine.shadow_reports`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.clock import Clock
from fleetbatch.devices import topics
from fleetbatch.devices.channel import DeviceChannel
from fleetbatch.domain.errors import Unavailable
from fleetbatch.domain.shadows import pushed_properties
from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.tasks import Task, request_id_for
from fleetbatch.engine.executors.base import TaskRun, existing_targets, not_found
from fleetbatch.store import shadows as shadow_rows
from fleetbatch.store.subtasks import Claimed, Outcome

log = logging.getLogger(__name__)

S = SubtaskStatus
# the database work is done within the claim's transaction: the lease only has to outlast it
STORE_TIMEOUT_S = 30.0
# a pushed property set is not waited for: its answer is dropped after this long
PUSH_TIMEOUT_S = 5.0


def desired_changes(task: Task) -> list[tuple[str, dict[str, Any]]]:
    """(service id, desired change) of each service the task's document names."""
    return [(item["service_id"], item["desired"]) for item in task.document.get("shadow", [])]


class ShadowExecutor:
    """Merges the desired properties into the shadows of a batch; pushes them afterwards."""

    kind: ClassVar[str] = "store"
    default_timeout_s: float = STORE_TIMEOUT_S

    def __init__(
        self, channel: DeviceChannel, clock: Clock, *, push_timeout_s: float = PUSH_TIMEOUT_S
    ):
        self.channel = channel
        self.clock = clock
        self.push_timeout_s = push_timeout_s

    async def execute(
        self, conn: AsyncConnection, run: TaskRun, claimed: Sequence[Claimed], now_ms: int
    ) -> list[Outcome]:
        changes = desired_changes(run.task)
        present = await existing_targets(conn, claimed)
        shadows = await shadow_rows.merge_desired(conn, list(present), changes, now_ms)
        outcomes: list[Outcome] = []
        for item in claimed:
            after = shadows.get(item.device_pk) if item.device_pk is not None else None
            if after is None:
                outcomes.append(not_found(run, item, now_ms))
                continue
            output = {
                "shadow": [
                    {"service_id": s.service_id, "desired": s.desired, "version": s.version}
                    for s in after
                ]
            }
            outcomes.append(
                run.outcome(item, S.SUCCESS, now_ms, output=orjson.dumps(output).decode())
            )
        return outcomes

    async def after_commit(
        self, run: TaskRun, claimed: Sequence[Claimed], outcomes: Sequence[Outcome]
    ) -> None:
        changes = desired_changes(run.task)
        succeeded = {o.id for o in outcomes if o.status is S.SUCCESS}
        pushed = 0
        for item in claimed:
            if item.id not in succeeded:
                continue
            request_id = request_id_for(item.id, item.attempt)
            pushed += push_desired(
                self.channel, item.target, request_id, changes, timeout_s=self.push_timeout_s
            )
        if pushed:
            log.info("shadow.pushed task_id=%s devices=%d", run.task.task_id, pushed)


def push_desired(
    channel: DeviceChannel,
    device_id: str,
    request_id: str,
    changes: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    timeout_s: float,
) -> bool:
    """Send desired changes to an online device as a property set, not waiting for it.

    False when nothing went out: only deletions, or the device is offline (it asks for its
    shadow when it connects).
    """
    services = [
        {"service_id": service_id, "properties": values}
        for service_id, change in changes
        if (values := pushed_properties(change))
    ]
    if not services or channel.is_online(device_id) is False:
        return False
    downlink = topics.properties_set(device_id, request_id, services)
    try:
        future = channel.submit(downlink, timeout_s=timeout_s)
    except (Unavailable, ValueError):
        return False  # offline after all, or not connected to the broker: it asks later
    future.add_done_callback(_ignore_answer)
    return True


def _ignore_answer(future: asyncio.Future[Any]) -> None:
    # retrieved, so asyncio does not report a push nobody answered as an unhandled error
    if not future.cancelled():
        future.exception()
