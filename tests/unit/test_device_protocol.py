"""The IoTDA device protocol's pure parts: client ids, passwords, topics, uplinks, ACL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetbatch.devices import topics
from fleetbatch.devices.auth import (
    ClientId,
    check_password,
    make_client_id,
    parse_client_id,
    sign_password,
    timestamp_is_current,
)
from fleetbatch.devices.channel import ExpiryWheel, NoResponse, PendingReplies

SPEC_DEVICE = "6660aa11bb22cc33dd44ee55_pump-017"
SPEC_SECRET = "Fb@2024secret"
SPEC_STAMP = "2024061503"
SPEC_PASSWORD = "77d9173d47056b7ec01f1af0e6fe62c4db6524e2aa7578d2fddfa9a581bcd74c"
SPEC_SWAPPED = "4fc68723eed38c2a87bf7ae056cb16760ab5ca7c9aee5d08a01ccc86d401209a"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_the_spec_worked_example_signs_and_verifies() -> None:
    # spec: device-mqtt §1.4
    assert sign_password(SPEC_SECRET, SPEC_STAMP) == SPEC_PASSWORD
    client_id = make_client_id(SPEC_DEVICE, SPEC_STAMP)
    assert client_id == f"{SPEC_DEVICE}_0_1_{SPEC_STAMP}"
    client = parse_client_id(client_id)
    assert client == ClientId(SPEC_DEVICE, "0", "1", SPEC_STAMP)
    now = ms("2024-06-15T03:20:00")
    assert check_password(client, SPEC_DEVICE, SPEC_PASSWORD.encode(), SPEC_SECRET, now_ms=now)
    assert check_password(
        client, SPEC_DEVICE, SPEC_PASSWORD.upper().encode(), SPEC_SECRET, now_ms=now
    )
    assert not check_password(client, SPEC_DEVICE, SPEC_SWAPPED.encode(), SPEC_SECRET, now_ms=now)
    assert not check_password(client, "other", SPEC_PASSWORD.encode(), SPEC_SECRET, now_ms=now)
    assert not check_password(client, SPEC_DEVICE, None, SPEC_SECRET, now_ms=now)


def test_sign_type_1_checks_the_hour_and_sign_type_0_does_not() -> None:
    checked = ClientId(SPEC_DEVICE, "0", "1", SPEC_STAMP)
    unchecked = ClientId(SPEC_DEVICE, "0", "0", SPEC_STAMP)
    late = ms("2024-06-15T06:00:00")
    password = SPEC_PASSWORD.encode()
    assert not check_password(checked, SPEC_DEVICE, password, SPEC_SECRET, now_ms=late)
    assert check_password(unchecked, SPEC_DEVICE, password, SPEC_SECRET, now_ms=late)
    # the stamp's hour widened by the tolerance on both sides
    assert timestamp_is_current(SPEC_STAMP, ms("2024-06-15T02:00:00"), 3600)
    assert timestamp_is_current(SPEC_STAMP, ms("2024-06-15T04:59:59"), 3600)
    assert not timestamp_is_current(SPEC_STAMP, ms("2024-06-15T05:00:00"), 3600)
    assert not timestamp_is_current(SPEC_STAMP, ms("2024-06-15T01:59:59"), 3600)
    assert timestamp_is_current(SPEC_STAMP, ms("2024-06-15T03:59:59"), 0)
    assert not timestamp_is_current("2024133103", ms("2024-06-15T03:00:00"), 3600)


@pytest.mark.parametrize(
    "client_id",
    [
        "",
        "dev",
        "dev_0_1",
        "dev_1_1_2024061503",
        "dev_0_2_2024061503",
        "dev_0_1_202406150",
        "_0_1_2024061503",
        "dev_0_1_20240615０3",
    ],
)
def test_client_ids_not_in_the_iotda_form_are_refused(client_id: str) -> None:
    assert parse_client_id(client_id) is None


@given(st.from_regex(r"[A-Za-z0-9_\-]{1,40}", fullmatch=True), st.sampled_from("01"))
def test_client_ids_parse_from_the_right_whatever_the_device_id_holds(
    device_id: str, sign_type: str
) -> None:
    parsed = parse_client_id(make_client_id(device_id, SPEC_STAMP, sign_type))
    assert parsed == ClientId(device_id, "0", sign_type, SPEC_STAMP)


def test_downlinks_use_the_exact_iotda_topics() -> None:
    d = "p_dev"
    cmd = topics.command(d, "r1", service_id="s", command_name="c", paras={"a": 1})
    assert cmd.topic == "$oc/devices/p_dev/sys/commands/request_id=r1"
    assert cmd.response_topic == "$oc/devices/p_dev/sys/commands/response/request_id=r1"
    assert (
        cmd.payload
        == b'{"object_device_id":"p_dev","service_id":"s","command_name":"c","paras":{"a":1}}'
    )
    pset = topics.properties_set(d, "r2", [{"service_id": "s", "properties": {"x": 1}}])
    assert pset.topic.endswith("/sys/properties/set/request_id=r2")
    assert pset.response_topic == "$oc/devices/p_dev/sys/properties/set/response/request_id=r2"
    pget = topics.properties_get(d, "r3", "s")
    assert pget.response_topic == "$oc/devices/p_dev/sys/properties/get/response/request_id=r3"
    assert topics.message(d, "hi").topic == "$oc/devices/p_dev/sys/messages/down"
    assert topics.events(d, []).topic == "$oc/devices/p_dev/sys/events/down"
    shadow = topics.shadow_response(d, "r4", [], object_device_id=d)
    assert shadow.topic == "$oc/devices/p_dev/sys/shadow/get/response/request_id=r4"


def test_uplinks_are_typed_by_topic_and_tolerate_bad_payloads() -> None:
    d = "p_dev"
    base = "$oc/devices/p_dev/sys/"

    def parse(rest: str, payload: bytes) -> topics.Uplink:
        return topics.parse_uplink(d, base + rest, payload, 5)

    response = parse("commands/response/request_id=a=b", b'{"result_code":3,"paras":{"x":1}}')
    assert isinstance(response, topics.CommandResponse)
    assert (response.request_id, response.result_code, response.paras) == ("a=b", 3, {"x": 1})
    assert parse("commands/response/request_id=z", b"{}").result_code == 0  # type: ignore[attr-defined]
    broken = parse("commands/response/request_id=z", b"not json")
    assert isinstance(broken, topics.CommandResponse)
    assert broken.body is None
    assert parse("commands/response/request_id=z", b'{"result_code":true}').result_code is None  # type: ignore[attr-defined]
    assert isinstance(
        parse("properties/set/response/request_id=1", b"{}"), topics.PropertiesSetResponse
    )
    get = parse("properties/get/response/request_id=1", b'{"services":[{"service_id":"s"}]}')
    assert isinstance(get, topics.PropertiesGetResponse)
    assert get.services == [{"service_id": "s"}]
    shadow = parse("shadow/get/request_id=9", b'{"service_id":"s"}')
    assert isinstance(shadow, topics.ShadowRequest)
    assert (shadow.request_id, shadow.object_device_id, shadow.service_id) == ("9", d, "s")
    assert isinstance(parse("properties/report", b'{"services":5}'), topics.PropertiesReport)
    assert isinstance(parse("messages/up", b"\xff\x00"), topics.MessageUp)
    assert isinstance(parse("events/up", b"{}"), topics.EventsUp)
    assert isinstance(parse("gateway/sub_devices/properties/report", b"{}"), topics.GatewayReport)
    assert isinstance(parse("unknown/thing", b"{}"), topics.OtherUplink)
    custom = topics.parse_uplink(d, "$oc/devices/p_dev/user/x", b"raw", 5)
    assert isinstance(custom, topics.OtherUplink)
    assert topics.device_id_of("$oc/devices/p_dev/sys/messages/up") == "p_dev"
    assert topics.device_id_of("other/p_dev") is None


def test_a_device_may_use_only_its_own_prefix() -> None:
    assert topics.may_publish("a", "$oc/devices/a/sys/messages/up")
    assert not topics.may_publish("a", "$oc/devices/ab/sys/messages/up")
    assert not topics.may_publish("a", "$oc/devices/b/sys/messages/up")
    assert topics.may_subscribe("a", "$oc/devices/a/#")
    assert topics.may_subscribe("a", "$oc/devices/a/sys/commands/+")
    assert not topics.may_subscribe("a", "$oc/devices/+/sys/commands/#")
    assert not topics.may_subscribe("a", "#")
    assert topics.is_system_topic("a", "$oc/devices/a/sys/commands/request_id=1")
    assert not topics.is_system_topic("a", "$oc/devices/a/user/x")


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("+/+", "a/b", True),
        ("#", "$oc/x", False),
        ("+/x", "$oc/x", False),
        ("$oc/#", "$oc/x", True),
        ("a/+/c", "a//c", True),
        ("a/b", "a/c", False),
    ],
)
def test_topic_filters_match_as_mqtt_specifies(
    topic_filter: str, topic: str, matches: bool
) -> None:
    assert topics.topic_matches(topic_filter, topic) is matches


async def test_replies_resolve_by_exact_topic_and_expire_in_one_sweep() -> None:
    import time

    pending = PendingReplies(resolution_s=0.01)
    started = time.monotonic()
    answered = pending.expect("t/1", "d", timeout_s=10)
    silent = pending.expect("t/2", "d", timeout_s=1.0)
    with pytest.raises(ValueError, match="awaited already"):
        pending.expect("t/1", "d", timeout_s=1)
    assert pending.resolve(topics.OtherUplink("d", "t/1", b"", 1))
    assert not pending.resolve(topics.OtherUplink("d", "t/1", b"", 1))  # once only
    assert (await answered).topic == "t/1"
    # never early: just before the deadline nothing expires, just after it the silent one does
    assert pending.sweep(now=started + 0.98) == 0
    assert not silent.done()
    assert pending.sweep(now=started + 1.02) == 1
    with pytest.raises(NoResponse) as failed:
        await silent
    assert failed.value.timeout_s == 1.0
    assert len(pending) == 0
    # an answered request is not kept for its deadline, and its slot expires nothing later
    assert pending.sweep(now=started + 11) == 0


async def test_the_expiry_wheel_skips_finished_futures_and_fails_the_rest_on_close() -> None:
    import time

    wheel = ExpiryWheel(resolution_s=0.01)
    loop = asyncio.get_running_loop()
    done, late, forever = loop.create_future(), loop.create_future(), loop.create_future()
    done.set_result(1)
    wheel.add(done, 0.0, TimeoutError)
    wheel.add(late, 0.5, TimeoutError)
    wheel.add(forever, 3600, TimeoutError)
    now = time.monotonic()
    assert wheel.sweep(now + 0.45) == 0  # never early
    assert wheel.sweep(now + 0.55) == 1
    with pytest.raises(TimeoutError):
        await late
    assert not forever.done()
    wheel.fail_all()
    with pytest.raises(TimeoutError):
        await forever
