"""A device's command queue and history (v5 ListAsyncCommands / ListAsyncHistoryCommands) on a
real store (SQLite and PostgreSQL), without the engine: commands stay PENDING until canceled."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.registry import NewDevice
from fleetbatch.engine.device_commands import DeviceCommands
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from fleetbatch.store.paging import PageRequest


@pytest.fixture
async def rt(settings: Settings) -> AsyncIterator[Runtime]:
    opened = await Runtime.open(settings)
    try:
        yield opened
    finally:
        await opened.close()


async def test_queue_and_history_split_filter_and_page(rt: Runtime) -> None:
    app = await rt.registry.apps.create("cmds")
    product = await rt.registry.products.default(app.app_id)
    one, other = await rt.registry.devices.create_many(
        app.app_id, product.product_id, [NewDevice(node_id="a"), NewDevice(node_id="b")]
    )
    commands = DeviceCommands(rt.tasks)
    send = commands.send
    first = await send(app.app_id, one.device_id, "Svc", "reboot", {}, expire_time_s=600)
    second = await send(app.app_id, one.device_id, "Svc", "update", {}, expire_time_s=600)
    third = await send(app.app_id, one.device_id, "Svc", "reboot", {}, expire_time_s=600)
    await send(app.app_id, other.device_id, "Svc", "reboot", {}, expire_time_s=600)
    canceled = await commands.cancel(app.app_id, second.command_id)
    assert canceled.status == "CANCELED"

    async def ids(finished: bool, page: PageRequest | None = None, **filters: str) -> list[str]:
        found = await commands.device_page(
            app.app_id, one.device_id, page or PageRequest(), finished=finished, **filters
        )
        return [c.command_id for c in found.items]

    assert await ids(False) == [third.command_id, first.command_id]
    assert await ids(True) == [second.command_id]
    assert await ids(True, status="CANCELED") == [second.command_id]
    assert await ids(False, status="PENDING") == [third.command_id, first.command_id]
    assert await ids(False, status="SENT") == []
    assert await ids(True, status="PENDING") == []
    # the name matches exactly, never as a part
    assert await ids(False, command_name="reboot") == [third.command_id, first.command_id]
    assert await ids(False, command_name="reb") == []
    assert await ids(True, command_name="update") == [second.command_id]

    top = await commands.device_page(
        app.app_id, one.device_id, PageRequest(limit=1), finished=False
    )
    assert (top.count, [c.command_id for c in top.items]) == (2, [third.command_id])
    assert top.marker is not None
    assert await ids(False, PageRequest(marker=top.marker)) == [first.command_id]
    assert await ids(False, PageRequest(offset=1)) == [first.command_id]

    with pytest.raises(InvalidInput) as caught:
        await ids(False, status="DONE")
    assert caught.value.field == "status"
