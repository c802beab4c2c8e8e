"""The external-broker channel against a real Mosquitto (anonymous, on loopback).

Devices here are paho-mqtt clients, as Huawei's Python SDK is, that SUBSCRIBE to their system
topics explicitly: a stock broker has no auto-subscribe (EMQX's does it for real devices).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetbatch.devices import topics
from fleetbatch.devices.auth import make_client_id
from fleetbatch.devices.broker import BrokerChannel
from fleetbatch.devices.channel import Delivery, NoResponse
from fleetbatch.devices.topics import (
    CommandResponse,
    EventsUp,
    MessageUp,
    OtherUplink,
    PropertiesGetResponse,
    PropertiesReport,
    PropertiesSetResponse,
    Uplink,
)
from fleetbatch.domain.errors import Unavailable
from support import free_port
from support.broker import plain_broker_channel
from support.mosquitto import MosquittoBroker
from support.waiting import wait_until

WAIT_S = 10
BROKER_LOGGER = "fleetbatch.devices.broker"


class RestartableBroker(MosquittoBroker):
    """A broker of its own, whose process can be stopped and started again on the same port."""

    def stop_process(self) -> None:
        self._terminate()

    def start_process(self) -> None:
        self._start_once(self.port)


class Device:
    """A device on its own paho client: subscribes explicitly and answers what it is asked."""

    SUBSCRIPTIONS = (
        "sys/commands/#",
        "sys/messages/down",
        "sys/properties/set/#",
        "sys/properties/get/#",
        "sys/shadow/get/response/#",
        "sys/events/down",
    )

    def __init__(self, host: str, port: int, device_id: str) -> None:
        self.host, self.port, self.device_id = host, port, device_id
        self.prefix = f"$oc/devices/{device_id}/"
        self.received: list[tuple[str, bytes]] = []
        self.subacks = 0
        self._lock = threading.Lock()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=make_client_id(device_id, "2024061503", "0"),
            protocol=mqtt.MQTTv311,
        )
        client.username_pw_set(device_id, "not checked by this broker")
        client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self.client = client

    async def start(self) -> None:
        await asyncio.to_thread(self.client.connect, self.host, self.port, 30)
        self.client.loop_start()
        await wait_until(lambda: self.subacks >= 1, timeout_s=WAIT_S, message="device SUBACK")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, suffix: str, body: Any, *, topic: str | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.client.publish(topic or self.prefix + suffix, payload, qos=1)

    def messages_on(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [payload for topic, payload in self.received if topic == self.prefix + suffix]

    # paho's thread:

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(self.prefix + suffix, 1) for suffix in self.SUBSCRIPTIONS])

    def _on_subscribe(self, *_: Any) -> None:
        self.subacks += 1

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, message.payload))
        rest = message.topic[len(self.prefix) :]
        head, mark, request_id = rest.rpartition("request_id=")
        if not mark:
            return
        request = json.loads(message.payload)
        answer: dict[str, Any]
        if head == "sys/commands/":
            answer = {"result_code": 0, "response_name": "ok", "paras": request["paras"]}
        elif head == "sys/properties/set/":
            answer = {"result_code": 1, "result_desc": "read only"}
        elif head == "sys/properties/get/":
            answer = {"services": [{"service_id": "meter", "properties": {"level": 7}}]}
        else:
            return  # its own answers come back through `sys/commands/#`: not requests
        response_topic = f"{self.prefix}{head}response/request_id={request_id}"
        client.publish(response_topic, json.dumps(answer), qos=1)


ChannelFactory = Callable[..., Awaitable[BrokerChannel]]
DeviceFactory = Callable[..., Awaitable[Device]]


def new_device_id() -> str:
    return f"{uuid.uuid4().hex[:12]}_meter-{uuid.uuid4().hex[:4]}"


@pytest.fixture
def broker_url(mosquitto_broker: MosquittoBroker) -> str:
    return mosquitto_broker.url


@pytest.fixture
async def open_channel(broker_url: str) -> AsyncIterator[ChannelFactory]:
    """Start BrokerChannels (closed after the test); without a share group unless asked."""
    opened: list[BrokerChannel] = []

    async def factory(url: str | None = None, **options: Any) -> BrokerChannel:
        client_id = options.pop("client_id", f"fleetbatch-{uuid.uuid4().hex[:8]}")
        channel = plain_broker_channel(
            url or broker_url, client_id, **({"connect_timeout_s": 5.0} | options)
        )
        await channel.start()
        opened.append(channel)
        return channel

    yield factory
    for channel in opened:
        await channel.close()


@pytest.fixture
async def open_device(mosquitto_broker: MosquittoBroker) -> AsyncIterator[DeviceFactory]:
    """Connect paho devices (stopped after the test)."""
    started: list[Device] = []

    async def factory(
        device_id: str | None = None, broker: MosquittoBroker | None = None
    ) -> Device:
        where = broker or mosquitto_broker
        device = Device(where.host, where.port, device_id or new_device_id())
        await device.start()
        started.append(device)
        return device

    yield factory
    for device in started:
        await asyncio.to_thread(device.stop)


@pytest.fixture
def restartable_broker() -> Iterator[RestartableBroker]:
    broker = RestartableBroker.start()
    assert isinstance(broker, RestartableBroker)
    try:
        yield broker
    finally:
        broker.stop()


def broker_events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split()[0] for r in caplog.records if r.name == BROKER_LOGGER]


@pytest.mark.parametrize("share_group", [None, "fleetbatch-t"], ids=["plain", "share-group"])
async def test_requests_return_the_devices_typed_answers(
    open_channel: ChannelFactory, open_device: DeviceFactory, share_group: str | None
) -> None:
    channel = await open_channel(share_group=share_group)
    device = await open_device()
    device_id = device.device_id

    answer = await channel.request(
        topics.command(device_id, "r-1", service_id="pump", command_name="start", paras={"s": 3}),
        timeout_s=WAIT_S,
    )
    refused = await channel.request(
        topics.properties_set(device_id, "r-2", [{"service_id": "m", "properties": {"a": 1}}]),
        timeout_s=WAIT_S,
    )
    values = await channel.request(topics.properties_get(device_id, "r-3"), timeout_s=WAIT_S)

    assert isinstance(answer, CommandResponse)
    assert (answer.device_id, answer.request_id, answer.result_code) == (device_id, "r-1", 0)
    assert (answer.response_name, answer.paras) == ("ok", {"s": 3})
    assert isinstance(refused, PropertiesSetResponse)
    assert (refused.result_code, refused.result_desc) == (1, "read only")
    assert isinstance(values, PropertiesGetResponse)
    assert values.services == [{"service_id": "meter", "properties": {"level": 7}}]
    assert channel.is_online(device_id) is None
    assert channel.stats.replies == 3


async def test_a_send_is_delivered_once_the_broker_acknowledges_it(
    open_channel: ChannelFactory, open_device: DeviceFactory
) -> None:
    channel = await open_channel()
    device = await open_device()

    qos1 = await channel.send(topics.message(device.device_id, {"x": 1}), timeout_s=WAIT_S)
    qos0 = await channel.send(
        topics.Downlink(device.device_id, device.prefix + "sys/messages/down", b"raw", qos=0),
        timeout_s=WAIT_S,
    )

    assert (qos1, qos0) == (Delivery.DELIVERED, Delivery.DELIVERED)
    down = await wait_until(
        lambda: (
            device.messages_on("sys/messages/down")
            if len(device.messages_on("sys/messages/down")) == 2
            else None
        ),
        timeout_s=WAIT_S,
        message="both messages reach the device",
    )
    assert sorted(down) == sorted([b"raw", topics.message(device.device_id, {"x": 1}).payload])


async def test_uplinks_nobody_waits_for_reach_the_handlers_typed_and_attributed_by_topic(
    open_channel: ChannelFactory, open_device: DeviceFactory
) -> None:
    channel = await open_channel()
    seen: list[Uplink] = []
    channel.add_uplink_handler(seen.append)
    device = await open_device()
    other_id = new_device_id()

    device.publish("sys/properties/report", {"services": [{"service_id": "m", "properties": {}}]})
    device.publish("sys/messages/up", b"\x00binary")
    device.publish("sys/events/up", {"services": [{"service_id": "$ota", "event_type": "x"}]})
    device.publish("user/telemetry", {"t": 1})
    # Mosquitto has no ACL: a device may publish under another device's prefix, and the
    # uplink is taken as that device's (EMQX's authorizer, /emqx/acl, refuses such publishes)
    device.publish("", {"content": "spoofed"}, topic=f"$oc/devices/{other_id}/sys/messages/up")
    await wait_until(lambda: len(seen) == 5, timeout_s=WAIT_S, message=lambda: f"got {seen}")

    report, *_ = (uplink for uplink in seen if isinstance(uplink, PropertiesReport))
    assert report.services == [{"service_id": "m", "properties": {}}]
    event, *_ = (uplink for uplink in seen if isinstance(uplink, EventsUp))
    assert event.device_id == device.device_id
    custom, *_ = (uplink for uplink in seen if isinstance(uplink, OtherUplink))
    assert custom.topic == device.prefix + "user/telemetry"
    messages = [uplink for uplink in seen if isinstance(uplink, MessageUp)]
    assert {(m.device_id, m.payload) for m in messages} == {
        (device.device_id, b"\x00binary"),
        (other_id, b'{"content": "spoofed"}'),
    }
    assert channel.stats.replies == 0


async def test_a_request_nobody_answers_fails_with_no_response_within_its_timeout(
    open_channel: ChannelFactory,
) -> None:
    channel = await open_channel()
    started = time.monotonic()

    with pytest.raises(NoResponse) as failed:
        await channel.request(topics.command(new_device_id(), "r-1"), timeout_s=0.3)

    # expired by the sweeper, never early (an upper bound would only measure the machine)
    assert time.monotonic() - started >= 0.3
    assert failed.value.timeout_s == 0.3


async def test_two_hundred_requests_in_flight_pass_the_brokers_receive_maximum(
    open_channel: ChannelFactory, open_device: DeviceFactory
) -> None:
    channel = await open_channel()
    devices = [await open_device() for _ in range(4)]
    requests = [
        topics.command(device.device_id, f"r-{n}", paras={"n": n})
        for device in devices
        for n in range(50)
    ]

    answers = await asyncio.gather(*(channel.request(r, timeout_s=WAIT_S) for r in requests))
    deliveries = await asyncio.gather(
        *(
            channel.send(topics.message(d.device_id, n), timeout_s=WAIT_S)
            for d in devices
            for n in range(25)
        )
    )

    assert [a.request_id for a in answers] == [r.request_id for r in requests]
    assert [a.device_id for a in answers] == [r.device_id for r in requests]
    assert set(deliveries) == {Delivery.DELIVERED}
    # Mosquitto lets 20 unacknowledged QoS 1 publishes in; the rest waited for PUBACKs
    assert channel.stats.queued > 0


async def test_closing_fails_waiting_requests_and_refuses_new_ones(
    open_channel: ChannelFactory,
) -> None:
    channel = await open_channel()
    waiting = asyncio.ensure_future(
        channel.request(topics.command(new_device_id(), "r-1"), timeout_s=60)
    )
    await wait_until(lambda: channel.stats.published == 1, timeout_s=WAIT_S)

    await channel.close()

    with pytest.raises(NoResponse):
        await waiting
    with pytest.raises(Unavailable):
        await channel.send(topics.message(new_device_id(), "late"), timeout_s=1)


async def test_start_fails_with_unavailable_when_no_broker_listens() -> None:
    channel = plain_broker_channel(
        f"mqtt://127.0.0.1:{free_port()}", "fleetbatch-test", connect_timeout_s=0.5
    )
    # connect_timeout_s bounds the wait; asyncio.timeout turns a hang into a failure
    async with asyncio.timeout(30):
        with pytest.raises(Unavailable, match="could not connect"):
            await channel.start()
    await channel.close()


async def test_after_a_broker_restart_the_channel_reconnects_and_requests_succeed_again(
    restartable_broker: RestartableBroker,
    open_channel: ChannelFactory,
    open_device: DeviceFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=BROKER_LOGGER)
    channel = await open_channel(restartable_broker.url)
    device = await open_device(broker=restartable_broker)
    silent = new_device_id()
    unanswered = asyncio.ensure_future(
        channel.request(topics.command(silent, "before"), timeout_s=1.0)
    )
    await wait_until(lambda: channel.stats.published == 1, timeout_s=WAIT_S)

    await asyncio.to_thread(restartable_broker.stop_process)
    await wait_until(lambda: not channel.connected, timeout_s=WAIT_S, message="loss noticed")
    with pytest.raises(Unavailable):
        await channel.send(topics.message(device.device_id, "while down"), timeout_s=1)
    with pytest.raises(Unavailable):
        await channel.request(topics.command(device.device_id, "while-down"), timeout_s=1)
    subacks = device.subacks
    await asyncio.to_thread(restartable_broker.start_process)

    with pytest.raises(NoResponse):
        await unanswered  # what was waiting simply times out
    await wait_until(lambda: channel.connected, timeout_s=WAIT_S, message="reconnected")
    await wait_until(lambda: device.subacks > subacks, timeout_s=WAIT_S, message="device back")
    answer = await channel.request(topics.command(device.device_id, "after"), timeout_s=WAIT_S)

    assert isinstance(answer, CommandResponse)
    assert answer.request_id == "after"
    assert channel.stats.connects == 2
    events = broker_events(caplog)
    assert events.index("broker.disconnected") < events.index("broker.reconnected")


async def test_a_share_group_gives_each_uplink_to_one_node_when_the_broker_can_share(
    open_channel: ChannelFactory, open_device: DeviceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=BROKER_LOGGER)
    group = f"g{uuid.uuid4().hex[:8]}"
    nodes = [await open_channel(share_group=group), await open_channel(share_group=group)]
    heard: list[list[bytes]] = [[], []]
    for node, payloads in zip(nodes, heard, strict=True):
        node.add_uplink_handler(lambda uplink, into=payloads: into.append(uplink.payload))
    device = await open_device()
    sent = [f"m{n}".encode() for n in range(20)]

    for payload in sent:
        device.publish("sys/messages/up", payload)

    if all(node.shared for node in nodes):
        await wait_until(lambda: len(heard[0]) + len(heard[1]) == len(sent), timeout_s=WAIT_S)
        assert sorted(heard[0] + heard[1]) == sorted(sent)  # each exactly once
        assert heard[0], "both nodes get a share"
        assert heard[1], "both nodes get a share"
    else:
        # the broker accepts `$share/...` but never delivers `$oc/...` topics to it
        # (Mosquitto 2.0.11): each node falls back to plain subscriptions and hears all
        assert [node.shared for node in nodes] == [False, False]
        await wait_until(lambda: [len(h) for h in heard] == [20, 20], timeout_s=WAIT_S)
        assert "broker.shared_subscriptions_unusable" in broker_events(caplog)
