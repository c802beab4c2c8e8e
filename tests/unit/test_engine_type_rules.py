"""The pure rules behind the task types: shadow merges, deletable gateways, message payloads."""

from __future__ import annotations

import base64
import json

import pytest

from fleetbatch.domain.documents import normalise_document
from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.registry import Device, DeviceStatus
from fleetbatch.domain.shadows import merge_properties, pushed_properties
from fleetbatch.domain.tasks import TaskType
from fleetbatch.engine.executors.messages import message_downlink, raw_payload
from fleetbatch.engine.executors.registry_ops import deletable


def test_a_desired_change_merges_deletes_with_null_and_clears_with_empty() -> None:
    current = {"a": 1, "b": 2}
    assert merge_properties(current, {"b": None, "c": 3}) == {"a": 1, "c": 3}
    assert merge_properties(current, {}) == {}
    assert merge_properties(None, {"a": None}) == {}
    assert current == {"a": 1, "b": 2}  # not changed in place
    assert pushed_properties({"a": 1, "b": None}) == {"a": 1}


def device(pk: int, device_id: str) -> Device:
    return Device(
        pk, device_id, "p", "a", "prod", device_id, device_id, None, DeviceStatus.OFFLINE,
        None, {}, None, None, None, 0, None, None, None,
    )  # fmt: skip


def test_a_gateway_goes_only_with_every_child() -> None:
    batch = {1: device(1, "gw"), 2: device(2, "c1"), 3: device(3, "gw2"), 4: device(4, "sub")}
    # gw's children are both in the batch, but c1 keeps a child of its own outside it
    children = [("gw", "c1"), ("gw", "sub"), ("c1", "grandchild"), ("gw2", "x")]
    assert deletable(batch, children) == {"sub"}
    assert deletable(batch, [("gw", "c1"), ("gw", "sub")]) == {"gw", "c1", "gw2", "sub"}


def test_message_payloads_and_topics() -> None:
    blob = bytes(range(10))
    assert raw_payload(base64.b64encode(blob).decode(), "base64") == blob
    assert raw_payload("text", "none") == b"text"
    assert raw_payload({"k": 1}, None) == b'{"k":1}'
    standard = message_downlink("d1", {"message": "hi", "name": "n"}, "m1")
    assert standard.topic == "$oc/devices/d1/sys/messages/down"
    assert json.loads(standard.payload) == {
        "object_device_id": "d1",
        "id": "m1",
        "name": "n",
        "content": "hi",
    }
    custom = message_downlink("d1", {"message": "hi", "topic": "a/b"}, "m1", raw=b"hi")
    assert (custom.topic, custom.payload) == ("$oc/devices/d1/user/a/b", b"hi")
    full = message_downlink("d1", {"message": "hi", "topic_full_name": "x/y"}, "m1", raw=b"hi")
    assert full.topic == "x/y"


def test_a_base64_message_must_decode() -> None:
    with pytest.raises(InvalidInput) as caught:
        normalise_document(TaskType.CREATE_MESSAGES, {"message": "*not*", "encoding": "base64"})
    assert caught.value.field == "document.message"
