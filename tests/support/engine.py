"""An in-process platform for tests: a server on free ports, registered and simulated devices."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from fleetbatch.domain.registry import App, CreatedDevice, NewDevice
from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.tasks import Task
from fleetbatch.engine.engine import Engine
from fleetbatch.engine.service import TaskService
from fleetbatch.registry import Registry
from fleetbatch.runtime import Runtime
from fleetbatch.server import Server
from fleetbatch.settings import Settings
from fleetbatch.sim.fleet import FleetDevice
from fleetbatch.sim.runner import Simulator
from fleetbatch.store import subtasks as subtask_rows
from fleetbatch.store import tasks as task_rows
from support.waiting import wait_until


@dataclass
class Fleet:
    """A running server, its app, its registered devices and (maybe) their simulator."""

    server: Server
    app: App
    devices: list[CreatedDevice]
    sim: Simulator | None

    @property
    def runtime(self) -> Runtime:
        assert self.server.runtime is not None
        return self.server.runtime

    @property
    def tasks(self) -> TaskService:
        return self.runtime.tasks

    @property
    def engine(self) -> Engine:
        assert self.server.engine is not None
        return self.server.engine

    @property
    def device_ids(self) -> list[str]:
        return [d.device_id for d in self.devices]

    async def finished(self, task: Task, timeout_s: float = 30) -> Task:
        """The task once it reached a final status (fails the test after `timeout_s`)."""
        latest = task

        async def done() -> bool:
            nonlocal latest
            latest = await self.tasks.get(task.task_id)
            return latest.finished

        await wait_until(done, timeout_s=timeout_s)
        return latest


def server_settings(settings: Settings, **changes: object) -> Settings:
    """Free ports and quick presence flushes for an in-process `Server`; `changes` win."""
    update: dict[str, object] = {
        "http_port": 0,
        "https_port": 0,
        "mqtt_port": 0,
        "mqtts_port": 0,
        "presence_flush_s": 0.05,
    }
    return settings.model_copy(update=update | changes)


def engine_settings(settings: Settings, **changes: object) -> Settings:
    """`server_settings` with quick engine sweeps and a short wait for answers at close
    (a stopping server hands what is in flight to the next worker either way)."""
    defaults = {"engine_sweep_s": 0.1, "engine_close_wait_s": 0.2}
    return server_settings(settings, **(defaults | changes))


async def register_devices(
    registry: Registry, app_name: str, node_ids: Iterable[str]
) -> tuple[App, list[CreatedDevice]]:
    """A new app (and project) with these devices in its default product."""
    app = await registry.apps.create(app_name)
    product = await registry.products.default(app.app_id)
    nodes = [NewDevice(node_id=node_id) for node_id in node_ids]
    return app, await registry.devices.create_many(app.app_id, product.product_id, nodes)


@contextlib.asynccontextmanager
async def running_fleet(
    settings: Settings,
    count: int,
    *,
    behaviors: Sequence[str] = (),
    simulate: bool = True,
    simulated: int | None = None,
    seed: int = 1,
    device_url: str | None = None,
) -> AsyncIterator[Fleet]:
    """A server with `count` registered devices, connected through the simulator.

    `simulated`: only the first that many devices connect (the others stay offline);
    `device_url`: where the devices connect (an external broker), else the built-in port.
    """
    async with (
        Server(settings) as server,
        fleet_on(
            server,
            count,
            behaviors=behaviors,
            simulate=simulate,
            simulated=simulated,
            seed=seed,
            device_url=device_url,
        ) as fleet,
    ):
        yield fleet


@contextlib.asynccontextmanager
async def fleet_on(
    server: Server,
    count: int,
    *,
    behaviors: Sequence[str] = (),
    simulate: bool = True,
    simulated: int | None = None,
    seed: int = 1,
    device_url: str | None = None,
) -> AsyncIterator[Fleet]:
    """`running_fleet` on a server that is already running: a new app with its devices."""
    assert server.runtime is not None
    node_ids = (f"n{i:06d}" for i in range(count))
    app, created = await register_devices(server.runtime.registry, "engine-test", node_ids)
    if not simulate:
        yield Fleet(server, app, created, None)
        return
    fleet = [FleetDevice(d.device_id, d.secret) for d in created[:simulated]]
    url = device_url or f"mqtt://127.0.0.1:{server.mqtt_port}"
    async with Simulator(
        fleet, url, behaviors=behaviors, seed=seed, subscribe=device_url is not None
    ) as sim:
        await sim.wait_connected(timeout_s=30)
        yield Fleet(server, app, created, sim)


async def check_counters(runtime: Runtime, task: Task) -> None:
    """The invariant: the task row's counters equal the per-status row counts."""
    async with runtime.store.read() as conn:
        rows = await subtask_rows.count_by_status(conn, task.pk)
        row = await task_rows.get_task_row(conn, pk=task.pk)
    assert row is not None
    progress = task_rows.progress_from_row(row)
    counted = {status.value: progress.count(status) for status in SubtaskStatus}
    assert counted == {status.value: rows.get(status.value, 0) for status in SubtaskStatus}
    assert progress.total == sum(rows.values())
