"""The built-in device transport inside a running server: auth, ACL, delivery, presence."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass

import paho.mqtt.client as paho
import pytest
import pytest_asyncio

from fleetbatch.devices import codec, topics
from fleetbatch.devices.channel import Delivery, DeviceOffline, NoResponse
from fleetbatch.devices.topics import CommandResponse, PropertiesReport, Uplink
from fleetbatch.devices.transport import BuiltinTransport
from fleetbatch.domain.registry import CreatedDevice, DeviceStatus
from fleetbatch.server import Server
from fleetbatch.settings import Settings
from support.engine import register_devices, server_settings
from support.mqtt_device import RawDevice, credentials
from support.waiting import wait_until

HOUR_MS = 3_600_000


# one server per database for the whole module (starting and stopping one per test cost
# three quarters of the module's time); each test registers devices of its own
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Platform:
    server: Server
    transport: BuiltinTransport
    devices: list[CreatedDevice]
    received: list[Uplink]

    @property
    def host(self) -> str:
        return self.server.settings.host

    @property
    def uplinks(self) -> list[Uplink]:
        """What this test's devices published that no request claimed."""
        mine = {device.device_id for device in self.devices}
        return [uplink for uplink in self.received if uplink.device_id in mine]

    async def device(self, index: int = 0, *, sign_type: str = "1") -> RawDevice:
        """A raw device connected and accepted."""
        created = self.devices[index]
        raw = await RawDevice.open(self.host, self.server.mqtt_port)
        code = await raw.connect(
            *credentials(created.device_id, created.secret, sign_type=sign_type)
        )
        assert code == 0
        await wait_until(lambda: created.device_id in self.transport.sessions, timeout_s=5)
        return raw

    async def answers_a_command(self, raw: RawDevice, device_id: str, request_id: str) -> None:
        """A command through the channel reaches `raw`, whose empty answer comes back typed."""
        call = asyncio.create_task(
            self.transport.request(topics.command(device_id, request_id), timeout_s=5)
        )
        command = await raw.expect(codec.Publish)
        raw.send(codec.Publish(command.topic.replace("commands/", "commands/response/"), b"{}"))
        assert isinstance(await call, CommandResponse)

    async def status(self, device_id: str) -> DeviceStatus:
        assert self.server.runtime is not None
        found = await self.server.runtime.registry.devices.find(device_id)
        assert found is not None
        return found.status


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(module_settings: Settings) -> AsyncIterator[tuple[Server, list[Uplink]]]:
    """The module's server, and every uplink no request claimed."""
    async with Server(server_settings(module_settings, mqtt_max_packet_bytes=4096)) as server:
        assert isinstance(server.channel, BuiltinTransport)
        received: list[Uplink] = []
        server.channel.add_uplink_handler(received.append)
        yield server, received


@pytest_asyncio.fixture(loop_scope="module")
async def platform(served: tuple[Server, list[Uplink]]) -> Platform:
    """The module's server with four new devices (a new app) for this test."""
    server, received = served
    assert server.runtime is not None
    assert isinstance(server.channel, BuiltinTransport)
    node_ids = (f"dev-{i}" for i in range(4))
    _, created = await register_devices(server.runtime.registry, "transport-test", node_ids)
    return Platform(server, server.channel, created, received)


async def test_a_good_password_connects_with_either_sign_type_and_presence_follows(
    platform: Platform,
) -> None:
    device_id = platform.devices[0].device_id
    assert await platform.status(device_id) is DeviceStatus.INACTIVE
    for sign_type in ("1", "0"):
        raw = await platform.device(0, sign_type=sign_type)
        await wait_until(lambda: _is(platform.status(device_id), DeviceStatus.ONLINE), timeout_s=5)
        raw.send(codec.Disconnect())
        await raw.wait_closed()
        await wait_until(lambda: device_id not in platform.transport.sessions, timeout_s=5)
        await wait_until(lambda: _is(platform.status(device_id), DeviceStatus.OFFLINE), timeout_s=5)
    assert platform.server.runtime is not None
    device = await platform.server.runtime.registry.devices.find(device_id)
    assert device is not None
    assert device.active_at_ms
    assert device.last_seen_at_ms


async def _is(status: object, expected: DeviceStatus) -> bool:
    return await status is expected  # type: ignore[misc]


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong password", 4),
        ("swapped hmac key and message", 4),
        ("stale timestamp, sign type 1", 4),
        ("unknown device", 4),
        ("user name is another device", 4),
        ("no password", 4),
        ("not an IoTDA client id", 4),
    ],
)
async def test_bad_credentials_are_refused_with_connack_4_and_the_socket_closed(
    platform: Platform, case: str, code: int
) -> None:
    created = platform.devices[0]
    client_id, username, password = credentials(created.device_id, created.secret)
    if case == "wrong password":
        password = credentials(created.device_id, created.secret + "x")[2]
    elif case == "swapped hmac key and message":
        import hashlib
        import hmac

        stamp = client_id.rsplit("_", 1)[1]
        password = hmac.new(created.secret.encode(), stamp.encode(), hashlib.sha256).hexdigest()
    elif case == "stale timestamp, sign type 1":
        client_id, username, password = credentials(
            created.device_id, created.secret, now_ms=_now_ms() - 3 * HOUR_MS
        )
    elif case == "unknown device":
        client_id, username, password = credentials("nosuch_device", created.secret)
    elif case == "user name is another device":
        username = platform.devices[1].device_id
    elif case == "no password":
        password = None  # type: ignore[assignment]
    elif case == "not an IoTDA client id":
        client_id = "just-a-client"
    raw = await RawDevice.open(platform.host, platform.server.mqtt_port)
    assert await raw.connect(client_id, username, password) == code
    await raw.wait_closed()
    assert created.device_id not in platform.transport.sessions


async def test_a_stale_timestamp_is_accepted_with_sign_type_0(platform: Platform) -> None:
    created = platform.devices[0]
    client_id, username, password = credentials(
        created.device_id, created.secret, sign_type="0", now_ms=_now_ms() - 30 * HOUR_MS
    )
    raw = await RawDevice.open(platform.host, platform.server.mqtt_port)
    assert await raw.connect(client_id, username, password) == 0
    await raw.close()


async def test_a_frozen_device_is_refused_with_connack_5_and_freezing_can_disconnect(
    platform: Platform,
) -> None:
    assert platform.server.runtime is not None
    registry = platform.server.runtime.registry
    created = platform.devices[2]
    found = await registry.devices.find(created.device_id)
    assert found is not None
    await registry.devices.freeze(found.project_id, created.device_id)
    raw = await RawDevice.open(platform.host, platform.server.mqtt_port)
    assert await raw.connect(*credentials(created.device_id, created.secret)) == 5
    await raw.wait_closed()
    await registry.devices.unfreeze(found.project_id, created.device_id)
    connected = await platform.device(2)
    await platform.transport.disconnect(created.device_id)
    await connected.wait_closed()


async def test_a_device_reaches_only_its_own_topics(platform: Platform) -> None:
    mine, other = platform.devices[0].device_id, platform.devices[1].device_id
    raw = await platform.device(0)
    raw.send(
        codec.Subscribe(
            7,
            [
                (f"$oc/devices/{mine}/sys/commands/#", 1),
                (f"$oc/devices/{mine}/user/+/x", 0),
                (f"$oc/devices/{other}/sys/commands/#", 1),
                ("$oc/devices/+/sys/commands/#", 1),
                ("#", 0),
            ],
        )
    )
    suback = await raw.expect(codec.Suback)
    assert suback.packet_id == 7
    assert suback.return_codes == [1, 0, 0x80, 0x80, 0x80]
    # publishing under another device's prefix ends the connection
    raw.send(codec.Publish(f"$oc/devices/{other}/sys/messages/up", b"{}", qos=1, packet_id=3))
    await raw.wait_closed()
    assert not any(u.topic.startswith(f"$oc/devices/{other}/") for u in platform.uplinks)


async def test_a_command_reaches_a_device_that_never_subscribed_and_its_answer_returns(
    platform: Platform,
) -> None:
    device_id = platform.devices[0].device_id
    raw = await platform.device(0)
    downlink = topics.command(
        device_id, "req-1", service_id="pump", command_name="start", paras={"speed": 3}
    )
    call = asyncio.create_task(platform.transport.request(downlink, timeout_s=5))
    command = await raw.expect(codec.Publish)
    assert command.topic == f"$oc/devices/{device_id}/sys/commands/request_id=req-1"
    assert command.qos == 1
    raw.send(codec.Puback(command.packet_id))
    raw.send(
        codec.Publish(
            f"$oc/devices/{device_id}/sys/commands/response/request_id=req-1",
            b'{"result_code":0,"response_name":"started","paras":{"ok":true}}',
            qos=1,
            packet_id=11,
        )
    )
    answer = await call
    assert isinstance(answer, CommandResponse)
    assert (answer.request_id, answer.result_code, answer.paras) == ("req-1", 0, {"ok": True})
    assert (await raw.expect(codec.Puback)).packet_id == 11
    # nobody waits for a late answer: it goes to the uplink handlers
    raw.send(
        codec.Publish(
            f"$oc/devices/{device_id}/sys/commands/response/request_id=req-1",
            b'{"result_code":1}',
        )
    )
    late = await wait_until(lambda: platform.uplinks, timeout_s=5)
    assert isinstance(late[0], CommandResponse)
    assert late[0].result_code == 1


async def test_delivery_outcomes_and_request_timeouts(platform: Platform) -> None:
    device_id = platform.devices[0].device_id
    transport = platform.transport
    message = topics.message(device_id, {"hello": 1})
    assert await transport.send(message, timeout_s=1) is Delivery.OFFLINE
    with pytest.raises(DeviceOffline):
        await transport.request(topics.command(device_id, "r0"), timeout_s=1)
    raw = await platform.device(0)
    sent = asyncio.create_task(transport.send(message, timeout_s=5))
    publish = await raw.expect(codec.Publish)
    assert publish.topic.endswith("/sys/messages/down")
    raw.send(codec.Puback(publish.packet_id))
    assert await sent is Delivery.DELIVERED
    # no PUBACK: unacknowledged after the timeout; no answer: NoResponse
    assert await transport.send(message, timeout_s=0.2) is Delivery.UNACKNOWLEDGED
    with pytest.raises(NoResponse):
        await transport.request(topics.command(device_id, "r1"), timeout_s=0.2)
    # QoS 0 both ways
    assert (
        await transport.send(topics.Downlink(device_id, message.topic, b"q0", qos=0), timeout_s=1)
        is Delivery.DELIVERED
    )
    q0 = await raw.expect(codec.Publish, where=lambda p: p.payload == b"q0")
    assert q0.qos == 0
    raw.send(
        codec.Publish(
            f"$oc/devices/{device_id}/sys/properties/report",
            b'{"services":[{"service_id":"s","properties":{"t":21}}]}',
        )
    )
    report = await wait_until(
        lambda: [u for u in platform.uplinks if isinstance(u, PropertiesReport)], timeout_s=5
    )
    assert report[0].services == [{"service_id": "s", "properties": {"t": 21}}]


async def test_user_topics_need_a_subscription(platform: Platform) -> None:
    device_id = platform.devices[0].device_id
    raw = await platform.device(0)
    custom = topics.Downlink(device_id, f"$oc/devices/{device_id}/user/notes", b"n", qos=1)
    assert await platform.transport.send(custom, timeout_s=0.5) is Delivery.UNACKNOWLEDGED
    raw.send(codec.Subscribe(1, [(f"$oc/devices/{device_id}/user/#", 1)]))
    await raw.expect(codec.Suback)
    sent = asyncio.create_task(platform.transport.send(custom, timeout_s=5))
    publish = await raw.expect(codec.Publish)
    raw.send(codec.Puback(publish.packet_id))
    assert await sent is Delivery.DELIVERED


async def test_a_second_connection_replaces_the_first(platform: Platform) -> None:
    device_id = platform.devices[0].device_id
    first = await platform.device(0)
    second = await platform.device(0)
    await first.wait_closed()
    assert platform.transport.sessions[device_id] is not None
    await wait_until(lambda: _is(platform.status(device_id), DeviceStatus.ONLINE), timeout_s=5)
    assert platform.server.presence is not None
    await platform.server.presence.flush()
    assert await platform.status(device_id) is DeviceStatus.ONLINE
    second.send(codec.Pingreq())
    await second.expect(codec.Pingresp)


async def test_keepalive_is_enforced_at_one_and_a_half_times(platform: Platform) -> None:
    created = platform.devices[0]
    before = platform.transport.stats.keepalive_timeouts
    raw = await RawDevice.open(platform.host, platform.server.mqtt_port)
    assert await raw.connect(*credentials(created.device_id, created.secret), keepalive_s=1) == 0
    await raw.wait_closed(timeout_s=5)
    assert platform.transport.stats.keepalive_timeouts == before + 1


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x30\xff\xff\xff\xff\x01", id="5-byte remaining length"),
        pytest.param(b"\x82\x05\x00\x01\x00\x00\x00", id="empty subscribe filter"),
        pytest.param(b"\x32\x08\x00\x03a/#\x00\x01x", id="wildcard in publish topic"),
        pytest.param(b"\x36\x00", id="QoS 3"),
        pytest.param(b"\x10\x00", id="second connect"),
        pytest.param(b"\x30" + b"\x80\x40" + b"x" * 16, id="over the packet size limit"),
    ],
)
async def test_a_malformed_packet_closes_only_its_own_connection(
    platform: Platform, garbage: bytes
) -> None:
    bystander_id = platform.devices[1].device_id
    bystander = await platform.device(1)
    offender = await platform.device(0)
    offender.send_raw(garbage)
    await offender.wait_closed()
    # the other device still gets a command and answers; new devices still connect
    await platform.answers_a_command(bystander, bystander_id, "still-up")
    await platform.device(2)


async def test_garbage_before_connect_and_silence_are_cut_off(platform: Platform) -> None:
    before = platform.transport.stats.protocol_violations
    raw = await RawDevice.open(platform.host, platform.server.mqtt_port)
    raw.send(codec.Pingreq())
    await raw.wait_closed()
    assert platform.transport.stats.protocol_violations >= before + 1


async def test_mqtts_verifies_against_the_data_dir_ca_without_a_hostname_check(
    platform: Platform,
) -> None:
    assert platform.server.tls is not None
    assert platform.server.tls.ca is not None
    context = ssl.create_default_context(cafile=str(platform.server.tls.ca))
    context.check_hostname = False  # what Huawei's Python SDK does
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    created = platform.devices[3]
    raw = await RawDevice.open(platform.host, platform.server.mqtts_port, ssl_context=context)
    assert await raw.connect(*credentials(created.device_id, created.secret)) == 0
    await platform.answers_a_command(raw, created.device_id, "tls")
    await raw.close()


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv31], ids=["mqtt-3.1.1", "mqtt-3.1"])
async def test_paho_mqtt_device_without_subscriptions_answers_a_command(
    platform: Platform, protocol: paho.MQTTProtocolVersion
) -> None:
    created = platform.devices[0]
    client_id, username, password = credentials(created.device_id, created.secret)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    client.username_pw_set(username, password)
    connected: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: connected.append(rc.value)

    def on_message(c: paho.Client, u: object, message: paho.MQTTMessage) -> None:
        request_id = message.topic.rsplit("request_id=", 1)[1]
        c.publish(
            f"$oc/devices/{created.device_id}/sys/commands/response/request_id={request_id}",
            b'{"result_code":0,"paras":{"by":"paho"}}',
            qos=1,
        )

    client.on_message = on_message
    client.connect(platform.host, platform.server.mqtt_port)
    client.loop_start()
    try:
        await wait_until(lambda: connected == [0], timeout_s=5)
        await wait_until(lambda: created.device_id in platform.transport.sessions, timeout_s=5)
        answer = await platform.transport.request(
            topics.command(created.device_id, "paho-1"), timeout_s=5
        )
        assert isinstance(answer, CommandResponse)
        assert answer.paras == {"by": "paho"}
    finally:
        client.disconnect()
        client.loop_stop()


async def test_mosquitto_clients_interoperate(platform: Platform) -> None:
    created = platform.devices[1]
    port = str(platform.server.mqtt_port)
    # mosquitto_sub as the device: it receives a system downlink it never had to subscribe to
    # (it subscribes to its own custom topic only, which the server grants)
    client_id, username, password = credentials(created.device_id, created.secret)
    sub = await asyncio.create_subprocess_exec(
        *["mosquitto_sub", "-h", platform.host, "-p", port, "-i", client_id],
        *["-u", username, "-P", password, "-C", "1", "-v"],
        *["-t", f"$oc/devices/{created.device_id}/user/in"],
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until(lambda: created.device_id in platform.transport.sessions, timeout_s=10)
        delivered = await platform.transport.send(
            topics.message(created.device_id, "hi from the platform"), timeout_s=5
        )
        assert delivered is Delivery.DELIVERED
        async with asyncio.timeout(10):
            out = (await sub.communicate())[0].decode()
        assert out.startswith(f"$oc/devices/{created.device_id}/sys/messages/down ")
        assert "hi from the platform" in out
    finally:
        if sub.returncode is None:
            sub.kill()
            await sub.wait()
    # mosquitto_pub as the device: a property report reaches the platform's handlers
    client_id, username, password = credentials(created.device_id, created.secret, sign_type="0")

    def publish(password: str, topic: str, message: str, *flags: str) -> int:
        done = subprocess.run(
            [
                *["mosquitto_pub", "-h", platform.host, "-p", port, "-i", client_id],
                *["-u", username, "-P", password, *flags, "-t", topic, "-m", message],
            ],
            capture_output=True,
            timeout=10,
        )
        return done.returncode

    report = '{"services":[{"service_id":"s","properties":{"v":1}}]}'
    device_topic = f"$oc/devices/{created.device_id}/sys/"
    published = await asyncio.to_thread(
        publish, password, device_topic + "properties/report", report, "-q", "1"
    )
    assert published == 0
    await wait_until(
        lambda: any(isinstance(u, PropertiesReport) for u in platform.uplinks), timeout_s=5
    )
    # and a wrong password is refused (exit code non-zero)
    refused = await asyncio.to_thread(publish, "0" * 64, device_topic + "messages/up", "x")
    assert refused != 0


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


async def test_mqtt_5_is_refused_with_unacceptable_protocol_version(platform: Platform) -> None:
    created = platform.devices[0]
    client_id, username, password = credentials(created.device_id, created.secret)
    raw = await RawDevice.open(platform.host, platform.server.mqtt_port)
    raw.send(codec.Connect(client_id, username, password.encode(), protocol_level=5))
    assert (await raw.expect(codec.Connack)).return_code == codec.ConnackCode.UNACCEPTABLE_PROTOCOL
    await raw.wait_closed()


async def test_nothing_after_a_violation_or_disconnect_in_the_same_read_is_handled(
    platform: Platform,
) -> None:
    mine, other = platform.devices[0].device_id, platform.devices[1].device_id
    own_topic = f"$oc/devices/{mine}/sys/messages/up"
    raw = await platform.device(0)
    raw.send_raw(
        codec.encode(codec.Publish(f"$oc/devices/{other}/sys/messages/up", b"foreign"))
        + codec.encode(codec.Publish(own_topic, b"after the violation"))
    )
    await raw.wait_closed()
    raw = await platform.device(0)
    raw.send_raw(codec.DISCONNECT_BYTES + codec.encode(codec.Publish(own_topic, b"after bye")))
    await raw.wait_closed()
    # a publish on a fresh connection proves the handlers would have seen the others by now
    raw = await platform.device(0)
    raw.send(codec.Publish(own_topic, b"fine", qos=1, packet_id=1))
    await raw.expect(codec.Puback)
    await wait_until(lambda: platform.uplinks, timeout_s=5)
    assert [u.payload for u in platform.uplinks] == [b"fine"]


async def test_a_connection_may_not_pile_up_packets_or_subscriptions(platform: Platform) -> None:
    created = platform.devices[0]
    client_id, username, password = credentials(created.device_id, created.secret)
    raw = await RawDevice.open(platform.host, platform.server.mqtt_port)
    # everything in one write: the CONNECT is still being checked while the rest is parsed
    raw.send_raw(
        codec.encode(codec.Connect(client_id, username, password.encode()))
        + codec.PINGREQ_BYTES * 100
    )
    await raw.wait_closed()
    assert not any(isinstance(p, codec.Connack) and p.return_code == 0 for p in raw.received)

    raw = await platform.device(0)
    own = f"$oc/devices/{created.device_id}/user"
    # two packets: one would pass this server's 4 kB packet limit
    raw.send(codec.Subscribe(1, [(f"{own}/{i}", 0) for i in range(60)]))
    raw.send(codec.Subscribe(2, [(f"{own}/{i}", 0) for i in range(60, 101)]))
    first = await raw.expect(codec.Suback, where=lambda p: p.packet_id == 1)
    second = await raw.expect(codec.Suback, where=lambda p: p.packet_id == 2)
    assert first.return_codes + second.return_codes == [0] * 100 + [0x80]


async def test_an_older_presence_change_does_not_undo_a_newer_one(platform: Platform) -> None:
    assert platform.server.runtime is not None
    devices = platform.server.runtime.registry.devices
    device_id = platform.devices[3].device_id
    now = _now_ms() + HOUR_MS  # after anything the running server recorded
    await devices.record_presence([(device_id, now)], [], [])
    await devices.record_presence([], [(device_id, now - 1000, None)], [])  # late, older
    assert await platform.status(device_id) is DeviceStatus.ONLINE
    await devices.record_presence([], [(device_id, now + 1000, None)], [])
    assert await platform.status(device_id) is DeviceStatus.OFFLINE


async def test_random_bytes_from_many_connections_never_disturb_a_working_device(
    platform: Platform,
) -> None:
    import random

    rng = random.Random(5)
    bystander_id = platform.devices[1].device_id
    bystander = await platform.device(1)
    created = platform.devices[0]
    connect = codec.encode(codec.Connect(*_connect_fields(created.device_id, created.secret)))
    for round_ in range(60):
        garbage = rng.randbytes(rng.randrange(1, 300))
        if round_ % 2:  # half of them after a valid CONNECT, to reach the connected state
            garbage = connect + garbage
        raw = await RawDevice.open(platform.host, platform.server.mqtt_port)
        raw.send_raw(garbage)
        raw.send_raw(codec.DISCONNECT_BYTES)
        await raw.close()
    await platform.answers_a_command(bystander, bystander_id, "after-noise")
    await platform.device(2)


def _connect_fields(device_id: str, secret: str) -> tuple[str, str, bytes]:
    client_id, username, password = credentials(device_id, secret)
    return client_id, username, password.encode()


async def test_a_device_that_stops_reading_is_cut_off_not_buffered_forever(
    platform: Platform,
) -> None:
    device_id = platform.devices[0].device_id
    raw = await platform.device(0)
    assert raw._task is not None
    raw._task.cancel()  # the device stops reading its socket
    bulky = topics.Downlink(device_id, f"$oc/devices/{device_id}/sys/messages/down", b"x" * 3000, 0)

    async def flood() -> bool:
        for _ in range(50):
            await platform.transport.send(bulky, timeout_s=1)
        await asyncio.sleep(0)  # let this turn's writes go out
        return device_id not in platform.transport.sessions

    # a few MB fill the kernel's buffers, then the 4 MB of ours: the server lets go of it
    await wait_until(flood, timeout_s=60, message="the stalled device is still connected")
    await raw.close()
