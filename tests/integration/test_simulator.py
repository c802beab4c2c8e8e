"""The device simulator against real brokers: Mosquitto, and small raw MQTT servers.

Mosquitto delivers nothing without a subscription, so the simulated devices subscribe
(`subscribe=True`); a paho-mqtt client plays the platform, publishing downlinks and
collecting what the devices answer. Servers written here cover what Mosquitto cannot:
refusals, TLS with fleetbatch's generated CA, and the exact CONNECT credentials.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import paho.mqtt.client as mqtt
import pytest

from fleetbatch.devices.auth import check_password, parse_client_id
from fleetbatch.devices.codec import (
    Connect,
    MalformedPacket,
    PacketReader,
    Publish,
    encode_connack,
    encode_puback,
    encode_publish,
)
from fleetbatch.devices.topics import command, events, message, properties_get, properties_set
from fleetbatch.settings import Settings
from fleetbatch.sim import FleetDevice, Simulator, load_fleet
from fleetbatch.sim.command import run_sim
from fleetbatch.sim.device import STOPPED
from fleetbatch.tls import ensure_tls_files, server_ssl_context
from support.mosquitto import MosquittoBroker
from support.waiting import wait_until, wait_until_sync

WAIT_S = 10
RUN_TIMEOUT_S = 60
SECRET = "not-a-real-secret"
UPLINK_FILTERS = [
    "$oc/devices/+/sys/commands/response/#",
    "$oc/devices/+/sys/properties/set/response/#",
    "$oc/devices/+/sys/properties/get/response/#",
    "$oc/devices/+/sys/properties/report",
    "$oc/devices/+/sys/events/up",
    "$oc/devices/+/sys/shadow/get/#",
]


def make_fleet(count: int) -> list[FleetDevice]:
    """Devices with ids unique to the test (the broker is shared by the session)."""
    product = uuid.uuid4().hex[:12]
    return [FleetDevice(f"{product}_dev-{i:03d}", SECRET) for i in range(count)]


def write_fleet(path: Path, devices: list[FleetDevice]) -> Path:
    body = {
        "app_id": "app",
        "project_id": "project",
        "product_id": devices[0].device_id.split("_")[0],
        "devices": [
            {"device_id": d.device_id, "node_id": "n", "product_id": "p", "secret": d.secret}
            for d in devices
        ],
    }
    path.write_text(json.dumps(body))
    return path


class Platform:
    """A paho client on the broker standing in for the platform: publishes, collects uplinks."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[str, bytes]] = []
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"platform-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_connect = lambda *args: self._connected.set()
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._connected.wait(WAIT_S), "the platform client did not connect"
        self.client.subscribe([(topic, 1) for topic in UPLINK_FILTERS])
        assert self._subscribed.wait(WAIT_S), "the platform client was not subscribed"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append((msg.topic, msg.payload))

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos)

    def received(self, suffix: str) -> list[Any]:
        """JSON bodies of the uplinks whose topic ends with `suffix`, in arrival order."""
        with self._lock:
            return [json.loads(body) for topic, body in self._messages if topic.endswith(suffix)]

    def topics(self) -> list[str]:
        with self._lock:
            return [topic for topic, _ in self._messages]

    async def answer(self, device_id: str, suffix: str) -> Any:
        """Wait for the one uplink of `device_id` whose topic ends with `suffix`."""
        full = f"$oc/devices/{device_id}/{suffix}"
        [body] = await wait_until(
            lambda: self.received(full),
            timeout_s=WAIT_S,
            message=lambda: f"no {full}; got {self.topics()}",
        )
        return body

    def close(self) -> None:
        self.client.disconnect()  # first: the network thread then ends without a select timeout
        self.client.loop_stop()


@pytest.fixture
def platform(mosquitto_broker: MosquittoBroker) -> Iterator[Platform]:
    client = Platform(mosquitto_broker)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def fleet_sim(mosquitto_broker: MosquittoBroker) -> AsyncIterator[Simulator]:
    """Five devices on Mosquitto: 0 plain, 1 always fails (code 7), 2 silent, 3 and 4 plain."""
    devices = make_fleet(5)
    sim = Simulator(
        devices,
        mosquitto_broker.url,
        behaviors=[
            f"{devices[1].device_id}:fail_rate=1,fail_code=7",
            f"{devices[2].device_id}:silent=true",
        ],
        subscribe=True,
    )
    async with sim:
        await sim.wait_connected(timeout_s=WAIT_S)
        yield sim


def ids(sim: Simulator) -> list[str]:
    return [device.device_id for device in sim.devices]


# --- on Mosquitto -----------------------------------------------------------------------------


async def test_a_command_is_answered_with_success(fleet_sim: Simulator, platform: Platform) -> None:
    device_id = ids(fleet_sim)[0]
    downlink = command(device_id, "r1", service_id="valve", command_name="open", paras={"x": 1})
    platform.publish(downlink.topic, downlink.payload)
    body = await platform.answer(device_id, "sys/commands/response/request_id=r1")
    assert body == {"result_code": 0, "response_name": "open", "paras": {"result": "ok"}}
    assert fleet_sim.stats.commands_answered == 1
    await wait_until(lambda: fleet_sim.stats.publish_acks_received == 1, timeout_s=WAIT_S)


async def test_a_failing_device_answers_with_its_failure_code(
    fleet_sim: Simulator, platform: Platform
) -> None:
    device_id = ids(fleet_sim)[1]
    downlink = command(device_id, "r2", command_name="open")
    platform.publish(downlink.topic, downlink.payload)
    body = await platform.answer(device_id, "sys/commands/response/request_id=r2")
    assert body["result_code"] == 7
    assert fleet_sim.stats.commands_failed == 1


async def test_a_silent_device_never_answers(fleet_sim: Simulator, platform: Platform) -> None:
    silent_id, talker_id = ids(fleet_sim)[2], ids(fleet_sim)[3]
    for device_id in (silent_id, talker_id):
        downlink = command(device_id, "r3", command_name="open")
        platform.publish(downlink.topic, downlink.payload)
    # the talker answered and the silent device has seen (and dropped) its command
    await platform.answer(talker_id, "sys/commands/response/request_id=r3")
    await wait_until(lambda: fleet_sim.stats.requests_ignored == 1, timeout_s=WAIT_S)
    assert platform.received(f"$oc/devices/{silent_id}/sys/commands/response/request_id=r3") == []


async def test_a_qos_1_message_is_acknowledged_and_counted(
    fleet_sim: Simulator, platform: Platform
) -> None:
    downlink = message(ids(fleet_sim)[0], {"text": "hello"}, message_id="m1")
    info = platform.publish(downlink.topic, downlink.payload, qos=1)
    await wait_until(lambda: fleet_sim.stats.messages_received == 1, timeout_s=WAIT_S)
    await wait_until(info.is_published, timeout_s=WAIT_S, message="no PUBACK for the message")


async def test_properties_set_then_get_returns_the_set_values(
    fleet_sim: Simulator, platform: Platform
) -> None:
    device_id = ids(fleet_sim)[4]
    services = [{"service_id": "valve", "properties": {"pct": 40, "mode": "auto"}}]
    set_request = properties_set(device_id, "s1", services)
    platform.publish(set_request.topic, set_request.payload)
    set_body = await platform.answer(device_id, "sys/properties/set/response/request_id=s1")
    assert set_body == {"result_code": 0, "result_desc": "success"}
    get_request = properties_get(device_id, "g1")
    platform.publish(get_request.topic, get_request.payload)
    get_body = await platform.answer(device_id, "sys/properties/get/response/request_id=g1")
    [service] = get_body["services"]
    assert (service["service_id"], service["properties"]) == ("valve", services[0]["properties"])
    assert fleet_sim.device(device_id).properties == {"valve": {"pct": 40, "mode": "auto"}}


async def test_an_ota_version_query_gets_a_version_report(
    fleet_sim: Simulator, platform: Platform
) -> None:
    device_id = ids(fleet_sim)[0]
    query = events(device_id, [{"service_id": "$ota", "event_type": "version_query", "paras": {}}])
    platform.publish(query.topic, query.payload)
    body = await platform.answer(device_id, "sys/events/up")
    [report] = body["services"]
    assert report["event_type"] == "version_report"
    assert report["paras"] == {"fw_version": "1.0.0", "sw_version": "1.0.0"}
    assert fleet_sim.stats.events_received == 1


async def test_reports_and_shadow_requests_follow_the_behaviour(
    mosquitto_broker: MosquittoBroker, platform: Platform
) -> None:
    [device] = make_fleet(1)
    behaviors = ["report_interval=0.05,shadow_on_connect=true"]
    async with Simulator(
        [device], mosquitto_broker.url, behaviors=behaviors, subscribe=True
    ) as sim:
        prefix = f"$oc/devices/{device.device_id}/sys/"
        await wait_until(
            lambda: len(platform.received(prefix + "properties/report")) >= 2, timeout_s=WAIT_S
        )
        [shadow_request] = await wait_until(
            lambda: [
                t for t in platform.topics() if t.startswith(prefix + "shadow/get/request_id=")
            ],
            timeout_s=WAIT_S,
        )
        request_id = shadow_request.rpartition("request_id=")[2]
        platform.publish(f"{prefix}shadow/get/response/request_id={request_id}", b'{"shadow":[]}')
        await wait_until(lambda: sim.stats.shadow_responses == 1, timeout_s=WAIT_S)
    report = platform.received(prefix + "properties/report")[0]
    assert report["services"][0]["service_id"] == "sim"


async def test_flaky_devices_drop_and_reconnect(mosquitto_broker: MosquittoBroker) -> None:
    devices = make_fleet(3)
    behaviors = ["flaky=0.05,backoff_min=0.01,backoff_max=0.05"]
    async with Simulator(devices, mosquitto_broker.url, behaviors=behaviors, subscribe=True) as sim:
        await wait_until(lambda: sim.stats.reconnects >= 6, timeout_s=WAIT_S)
        assert sim.stats.disconnects >= sim.stats.reconnects
        assert sim.stats.errors == 0


async def test_an_idle_device_pings(mosquitto_broker: MosquittoBroker) -> None:
    async with Simulator(make_fleet(1), mosquitto_broker.url, keepalive_s=1) as sim:
        await wait_until(lambda: sim.stats.pings_sent >= 1, timeout_s=WAIT_S)
        await wait_until(lambda: sim.stats.connected == 1, timeout_s=WAIT_S)
        assert sim.stats.errors == 0


async def test_close_disconnects_every_device(mosquitto_broker: MosquittoBroker) -> None:
    sim = Simulator(make_fleet(20), mosquitto_broker.url, connect_concurrency=3)
    await sim.start()
    await sim.wait_connected(timeout_s=WAIT_S)
    await sim.close()
    assert sim.stats.connected == 0
    assert sim.stats.connects == 20
    assert sim.stats.disconnects == 0  # our own shutdown is not counted as a drop
    assert all(device.state == STOPPED for device in sim.devices)


# --- on servers written here ------------------------------------------------------------------


class RawServer:
    """A minimal MQTT server: records CONNECTs, answers CONNACK `return_code`, then commands."""

    def __init__(self, return_code: int = 0) -> None:
        self.return_code = return_code
        self.connects: list[Connect] = []
        self.transports: dict[str, asyncio.Transport] = {}
        self.responses: list[Publish] = []
        self.server: asyncio.Server | None = None

    async def start(self, ssl_context: Any = None) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _RawConnection(self), "127.0.0.1", 0, ssl=ssl_context
        )
        return int(self.server.sockets[0].getsockname()[1])

    def send_command(self, device_id: str, request_id: str) -> None:
        downlink = command(device_id, request_id, command_name="open")
        self.transports[device_id].write(encode_publish(downlink.topic, downlink.payload, 1, 1))

    async def stop(self) -> None:
        for transport in self.transports.values():
            transport.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class _RawConnection(asyncio.Protocol):
    def __init__(self, owner: RawServer) -> None:
        self.owner = owner
        self.reader = PacketReader(server_side=True)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            packets = self.reader.feed(data)
        except MalformedPacket:
            self.transport.abort()
            return
        for packet in packets:
            if isinstance(packet, Connect):
                self.owner.connects.append(packet)
                self.transport.write(encode_connack(self.owner.return_code))
                if self.owner.return_code == 0 and packet.username is not None:
                    self.owner.transports[packet.username] = self.transport
            elif isinstance(packet, Publish):
                self.owner.responses.append(packet)
                if packet.qos:
                    self.transport.write(encode_puback(packet.packet_id))


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    server = RawServer()
    try:
        yield server
    finally:
        await server.stop()


async def test_devices_sign_in_as_huaweis_sdk_does(raw_server: RawServer) -> None:
    port = await raw_server.start()
    devices = make_fleet(3)
    async with Simulator(devices, f"mqtt://127.0.0.1:{port}", sign_type="0") as sim:
        await sim.wait_connected(timeout_s=WAIT_S)
    now_ms = int(time.time() * 1000)
    for connect, device in zip(
        sorted(raw_server.connects, key=lambda c: c.client_id), devices, strict=True
    ):
        client = parse_client_id(connect.client_id)
        assert client is not None
        assert (client.device_id, client.sign_type) == (device.device_id, "0")
        assert connect.username == device.device_id
        assert check_password(client, connect.username, connect.password, SECRET, now_ms=now_ms)
        assert (connect.keepalive_s, connect.clean_session, connect.protocol_level) == (
            120,
            True,
            4,
        )


async def test_a_refused_device_does_not_retry() -> None:
    server = RawServer(return_code=4)
    port = await server.start()
    try:
        sim = Simulator(make_fleet(4), f"mqtt://127.0.0.1:{port}")
        async with sim:
            await wait_until(lambda: sim.stats.refused.get(4) == 4, timeout_s=WAIT_S)
            await wait_until(
                lambda: all(device.state == STOPPED for device in sim.devices), timeout_s=WAIT_S
            )
            with pytest.raises(TimeoutError, match="0 of 4 devices connected"):
                await sim.wait_connected(timeout_s=0.05)
        assert len(server.connects) == 4
        assert sim.stats.connect_errors == 0
    finally:
        await server.stop()


async def test_an_unreachable_server_is_retried_with_backoff(raw_server: RawServer) -> None:
    port = await raw_server.start()
    await raw_server.stop()  # nothing listens there now
    behaviors = ["backoff_min=0.01,backoff_max=0.02"]
    async with Simulator(make_fleet(1), f"mqtt://127.0.0.1:{port}", behaviors=behaviors) as sim:
        await wait_until(lambda: sim.stats.connect_errors >= 3, timeout_s=WAIT_S)
        assert sim.stats.connected == 0


async def test_mqtts_verifies_the_server_against_the_ca_file(
    raw_server: RawServer, tmp_path: Path
) -> None:
    # fleetbatch's generated CA and server certificate, as `serve` makes them
    files = await asyncio.to_thread(ensure_tls_files, Settings(data_dir=tmp_path))
    assert files.ca is not None
    port = await raw_server.start(ssl_context=server_ssl_context(files))
    [device] = make_fleet(1)
    url = f"mqtts://127.0.0.1:{port}"
    async with Simulator([device], url, ca_file=files.ca) as sim:
        await sim.wait_connected(timeout_s=WAIT_S)
        raw_server.send_command(device.device_id, "tls-1")
        await wait_until(lambda: raw_server.responses, timeout_s=WAIT_S)
    assert raw_server.responses[0].topic.endswith("/sys/commands/response/request_id=tls-1")


async def test_mqtts_refuses_a_server_the_ca_did_not_sign(
    raw_server: RawServer, tmp_path: Path
) -> None:
    files = await asyncio.to_thread(ensure_tls_files, Settings(data_dir=tmp_path / "server"))
    other = await asyncio.to_thread(ensure_tls_files, Settings(data_dir=tmp_path / "other"))
    assert other.ca is not None
    port = await raw_server.start(ssl_context=server_ssl_context(files))
    behaviors = ["backoff_min=0.01,backoff_max=0.02"]
    url = f"mqtts://127.0.0.1:{port}"
    async with Simulator(make_fleet(1), url, ca_file=other.ca, behaviors=behaviors) as sim:
        await wait_until(lambda: sim.stats.connect_errors >= 2, timeout_s=WAIT_S)
    assert raw_server.connects == []


# --- `fleetbatch sim` -------------------------------------------------------------------------


def sim_command(**flags: Any) -> list[str]:
    """`python -c` running `run_sim` (the CLI registers it as `fleetbatch sim`)."""
    arguments = ", ".join(
        f"{name}=Path({str(value)!r})" if isinstance(value, Path) else f"{name}={value!r}"
        for name, value in flags.items()
    )
    code = (
        "import sys; from pathlib import Path; from fleetbatch.sim.command import run_sim; "
        f"sys.exit(run_sim({arguments}))"
    )
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("processes", [1, 2])
def test_run_sim_prints_a_json_summary(
    mosquitto_broker: MosquittoBroker, tmp_path: Path, processes: int
) -> None:
    fleet = write_fleet(tmp_path / "fleet.json", make_fleet(6))
    done = subprocess.run(
        sim_command(
            fleet=fleet,
            mqtt=mosquitto_broker.url,
            processes=processes,
            subscribe=True,
            duration_s=1.0,
            json_output=True,
            behaviors=["10%:silent=true"],
            seed=3,
        ),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["devices"] == 6
    assert summary["processes"] == processes
    assert summary["connected"] == 6
    assert summary["connects"] == 6
    assert summary["refused"] == {}
    assert summary["errors"] == 0
    assert summary["elapsed_s"] >= 1.0
    assert summary["cpu_s"] > 0
    assert summary["cpu_us_per_command"] is None  # nobody sent a command


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_stops_the_simulator_and_prints_the_summary(
    mosquitto_broker: MosquittoBroker, platform: Platform, tmp_path: Path, processes: int
) -> None:
    devices = make_fleet(4)
    fleet = write_fleet(tmp_path / "fleet.json", devices)
    command_line = sim_command(
        fleet=fleet,
        mqtt=mosquitto_broker.url,
        processes=processes,
        subscribe=True,
        json_output=True,
    )
    with subprocess.Popen(
        command_line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as running:
        try:
            # the simulator is up once every device answers a command
            for device in devices:
                downlink = command(device.device_id, "up", command_name="ping")
                wait_until_sync(
                    lambda downlink=downlink: _answered_after_publish(platform, downlink),
                    timeout_s=WAIT_S,
                    interval_s=0.2,
                    message=f"{device.device_id} did not answer",
                )
            running.send_signal(signal.SIGTERM)
            out, err = running.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            if running.poll() is None:
                running.kill()
    assert running.returncode == 0, err
    summary = json.loads(out)
    assert summary["commands_answered"] >= 4
    assert summary["cpu_us_per_command"] > 0
    assert summary["processes"] == processes


def _answered_after_publish(platform: Platform, downlink: Any) -> bool:
    """Publish (again) and report whether an answer has come back yet."""
    if platform.received(downlink.response_topic):
        return True
    platform.publish(downlink.topic, downlink.payload)
    return False


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"processes": 0}, "--processes must be at least 1"),
        ({"mqtt": "http://127.0.0.1:1883"}, "broker URL must be mqtt://host:port"),
        ({"behaviors": ["speed=3"]}, "unknown key 'speed'"),
        ({"fleet": Path("/nonexistent/fleet.json")}, "does not exist"),
        ({"qos": 2}, "--qos must be 0 or 1"),
        ({"sign_type": "2"}, "--sign-type must be 0 or 1"),
        ({"duration_s": 0.0}, "--duration must be more than 0 s"),
    ],
)
def test_bad_inputs_print_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: dict[str, Any], fragment: str
) -> None:
    fleet = write_fleet(tmp_path / "fleet.json", make_fleet(1))
    arguments: dict[str, Any] = {"fleet": fleet, "mqtt": "mqtt://127.0.0.1:1883", **flags}
    assert run_sim(**arguments) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("fleetbatch: ")
    assert fragment in line


def test_a_ca_file_that_does_not_load_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = write_fleet(tmp_path / "fleet.json", make_fleet(1))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate")
    assert run_sim(fleet=fleet, mqtt="mqtts://127.0.0.1:8883", ca_file=ca_file) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fleetbatch: --ca-file {ca_file}: ")


def test_a_bad_fleet_file_is_a_value_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"devices": [')
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_fleet(broken)
    fleet = write_fleet(tmp_path / "fleet.json", make_fleet(2))
    assert len(load_fleet(fleet).devices) == 2


def test_the_fleet_file_of_create_devices_loads(tmp_path: Path) -> None:
    from fleetbatch.domain.registry import CreatedDevice
    from fleetbatch.fleetfile import FleetFileWriter

    writer = FleetFileWriter(tmp_path / "fleet.json", {"app_id": "a", "product_id": "prod"})
    writer.add([CreatedDevice(f"prod_n{i}", f"n{i}", "prod", f"s{i}") for i in (1, 2)])
    writer.commit()
    fleet = load_fleet(tmp_path / "fleet.json")
    assert [d.device_id for d in fleet.devices] == ["prod_n1", "prod_n2"]
    assert fleet.product_id == "prod"
