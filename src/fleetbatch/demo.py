"""`fleetbatch demo`: the whole platform on the embedded defaults.

It starts the server on free ports, registers an app and a fleet in bulk, checks the server
over HTTP and HTTPS, starts `fleetbatch sim` (its own process) so that every device connects
over MQTT with its own credentials, and sends every device a command through the device
channel. A batch task run to completion (engine issue) joins it when it lands.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fleetbatch.devices import topics
from fleetbatch.devices.channel import DeviceChannel, NoResponse
from fleetbatch.domain.errors import Unavailable
from fleetbatch.domain.registry import DeviceStatus, NewDevice
from fleetbatch.fleetfile import FleetFileWriter
from fleetbatch.registry.devices import new_node_ids
from fleetbatch.server import Server
from fleetbatch.settings import Settings
from fleetbatch.sim.fleet import load_fleet

HEALTH_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 120.0
COMMAND_TIMEOUT_S = 10.0
IN_FLIGHT = 200
SIM_STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DemoReport:
    """What the demo did, for the summary table and `--json`."""

    data_dir: str
    http_url: str
    https_url: str
    app_id: str
    project_id: str
    product_id: str
    devices: int
    register_s: float
    fleet_file: str
    health_http: str
    health_https: str
    devices_online: int
    connect_s: float
    commands_answered: int
    commands_s: float

    @property
    def devices_per_s(self) -> int:
        return round(self.devices / self.register_s) if self.register_s else 0

    @property
    def commands_per_s(self) -> int:
        return round(self.commands_answered / self.commands_s) if self.commands_s else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "devices_per_s": self.devices_per_s,
            "commands_per_s": self.commands_per_s,
        }


async def run_demo(devices: int, data_dir: Path | None = None) -> DemoReport:
    """Run the demo in the caller's event loop; a temporary data dir unless one is given."""
    if data_dir is not None:
        return await _demo(devices, data_dir, keep=True)
    with tempfile.TemporaryDirectory(prefix="fleetbatch-demo-") as tmp:
        return await _demo(devices, Path(tmp), keep=False)


async def _demo(devices: int, data_dir: Path, *, keep: bool) -> DemoReport:
    settings = Settings(data_dir=data_dir, http_port=0, https_port=0, mqtt_port=0, mqtts_port=0)
    async with Server(settings) as server:
        assert server.runtime is not None
        assert server.tls is not None
        registry = server.runtime.registry
        credentials = await registry.apps.create("demo")
        product = await registry.products.default(credentials.app_id)
        group = await registry.groups.ensure(credentials.app_id, "demo")
        fleet_path = data_dir / "demo-fleet.json"
        header = {"app_id": credentials.app_id, "product_id": product.product_id}
        writer = FleetFileWriter(fleet_path, header)
        started = time.perf_counter()
        created = await registry.devices.create_many_streamed(
            credentials.app_id,
            product.product_id,
            (NewDevice(node_id=node) for node in new_node_ids(devices, "demo")),
            group_id=group.group_id,
            sink=writer.add,
        )
        register_s = time.perf_counter() - started
        writer.commit()
        http_url, https_url = server.urls
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S) as plain:
            health_http = (await plain.get(f"{http_url}/health")).json()["status"]
        # verify HTTPS the way devices will: against the CA fleetbatch generated
        verify: str | bool = str(server.tls.ca) if server.tls.ca is not None else False
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S, verify=verify) as secure:
            health_https = (await secure.get(f"{https_url}/health")).json()["status"]
        fleet = await asyncio.to_thread(load_fleet, fleet_path)  # parsing a big file blocks
        device_ids = [device.device_id for device in fleet.devices]
        sim = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "fleetbatch", "sim", "--fleet", str(fleet_path)],
            *["--mqtt", server.device_urls[0], "--json"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert server.channel is not None
            assert server.presence is not None
            connect_s = await _until_connected(server.channel, device_ids, sim)
            await server.presence.flush()
            online = await registry.devices.page(
                credentials.project_id, app_id=credentials.app_id, status=DeviceStatus.ONLINE
            )
            answered, commands_s = await _command_everyone(server.channel, device_ids)
        finally:
            await _stop(sim)
    return DemoReport(
        data_dir=str(data_dir) if keep else "(temporary, removed)",
        http_url=http_url,
        https_url=https_url,
        app_id=credentials.app_id,
        project_id=credentials.project_id,
        product_id=product.product_id,
        devices=created,
        register_s=round(register_s, 3),
        fleet_file=str(fleet_path) if keep else "(temporary, removed)",
        health_http=health_http,
        health_https=health_https,
        devices_online=online.count,
        connect_s=round(connect_s, 3),
        commands_answered=answered,
        commands_s=round(commands_s, 3),
    )


async def _until_connected(
    channel: DeviceChannel, device_ids: list[str], sim: asyncio.subprocess.Process
) -> float:
    """Seconds until every device of the fleet holds a connection."""
    started = time.perf_counter()
    deadline = started + CONNECT_TIMEOUT_S
    while not all(channel.is_online(d) for d in device_ids):
        if sim.returncode is not None:
            raise Unavailable(f"the simulator exited early with {sim.returncode}")
        if time.perf_counter() > deadline:
            online = sum(1 for d in device_ids if channel.is_online(d))
            raise Unavailable(f"only {online} of {len(device_ids)} simulated devices connected")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def _command_everyone(channel: DeviceChannel, device_ids: list[str]) -> tuple[int, float]:
    """One command to every device, `IN_FLIGHT` at a time; (answered, seconds)."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    answered = 0

    async def one(index: int, device_id: str) -> None:
        nonlocal answered
        async with gate:
            downlink = topics.command(
                device_id, f"demo-{index}", service_id="demo", command_name="ping"
            )
            try:
                response = await channel.request(downlink, timeout_s=COMMAND_TIMEOUT_S)
            except NoResponse:
                return
            if isinstance(response, topics.CommandResponse) and response.result_code == 0:
                answered += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(i, d) for i, d in enumerate(device_ids)))
    return answered, time.perf_counter() - started


async def _stop(sim: asyncio.subprocess.Process) -> None:
    if sim.returncode is None:
        sim.send_signal(signal.SIGINT)
    try:
        async with asyncio.timeout(SIM_STOP_TIMEOUT_S):
            await sim.communicate()
    except TimeoutError:
        sim.kill()
        await sim.wait()
