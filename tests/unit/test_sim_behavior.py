"""The simulator's behaviour language, its resolution over a fleet, and a device's answers.

Pure: the device tests drive `SimDevice.data_received` with bytes and read what it writes
through a recording transport, so the wire format is checked without a socket.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetbatch.devices.codec import (
    Connack,
    PacketReader,
    Puback,
    Publish,
    Subscribe,
    encode,
    encode_puback,
    encode_publish,
)
from fleetbatch.devices.topics import command, properties_get, properties_set
from fleetbatch.sim.behavior import (
    DEFAULT_BEHAVIOR,
    Behavior,
    Latency,
    draw_key,
    draws,
    parse_behavior,
    parse_latency,
    parse_selector,
    resolve,
    resolve_texts,
)
from fleetbatch.sim.device import CONNECTING, READY, STOPPED, DeviceHub, SimDevice
from fleetbatch.sim.fleet import FleetDevice, parse_fleet
from fleetbatch.sim.stats import SimStats, merge_snapshots
from support.waiting import wait_until

FLEET = [f"prod_dev-{i:04d}" for i in range(1000)]

# --- parsing ----------------------------------------------------------------------------------


def test_a_plain_value_applies_to_every_device() -> None:
    spec = parse_behavior("latency=uniform:5,50")
    assert spec.selector.kind == "all"
    assert spec.changes == (("latency", Latency("uniform", 5.0, 50.0)),)


def test_commas_inside_a_latency_value_do_not_split_items() -> None:
    spec = parse_behavior("latency=normal:20,5,fail_rate=0.25,fail_code=7")
    assert dict(spec.changes) == {
        "latency": Latency("normal", 20.0, 5.0),
        "fail_rate": 0.25,
        "fail_code": 7,
    }


@pytest.mark.parametrize(
    ("text", "kind", "selector_text"),
    [
        ("10%:silent=true", "percent", "10%"),
        ("dev-00*:fail_rate=0.5", "glob", "dev-00*"),
        ("prod_dev-0001:silent=1", "device", "prod_dev-0001"),
        ("*:silent=on", "all", "*"),
    ],
)
def test_selectors(text: str, kind: str, selector_text: str) -> None:
    spec = parse_behavior(text)
    assert spec.selector.kind == kind
    assert spec.selector.text == selector_text
    assert len(spec.changes) == 1


def test_every_key_and_its_unit_spelling() -> None:
    spec = parse_behavior(
        "latency=exp:20,fail_rate=0.1,fail_code=3,silent=no,flaky_s=30,backoff_min=0.5,"
        "backoff_max_s=8,report_interval=60,shadow_on_connect=yes"
    )
    behavior = resolve(["d"], [spec], seed=0)[0]
    assert behavior == Behavior(
        latency=Latency("exp", 20.0),
        fail_rate=0.1,
        fail_code=3,
        silent=False,
        flaky_s=30.0,
        backoff_min_s=0.5,
        backoff_max_s=8.0,
        report_interval_s=60.0,
        shadow_on_connect=True,
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected [selector:]key=value"),
        ("silent", "expected [selector:]key=value"),
        ("10%:", "expected [selector:]key=value"),
        ("speed=3", "unknown key 'speed'"),
        ("fail_rate=2", "fail_rate must be between 0 and 1"),
        ("fail_rate=lots", "fail_rate must be a number"),
        ("silent=maybe", "silent must be true or false"),
        ("fail_code=1.5", "fail_code must be an integer"),
        ("latency=gauss:1,2", "latency kind must be one of"),
        ("latency=uniform:50,5", "low <= high"),
        ("latency=uniform:5", "takes two values"),
        ("latency=exp:1,2", "takes one value"),
        ("latency=-3", "latency must be >= 0"),
        ("150%:silent=true", "between 0 and 100"),
        ("x%:silent=true", "a percentage is a number"),
        ("fail_rate=", "is not key=value"),
        ("silent=true,=3", "is not key=value"),
        ("flaky=-1", "flaky must be >= 0"),
    ],
)
def test_bad_syntax_is_a_value_error_naming_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)) as raised:
        parse_behavior(text)
    assert "\n" not in str(raised.value)


def test_latency_shorthand_is_constant_ms() -> None:
    assert parse_latency("12") == Latency("constant", 12.0)
    assert parse_latency("constant:0").is_zero
    assert str(parse_latency("uniform:5,50")) == "uniform:5,50"


def test_a_percentage_selector_accepts_fractions() -> None:
    assert parse_selector("2.5%").percent == 2.5
    assert parse_selector("dev-[0-9]").kind == "glob"


# --- resolution -------------------------------------------------------------------------------


def test_later_values_override_earlier_ones_per_device() -> None:
    behaviors = resolve_texts(
        FLEET,
        [
            "latency=uniform:5,50",
            "prod_dev-00*:fail_rate=0.5",
            "prod_dev-000[0-4]:fail_rate=0,silent=true",
        ],
        seed=1,
    )
    assert behaviors[0] == Behavior(latency=Latency("uniform", 5, 50), silent=True)
    assert behaviors[5] == Behavior(latency=Latency("uniform", 5, 50), fail_rate=0.5)
    assert behaviors[100] == Behavior(latency=Latency("uniform", 5, 50))
    assert sum(b.fail_rate == 0.5 for b in behaviors) == 95


def test_devices_that_end_up_alike_share_one_instance() -> None:
    behaviors = resolve_texts(FLEET, ["latency=5", "10%:silent=true"], seed=3)
    assert len({id(b) for b in behaviors}) == 2


def test_no_values_gives_the_default_to_everyone() -> None:
    assert resolve(FLEET, [], seed=0) == [DEFAULT_BEHAVIOR] * len(FLEET)


def test_a_percentage_picks_that_many_devices_deterministically_with_the_seed() -> None:
    first = resolve_texts(FLEET, ["10%:silent=true"], seed=42)
    again = resolve_texts(FLEET, ["10%:silent=true"], seed=42)
    other = resolve_texts(FLEET, ["10%:silent=true"], seed=43)
    silent = [i for i, b in enumerate(first) if b.silent]
    assert len(silent) == 100
    assert silent == [i for i, b in enumerate(again) if b.silent]
    assert silent != [i for i, b in enumerate(other) if b.silent]


def test_two_percentage_values_choose_independently() -> None:
    behaviors = resolve_texts(FLEET, ["50%:silent=true", "50%:fail_rate=1"], seed=7)
    both = sum(b.silent and b.fail_rate == 1 for b in behaviors)
    assert 150 < both < 350  # independent halves overlap by about a quarter


def test_silent_rate_silences_that_fraction_of_the_selected_devices() -> None:
    def silent(seed: int) -> list[int]:
        behaviors = resolve_texts(FLEET, ["prod_dev-00*:silent_rate=0.2"], seed=seed)
        return [i for i, b in enumerate(behaviors) if b.silent]

    assert len(silent(5)) == 20
    assert all(i < 100 for i in silent(5))
    assert silent(5) == silent(5)
    assert silent(5) != silent(6)


def test_an_unknown_device_id_selects_nothing() -> None:
    assert resolve_texts(FLEET, ["nobody:silent=true"], seed=0) == [DEFAULT_BEHAVIOR] * 1000


@given(st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=2**32))
def test_any_percentage_picks_its_rounded_share(percent: int, seed: int) -> None:
    behaviors = resolve_texts(FLEET[:200], [f"{percent}%:silent=true"], seed=seed)
    assert sum(b.silent for b in behaviors) == round(200 * percent / 100)


# --- per-request draws ------------------------------------------------------------------------


def test_draws_depend_only_on_seed_device_and_request() -> None:
    key = draw_key(9, "dev-1")
    assert draws(key, "r1") == draws(draw_key(9, "dev-1"), "r1")
    assert draws(key, "r1") != draws(key, "r2")
    assert draws(key, "r1") != draws(draw_key(10, "dev-1"), "r1")
    assert all(0.0 <= u < 1.0 for u in draws(key, "r1"))


def test_a_fail_rate_fails_about_that_share_of_requests() -> None:
    key = draw_key(0, "dev")
    failed = sum(draws(key, f"r{i}")[1] < 0.3 for i in range(5000))
    assert 1300 < failed < 1700


@pytest.mark.parametrize(
    ("latency", "low_s", "high_s"),
    [
        (Latency("constant", 20), 0.020, 0.020),
        (Latency("uniform", 5, 50), 0.005, 0.050),
        (Latency("normal", 20, 50), 0.0, 1.0),
        (Latency("exp", 20), 0.0, 2.0),
    ],
)
def test_latency_samples_stay_in_range_and_are_never_negative(
    latency: Latency, low_s: float, high_s: float
) -> None:
    key = draw_key(1, "dev")
    samples = [latency.sample_s(draws(key, f"r{i}")[0]) for i in range(2000)]
    assert all(low_s <= s <= high_s for s in samples)
    assert latency.sample_s(0.0) >= 0.0
    assert latency.sample_s(0.999999) >= 0.0


def test_normal_latency_is_clipped_at_zero() -> None:
    latency = Latency("normal", 1, 100)
    assert latency.sample_s(0.01) == 0.0


def test_backoff_doubles_from_min_to_max_with_at_most_20_percent_jitter() -> None:
    behavior = Behavior()
    assert [behavior.backoff_s(n, 0.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert behavior.backoff_s(0, 0.99) == pytest.approx(1.198)
    assert behavior.backoff_s(10, 0.99) == 30.0
    assert behavior.backoff_s(10_000, 0.5) == 30.0


def test_only_non_default_answers_need_draws() -> None:
    assert not Behavior().needs_draws
    assert Behavior(fail_rate=0.1).needs_draws
    assert Behavior(latency=Latency("constant", 1)).needs_draws


# --- fleet file and counters ------------------------------------------------------------------


def test_a_fleet_document_becomes_devices() -> None:
    fleet = parse_fleet(
        {
            "app_id": "a1",
            "project_id": "p1",
            "product_id": "prod",
            "devices": [{"device_id": "prod_n1", "node_id": "n1", "secret": "s1"}],
        }
    )
    assert fleet.devices == [FleetDevice("prod_n1", "s1", "n1", "")]
    assert (fleet.app_id, fleet.project_id, fleet.product_id) == ("a1", "p1", "prod")


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ([], "expected a JSON object"),
        ({}, "expected a devices list"),
        ({"devices": [3]}, "devices[0]: expected an object"),
        ({"devices": [{"secret": "s"}]}, "devices[0]: device_id must be a non-empty string"),
        ({"devices": [{"device_id": "d"}]}, "devices[0]: secret must be a non-empty string"),
        (
            {"devices": [{"device_id": "d", "secret": "s"}, {"device_id": "d", "secret": "t"}]},
            "devices[1]: device_id 'd' appears twice",
        ),
    ],
)
def test_a_bad_fleet_document_names_its_first_problem(document: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_fleet(document)


def test_snapshots_of_several_processes_add_up() -> None:
    one = SimStats(connected=3, commands_answered=10, refused={4: 1})
    two = SimStats(connected=2, commands_answered=5, refused={4: 2, 5: 1})
    total = merge_snapshots([one.snapshot(), two.snapshot(), {}])
    assert total["connected"] == 5
    assert total["commands_answered"] == 15
    assert total["refused"] == {"4": 3, "5": 1}
    assert json.loads(json.dumps(total)) == total


# --- one device on the wire -------------------------------------------------------------------


class RecordingTransport(asyncio.Transport):
    """Collects what the device writes; closing it is recorded, not performed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def packets(self) -> list[Any]:
        """Decode (and forget) what was written, as the server would read it."""
        data = bytes(self.written)
        self.written.clear()
        return PacketReader(server_side=True).feed(data)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    new_loop = asyncio.new_event_loop()
    try:
        yield new_loop
    finally:
        new_loop.close()


def connected_device(
    loop: asyncio.AbstractEventLoop,
    behavior: Behavior = DEFAULT_BEHAVIOR,
    *,
    qos: int = 1,
    subscribe: bool = False,
) -> tuple[SimDevice, RecordingTransport]:
    hub = DeviceHub(
        loop,
        SimStats(),
        host="127.0.0.1",
        port=1883,
        ssl_context=None,
        qos=qos,
        subscribe=subscribe,
        keepalive_s=120,
        sign_type="1",
        seed=0,
        connect_timeout_s=1.0,
        enqueue=lambda device: None,
        on_ready=lambda: None,
        on_closed=lambda: None,
    )
    device = SimDevice(hub, "prod_dev-1", "secret", behavior)
    transport = RecordingTransport()
    device._state = CONNECTING  # as `connect()` leaves it while the TCP connect runs
    device.connection_made(transport)
    transport.packets()  # the CONNECT
    device.data_received(encode(Connack(0)))
    return device, transport


def command_bytes(request_id: str, command_name: str | None = "open", packet_id: int = 7) -> bytes:
    downlink = command("prod_dev-1", request_id, command_name=command_name, paras={"pct": 5})
    return encode_publish(downlink.topic, downlink.payload, 1, packet_id)


def stats_of(device: SimDevice) -> SimStats:
    return device._hub.stats


def test_a_command_is_acknowledged_and_answered_in_one_write(
    loop: asyncio.AbstractEventLoop,
) -> None:
    device, transport = connected_device(loop)
    device.data_received(command_bytes("r-1"))
    puback, response = transport.packets()
    assert puback == Puback(7)
    assert isinstance(response, Publish)
    assert response.topic == "$oc/devices/prod_dev-1/sys/commands/response/request_id=r-1"
    assert response.qos == 1
    assert json.loads(response.payload) == {
        "result_code": 0,
        "response_name": "open",
        "paras": {"result": "ok"},
    }
    assert stats_of(device).commands_answered == 1


def test_a_command_split_across_reads_and_packed_with_others_is_answered(
    loop: asyncio.AbstractEventLoop,
) -> None:
    device, transport = connected_device(loop)
    stream = command_bytes("a", packet_id=1) + encode_puback(1) + command_bytes("b", packet_id=2)
    for cut in (3, 40, len(stream) - 2):
        device.data_received(stream[:cut])
        device.data_received(stream[cut:])
    packets = transport.packets()
    responses = [p.topic.rsplit("=", 1)[1] for p in packets if isinstance(p, Publish)]
    assert responses == ["a", "b"] * 3
    assert stats_of(device).publish_acks_received == 3
    assert {p.packet_id for p in packets if isinstance(p, Publish)} == set(range(1, 7))


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (b'{"command_name":"reboot"}', "reboot"),
        (b'{"command_name" : "spaced"}', "spaced"),
        (b'{"command_name":"quo\\"te"}', 'quo"te'),
        (b'{"paras":{}}', None),
        (b"not json at all", None),
    ],
)
def test_the_response_echoes_the_command_name(
    loop: asyncio.AbstractEventLoop, payload: bytes, name: str | None
) -> None:
    device, transport = connected_device(loop)
    topic = "$oc/devices/prod_dev-1/sys/commands/request_id=x"
    device.data_received(encode_publish(topic, payload, 1, 3))
    response = transport.packets()[1]
    assert json.loads(response.payload).get("response_name") == name


@pytest.mark.parametrize("request_id", ["a=b", "ü-1", "x/request_id=y", ""])
def test_unusual_request_ids_are_echoed_after_the_last_mark(
    loop: asyncio.AbstractEventLoop, request_id: str
) -> None:
    device, transport = connected_device(loop)
    device.data_received(command_bytes(request_id))
    response = transport.packets()[1]
    expected = request_id.rpartition("request_id=")[2]
    assert response.topic.endswith(f"/sys/commands/response/request_id={expected}")


def test_qos_0_responses_carry_no_packet_id(loop: asyncio.AbstractEventLoop) -> None:
    device, transport = connected_device(loop, qos=0)
    device.data_received(command_bytes("r"))
    response = transport.packets()[1]
    assert (response.qos, response.packet_id) == (0, 0)


def test_a_silent_device_acknowledges_but_never_answers(
    loop: asyncio.AbstractEventLoop,
) -> None:
    device, transport = connected_device(loop, Behavior(silent=True))
    device.data_received(command_bytes("r"))
    set_request = properties_set("prod_dev-1", "s", [{"service_id": "a", "properties": {}}])
    device.data_received(encode_publish(set_request.topic, set_request.payload, 1, 8))
    assert transport.packets() == [Puback(7), Puback(8)]
    assert stats_of(device).requests_ignored == 2


def test_a_failing_device_answers_with_its_fail_code(loop: asyncio.AbstractEventLoop) -> None:
    device, transport = connected_device(loop, Behavior(fail_rate=1.0, fail_code=9))
    device.data_received(command_bytes("r"))
    response = transport.packets()[1]
    assert json.loads(response.payload)["result_code"] == 9
    assert stats_of(device).commands_failed == 1


def test_properties_set_then_get_returns_the_values(loop: asyncio.AbstractEventLoop) -> None:
    device, transport = connected_device(loop)
    services = [{"service_id": "valve", "properties": {"pct": 40, "mode": "auto"}}]
    set_request = properties_set("prod_dev-1", "s1", services)
    device.data_received(encode_publish(set_request.topic, set_request.payload, 1, 1))
    get_request = properties_get("prod_dev-1", "g1", "valve")
    device.data_received(encode_publish(get_request.topic, get_request.payload, 1, 2))
    packets = [p for p in transport.packets() if isinstance(p, Publish)]
    assert packets[0].topic.endswith("/sys/properties/set/response/request_id=s1")
    assert json.loads(packets[0].payload) == {"result_code": 0, "result_desc": "success"}
    assert packets[1].topic.endswith("/sys/properties/get/response/request_id=g1")
    [service] = json.loads(packets[1].payload)["services"]
    assert service["service_id"] == "valve"
    assert service["properties"] == {"pct": 40, "mode": "auto"}
    assert len(service["event_time"]) == 16


def test_delayed_answers_wait_for_their_latency(loop: asyncio.AbstractEventLoop) -> None:
    device, transport = connected_device(loop, Behavior(latency=Latency("constant", 30)))
    device.data_received(command_bytes("r"))
    assert transport.packets() == [Puback(7)]
    loop.run_until_complete(wait_until(lambda: transport.written, timeout_s=5))
    [response] = transport.packets()
    assert response.topic.endswith("request_id=r")
    assert stats_of(device).commands_answered == 1


def test_a_delayed_answer_for_a_lost_connection_is_dropped(
    loop: asyncio.AbstractEventLoop,
) -> None:
    device, _ = connected_device(loop, Behavior(latency=Latency("constant", 10)))
    device.data_received(command_bytes("r"))
    device.connection_lost(None)
    loop.run_until_complete(wait_until(lambda: stats_of(device).answers_lost, timeout_s=5))
    assert stats_of(device).answers_lost == 1
    assert stats_of(device).commands_answered == 0


def test_subscribing_devices_are_ready_only_after_suback(
    loop: asyncio.AbstractEventLoop,
) -> None:
    device, transport = connected_device(loop, subscribe=True)
    [subscribe] = transport.packets()
    assert isinstance(subscribe, Subscribe)
    assert [topic for topic, _ in subscribe.topics] == [
        "$oc/devices/prod_dev-1/sys/commands/#",
        "$oc/devices/prod_dev-1/sys/messages/down",
        "$oc/devices/prod_dev-1/sys/properties/set/#",
        "$oc/devices/prod_dev-1/sys/properties/get/#",
        "$oc/devices/prod_dev-1/sys/shadow/get/response/#",
        "$oc/devices/prod_dev-1/sys/events/down",
    ]
    assert device.state == CONNECTING
    device.data_received(bytes((0x90, 8, 0, subscribe.packet_id, 1, 1, 1, 1, 1, 1)))
    assert device.state == READY


def test_a_refused_connect_stops_the_device(loop: asyncio.AbstractEventLoop) -> None:
    hub_device, _ = connected_device(loop)  # borrow its hub
    device = SimDevice(hub_device._hub, "prod_dev-2", "secret", DEFAULT_BEHAVIOR)
    device._state = CONNECTING
    refused = RecordingTransport()
    device.connection_made(refused)
    device.data_received(encode(Connack(4)))
    assert refused.closed
    assert device.state == STOPPED


def test_garbage_from_the_server_closes_the_connection(loop: asyncio.AbstractEventLoop) -> None:
    device, transport = connected_device(loop)
    failed_reader = device._hub.reader
    device.data_received(b"\xf0\x00")  # reserved packet type 15
    assert transport.closed
    assert stats_of(device).errors == 1
    # the reader every device shares was replaced, so the others still decode
    assert device._hub.reader is not failed_reader
    assert device._hub.reader.feed(encode(Connack(0))) == [Connack(0)]
