"""Device access end to end: registered fleets, simulated, on the built-in transport and on an
external broker, driven through the real commands and through the device channel.

- the whole product as processes: `admin`, `serve`, `sim` and `devices` commands, as a user
  runs them, over MQTT and MQTTS, on SQLite and PostgreSQL;
- a `Server` in this process with the `Simulator` library on its built-in transport: every
  kind of downlink answered (or not) as each device's behaviour says, presence followed;
- external-broker mode on Mosquitto, in process and as `fleetbatch serve --broker`;
- the commands' usage errors.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from fleetbatch.devices import topics
from fleetbatch.devices.broker import BrokerChannel
from fleetbatch.devices.channel import Delivery, NoResponse
from fleetbatch.devices.topics import (
    CommandResponse,
    PropertiesGetResponse,
    PropertiesReport,
    PropertiesSetResponse,
    Uplink,
)
from fleetbatch.devices.transport import BuiltinTransport
from fleetbatch.domain.registry import DeviceStatus
from fleetbatch.server import Server
from fleetbatch.settings import Settings
from fleetbatch.sim import Behavior, FleetDevice, Simulator
from fleetbatch.sim.device import STOPPED
from support import LOOPBACK
from support.cli import FLEETBATCH, run_cli, run_cli_json, store_flags
from support.engine import register_devices, server_settings
from support.mosquitto import MosquittoBroker
from support.serve import ServeProcess, start_healthy, stop_process
from support.waiting import wait_until, wait_until_sync

WAIT_S = 10
# presence goes through the server's batched flush, then a CLI that opens the store
PRESENCE_WAIT_S = 30
SIM_EXIT_S = 30
CLI_FLEET_SIZE = 50
LIBRARY_NORMAL_DEVICES = 50
BULK_COMMANDS = 200
BROKER_FLEET_SIZE = 20


# --- 1. the whole product as processes --------------------------------------------------------


def database_flags(settings: Settings) -> list[str]:
    """`--database` for `serve`, which gets `--data-dir` from `start_healthy` itself."""
    return [] if settings.database is None else ["--database", settings.database]


@dataclass
class SimProcess:
    """A running `fleetbatch sim --json` child."""

    proc: subprocess.Popen[str]

    def interrupt(self) -> dict[str, Any]:
        """Ctrl-C, as a user stops it; the JSON summary it prints on the way out."""
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=SIM_EXIT_S)
        assert self.proc.returncode == 0, err
        summary: dict[str, Any] = json.loads(out)
        return summary


@contextmanager
def running_sim(fleet: Path, url: str, *flags: str) -> Iterator[SimProcess]:
    """`fleetbatch sim --fleet FLEET --mqtt URL --json FLAGS...`, killed if still running after."""
    proc = subprocess.Popen(
        [*FLEETBATCH, "sim", "--fleet", str(fleet), "--mqtt", url, "--json", *flags],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield SimProcess(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=SIM_EXIT_S)


def devices_in_status(settings: Settings, app_id: str, status: str) -> int:
    """How many of the app's devices `fleetbatch devices list --status` counts."""
    flags = store_flags(settings)
    listed = run_cli_json("devices", "list", *flags, "--app", app_id, "--status", status)
    count: int = listed["count"]
    return count


def wait_for_status(settings: Settings, app_id: str, status: str, count: int) -> None:
    last: list[int] = []

    def reached() -> bool:
        last.append(devices_in_status(settings, app_id, status))
        return last[-1] == count

    wait_until_sync(
        reached,
        timeout_s=PRESENCE_WAIT_S,
        interval_s=0.2,
        message=lambda: f"{count} devices {status}; the last count was {last[-1:]}",
    )


def test_a_registered_fleet_connects_to_serve_over_mqtt_and_mqtts(
    settings: Settings, tmp_path: Path
) -> None:
    flags = store_flags(settings)
    app = run_cli_json("admin", "create-app", *flags, "--name", "device-access")
    fleet_path = tmp_path / "fleet.json"
    created = run_cli_json(
        "admin", "create-devices", *flags, "--app", app["app_id"],
        "--count", str(CLI_FLEET_SIZE), "--out", str(fleet_path),
    )  # fmt: skip
    assert created["created"] == CLI_FLEET_SIZE
    device_id = json.loads(fleet_path.read_text())["devices"][0]["device_id"]

    server = start_healthy(settings.data_dir, *database_flags(settings))
    try:
        mqtt_url = f"mqtt://{LOOPBACK}:{server.mqtt_port}"
        with running_sim(fleet_path, mqtt_url) as sim:
            wait_for_status(settings, app["app_id"], "ONLINE", CLI_FLEET_SIZE)
            shown = run_cli_json("devices", "show", device_id, *flags)
            assert shown["status"] == "ONLINE"
            assert shown["last_seen"] is not None
            assert shown["active"] is not None
            summary = sim.interrupt()
        assert summary["devices"] == CLI_FLEET_SIZE
        assert summary["connected"] == summary["connects"] == CLI_FLEET_SIZE
        assert summary["refused"] == {}
        assert summary["connect_errors"] == summary["errors"] == summary["disconnects"] == 0
        # the sim sent DISCONNECT for each device on its way out
        wait_for_status(settings, app["app_id"], "OFFLINE", CLI_FLEET_SIZE)

        ca_file = settings.data_dir / "tls" / "ca.pem"
        mqtts_url = f"mqtts://{LOOPBACK}:{server.mqtts_port}"
        with running_sim(fleet_path, mqtts_url, "--ca-file", str(ca_file)) as sim:
            wait_for_status(settings, app["app_id"], "ONLINE", CLI_FLEET_SIZE)
            summary = sim.interrupt()
        assert summary["connected"] == CLI_FLEET_SIZE
        assert summary["refused"] == {}
        assert summary["connect_errors"] == 0
        assert server.proc.poll() is None
    finally:
        stop_process(server)


# --- 2. the built-in transport in process, with the Simulator library -------------------------


@dataclass
class Fleet:
    """A server on free ports, a registered fleet, and the simulator connecting it."""

    server: Server
    channel: BuiltinTransport
    sim: Simulator
    project_id: str
    normal: list[str]
    failing: str
    silent: str
    reporter: str
    flaky: str
    frozen: str
    uplinks: list[Uplink] = field(default_factory=list)
    presence: list[tuple[str, bool]] = field(default_factory=list)

    def presence_of(self, device_id: str) -> list[bool]:
        return [online for changed, online in self.presence if changed == device_id]


FAIL_CODE = 7
# quick reconnects, so a dropped or disconnected device comes back within the test
QUICK_BACKOFF = Behavior(backoff_min_s=0.01, backoff_max_s=0.05)
SPECIAL_BEHAVIORS = {
    "failing": Behavior(fail_rate=1.0, fail_code=FAIL_CODE),
    "silent": Behavior(silent=True),
    "reporter": Behavior(report_interval_s=0.05),
    "flaky": replace(QUICK_BACKOFF, flaky_s=0.3),
    "frozen": QUICK_BACKOFF,
}


@pytest.fixture
async def fleet(settings: Settings) -> AsyncIterator[Fleet]:
    async with Server(server_settings(settings)) as server:
        assert server.runtime is not None
        node_ids = [f"dev-{i:03d}" for i in range(LIBRARY_NORMAL_DEVICES)]
        node_ids += list(SPECIAL_BEHAVIORS)
        app, created = await register_devices(server.runtime.registry, "device-access", node_ids)
        by_node = {device.node_id: device.device_id for device in created}
        channel = server.channel
        assert isinstance(channel, BuiltinTransport)
        behaviors = [SPECIAL_BEHAVIORS.get(device.node_id, Behavior()) for device in created]
        sim = Simulator(
            [FleetDevice(device.device_id, device.secret) for device in created],
            f"mqtt://{LOOPBACK}:{server.mqtt_port}",
            behaviors=behaviors,
        )
        platform = Fleet(
            server,
            channel,
            sim,
            app.project_id,
            normal=[by_node[node_id] for node_id in node_ids[:LIBRARY_NORMAL_DEVICES]],
            **{role: by_node[role] for role in SPECIAL_BEHAVIORS},
        )
        channel.add_uplink_handler(platform.uplinks.append)
        channel.add_presence_handler(
            lambda device_id, online, _at_ms: platform.presence.append((device_id, online))
        )
        async with sim:
            # the flaky device comes and goes; every other one must be in a session
            steady = [device.device_id for device in created if device.device_id != platform.flaky]
            await wait_until(
                lambda: all(device_id in channel.sessions for device_id in steady),
                timeout_s=WAIT_S,
                message=lambda: f"{len(channel.sessions)} sessions; sim {sim.stats}",
            )
            yield platform


async def test_commands_properties_and_messages_reach_devices_without_subscribing(
    fleet: Fleet,
) -> None:
    channel = fleet.channel
    ok = await channel.request(
        topics.command(fleet.normal[0], "c-ok", service_id="valve", command_name="open"),
        timeout_s=WAIT_S,
    )
    assert isinstance(ok, CommandResponse)
    assert (ok.request_id, ok.result_code, ok.response_name) == ("c-ok", 0, "open")

    failed = await channel.request(
        topics.command(fleet.failing, "c-fail", command_name="open"), timeout_s=WAIT_S
    )
    assert isinstance(failed, CommandResponse)
    assert failed.result_code == FAIL_CODE

    # the fleet answers (above), so silence here is the device's behaviour, not a slow start
    with pytest.raises(NoResponse) as no_response:
        await channel.request(
            topics.command(fleet.silent, "c-silent", command_name="open"), timeout_s=0.3
        )
    assert no_response.value.device_id == fleet.silent
    await wait_until(lambda: fleet.sim.stats.requests_ignored == 1, timeout_s=WAIT_S)

    services = [{"service_id": "valve", "properties": {"pct": 40, "mode": "auto"}}]
    set_answer = await channel.request(
        topics.properties_set(fleet.normal[1], "p-set", services), timeout_s=WAIT_S
    )
    assert isinstance(set_answer, PropertiesSetResponse)
    assert set_answer.result_code == 0
    get_answer = await channel.request(
        topics.properties_get(fleet.normal[1], "p-get", "valve"), timeout_s=WAIT_S
    )
    assert isinstance(get_answer, PropertiesGetResponse)
    [service] = get_answer.services
    assert (service["service_id"], service["properties"]) == ("valve", {"pct": 40, "mode": "auto"})

    delivery = await channel.send(
        topics.message(fleet.normal[2], {"text": "hello"}, message_id="m-1"), timeout_s=WAIT_S
    )
    assert delivery is Delivery.DELIVERED
    assert fleet.sim.stats.messages_received == 1

    reports = await wait_until(
        lambda: [
            u
            for u in fleet.uplinks
            if isinstance(u, PropertiesReport) and u.device_id == fleet.reporter
        ],
        timeout_s=WAIT_S,
        message="no property report from the reporting device",
    )
    assert reports[0].services[0]["service_id"] == "sim"


async def test_many_commands_in_flight_are_all_answered(fleet: Fleet) -> None:
    answered_before = fleet.sim.stats.commands_answered
    downlinks = [
        topics.command(fleet.normal[i % len(fleet.normal)], f"bulk-{i}", command_name="ping")
        for i in range(BULK_COMMANDS)
    ]
    futures = [fleet.channel.submit(downlink, timeout_s=WAIT_S) for downlink in downlinks]
    answers = await asyncio.gather(*futures)

    assert len(answers) == BULK_COMMANDS
    assert all(isinstance(a, CommandResponse) and a.result_code == 0 for a in answers)
    assert [a.request_id for a in answers] == [d.request_id for d in downlinks]
    assert [a.device_id for a in answers] == [d.device_id for d in downlinks]
    assert fleet.sim.stats.commands_answered - answered_before == BULK_COMMANDS
    assert fleet.sim.stats.answers_lost == 0
    assert len(fleet.channel.pending) == 0
    # no answer went astray to the uplink handlers
    assert not [u for u in fleet.uplinks if isinstance(u, CommandResponse)]


async def test_presence_follows_a_flaky_device_and_a_frozen_one_is_refused(
    fleet: Fleet,
) -> None:
    def came_back() -> bool:
        # online, dropped, online again (the flaky device may have gone round more often)
        flags = fleet.presence_of(fleet.flaky)
        back = True in flags and False in flags[flags.index(True) :] and flags[-1] is True
        # the server records presence before the device has read its CONNACK
        return back and fleet.sim.stats.reconnects >= 1

    await wait_until(
        came_back,
        timeout_s=WAIT_S,
        message=lambda: (
            f"flaky device presence: {fleet.presence_of(fleet.flaky)}, "
            f"reconnects {fleet.sim.stats.reconnects}"
        ),
    )

    assert fleet.server.runtime is not None
    registry = fleet.server.runtime.registry
    await registry.devices.freeze(fleet.project_id, fleet.frozen)
    await fleet.channel.disconnect(fleet.frozen)
    frozen = fleet.sim.device(fleet.frozen)
    # it reconnects after its back-off, is refused (5: not authorized) and gives up
    await wait_until(
        lambda: fleet.sim.stats.refused.get(5) == 1 and frozen.state == STOPPED,
        timeout_s=WAIT_S,
        message=lambda: f"refusals {fleet.sim.stats.refused}, state {frozen.state}",
    )
    assert fleet.frozen not in fleet.channel.sessions
    assert fleet.presence_of(fleet.frozen) == [True, False]
    found = await registry.devices.find(fleet.frozen)
    assert found is not None
    assert found.status is DeviceStatus.FROZEN
    assert sum(fleet.sim.stats.refused.values()) == 1  # nobody else was refused


# --- 3. external-broker mode -------------------------------------------------------------------


def broker_fleet(count: int) -> list[FleetDevice]:
    """Devices with ids unique to the test: the broker is shared by the session, and anonymous."""
    product = uuid.uuid4().hex[:12]
    return [FleetDevice(f"{product}_dev-{i:03d}", "unchecked-by-mosquitto") for i in range(count)]


@pytest.mark.parametrize("database_kind", ["sqlite"])  # the store plays no part in delivery
async def test_an_external_broker_carries_the_devices(
    settings: Settings, mosquitto_broker: MosquittoBroker
) -> None:
    settings = settings.model_copy(
        update={
            "broker": mosquitto_broker.url,
            "broker_client_id": f"fleetbatch-{uuid.uuid4().hex[:8]}",
            # the default share group is kept: Mosquitto 2.0 never delivers `$oc/...` topics
            # to a shared subscription, so the channel's probe must fall back to plain ones
            "http_port": 0,
            "https_port": 0,
        }
    )
    async with Server(settings) as server:
        assert set(server._ports) == {"http", "https"}  # no MQTT listener of our own
        assert server.device_urls == [mosquitto_broker.url]
        channel = server.channel
        assert isinstance(channel, BrokerChannel)
        uplinks: list[Uplink] = []
        channel.add_uplink_handler(uplinks.append)

        devices = broker_fleet(BROKER_FLEET_SIZE)
        reporter = devices[-1].device_id
        behaviors = [f"{reporter}:report_interval=0.05"]
        async with Simulator(
            devices, mosquitto_broker.url, behaviors=behaviors, subscribe=True
        ) as sim:
            await sim.wait_connected(timeout_s=WAIT_S)
            answers = await asyncio.gather(
                *(
                    channel.request(
                        topics.command(device.device_id, "b-1", command_name="open"),
                        timeout_s=WAIT_S,
                    )
                    for device in devices
                )
            )
            assert all(isinstance(a, CommandResponse) and a.result_code == 0 for a in answers)
            assert [a.device_id for a in answers] == [d.device_id for d in devices]

            delivery = await channel.send(
                topics.message(devices[0].device_id, {"text": "hello"}), timeout_s=WAIT_S
            )
            assert delivery is Delivery.DELIVERED  # the broker took it (its PUBACK)
            await wait_until(lambda: sim.stats.messages_received == 1, timeout_s=WAIT_S)

            await wait_until(
                lambda: any(
                    isinstance(u, PropertiesReport) and u.device_id == reporter for u in uplinks
                ),
                timeout_s=WAIT_S,
                message="no property report through the broker",
            )
        assert sim.stats.refused == {}
        assert sim.stats.errors == 0


def test_serve_with_a_broker_becomes_healthy_and_names_it(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    server: ServeProcess = start_healthy(tmp_path / "data", "--broker", mosquitto_broker.url)
    try:
        assert (server.mqtt_port, server.mqtts_port) == (0, 0)  # none were given
        server.proc.send_signal(signal.SIGINT)
        code, stderr = server.finish()
    finally:
        if server.proc.poll() is None:
            stop_process(server)
    assert code == 0, stderr
    [startup] = [line for line in stderr.splitlines() if line.startswith("fleetbatch: serving")]
    assert f"devices on {mosquitto_broker.url} " in startup


# --- 4. usage errors ---------------------------------------------------------------------------


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("fleetbatch: ")
    assert done.stdout == ""
    return line


def test_usage_errors_are_one_line_with_their_exit_codes(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]

    missing = run_cli("sim", "--fleet", str(tmp_path / "missing.json"), "--json")
    assert missing.returncode == 2
    assert "does not exist" in one_error_line(missing)

    bogus = run_cli("devices", "list", *data, "--app", "X", "--status", "bogus", "--json")
    assert bogus.returncode == 2
    assert "--status must be one of" in one_error_line(bogus)

    nosuch = run_cli("devices", "show", "nosuch", *data, "--json")
    assert nosuch.returncode == 1
    assert one_error_line(nosuch) == "fleetbatch: no device nosuch"

    bad_broker = run_cli("serve", *data, "--broker", "http://x")
    assert bad_broker.returncode == 2
    assert "invalid settings: broker" in one_error_line(bad_broker)
