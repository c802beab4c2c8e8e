"""`freezeDevices`, `unfreezeDevices`, `deleteDevices`: registry changes, a batch at a time.

spec: iotda-v5 §4.3 and §5.2. Store executors: each batch is one set-based change in the
transaction that claims its subtasks, with the rules of the single-device operations in
`registry.devices`. Freezing a frozen device and unfreezing one that is not frozen succeed
and change nothing; unfreezing gives OFFLINE, or INACTIVE to a device that never
connected. A device that is some device's gateway is deleted only together with all its
children (in the same batch), otherwise it fails. A subtask whose device is gone fails.
After the commit, frozen and deleted devices lose their connection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.devices.channel import DeviceChannel
from fleetbatch.domain.errors import FleetbatchError
from fleetbatch.domain.registry import Device
from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.tasks import ErrorCode
from fleetbatch.engine.executors.base import TaskRun, existing_targets, not_found
from fleetbatch.store import devices as device_rows
from fleetbatch.store.subtasks import Claimed, Outcome

log = logging.getLogger(__name__)

S = SubtaskStatus
# the change is made within the claim's transaction: the lease only has to outlast it
STORE_TIMEOUT_S = 30.0


def deletable(batch: dict[int, Device], children: Sequence[tuple[str, str]]) -> set[str]:
    """The device ids of `batch` that may go: none has a child that stays behind."""
    keep = {device.device_id for device in batch.values()}
    changed = True
    # a gateway whose child cannot go cannot go either (at most two levels, so few passes)
    while changed:
        changed = False
        for gateway_id, child_id in children:
            if gateway_id in keep and child_id not in keep:
                keep.discard(gateway_id)
                changed = True
    return keep


class _RegistryExecutor:
    """What the three registry executors share: finding the devices, disconnecting them."""

    kind: ClassVar[str] = "store"
    default_timeout_s: float = STORE_TIMEOUT_S
    disconnects: ClassVar[bool] = False
    event: ClassVar[str] = ""

    def __init__(self, channel: DeviceChannel) -> None:
        self.channel = channel

    async def execute(
        self, conn: AsyncConnection, run: TaskRun, claimed: Sequence[Claimed], now_ms: int
    ) -> list[Outcome]:
        present = await existing_targets(conn, claimed)
        refused = await self.change(conn, present, now_ms)
        outcomes: list[Outcome] = []
        for item in claimed:
            if item.device_pk not in present:
                outcomes.append(not_found(run, item, now_ms))
            elif item.target in refused:
                code, message = refused[item.target]
                outcomes.append(
                    run.outcome(item, S.FAIL, now_ms, error_code=code, error_msg=message)
                )
            else:
                outcomes.append(run.outcome(item, S.SUCCESS, now_ms))
        return outcomes

    async def change(
        self, conn: AsyncConnection, present: dict[int, Device], now_ms: int
    ) -> dict[str, tuple[ErrorCode, str]]:
        """Change the devices in one go; the ones refused, with why."""
        raise NotImplementedError

    async def after_commit(
        self, run: TaskRun, claimed: Sequence[Claimed], outcomes: Sequence[Outcome]
    ) -> None:
        done = {o.id for o in outcomes if o.status is S.SUCCESS}
        targets = [item.target for item in claimed if item.id in done]
        if targets:
            log.info("%s task_id=%s devices=%d", self.event, run.task.task_id, len(targets))
        if not self.disconnects:
            return
        for device_id in targets:
            try:
                await self.channel.disconnect(device_id)
            except (FleetbatchError, OSError) as exc:
                # the registry changed already; a frozen device is refused at its next CONNECT
                log.warning("registry.disconnect_failed device_id=%s error=%s", device_id, exc)


class FreezeExecutor(_RegistryExecutor):
    """Freezes a batch of devices and closes their connections."""

    disconnects = True
    event = "devices.frozen"

    async def change(
        self, conn: AsyncConnection, present: dict[int, Device], now_ms: int
    ) -> dict[str, tuple[ErrorCode, str]]:
        await device_rows.freeze_devices(conn, list(present), now_ms)
        return {}


class UnfreezeExecutor(_RegistryExecutor):
    """Unfreezes a batch of devices."""

    event = "devices.unfrozen"

    async def change(
        self, conn: AsyncConnection, present: dict[int, Device], now_ms: int
    ) -> dict[str, tuple[ErrorCode, str]]:
        await device_rows.unfreeze_devices(conn, list(present), now_ms)
        return {}


class DeleteExecutor(_RegistryExecutor):
    """Deletes a batch of devices (not a gateway that keeps children) and disconnects them."""

    disconnects = True
    event = "devices.deleted"

    async def change(
        self, conn: AsyncConnection, present: dict[int, Device], now_ms: int
    ) -> dict[str, tuple[ErrorCode, str]]:
        ids = [device.device_id for device in present.values()]
        children = await device_rows.child_device_ids(conn, ids)
        going = deletable(present, children)
        await device_rows.delete_devices(
            conn, [pk for pk, device in present.items() if device.device_id in going]
        )
        return {
            device_id: (ErrorCode.HAS_CHILDREN, f"device {device_id} still has child devices")
            for device_id in ids
            if device_id not in going
        }
