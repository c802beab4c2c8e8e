"""`fleetbatch demo`: the whole platform in one process on the embedded defaults.

Today it starts the server on free ports, registers an app and a fleet in bulk, and checks
the server over HTTP and HTTPS. The simulated fleet (device-access issue) and a batch task
run to completion (engine issue) join it as they land.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from fleetbatch.domain.registry import NewDevice
from fleetbatch.fleetfile import FleetFileWriter
from fleetbatch.registry.devices import new_node_ids
from fleetbatch.server import Server
from fleetbatch.settings import Settings

HEALTH_TIMEOUT_S = 10.0


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

    @property
    def devices_per_s(self) -> int:
        return round(self.devices / self.register_s) if self.register_s else 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "devices_per_s": self.devices_per_s}


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
    )
