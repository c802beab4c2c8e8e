"""IoTDA device topics and payloads (spec: device-mqtt §2): downlinks built, uplinks parsed.

Pure: no I/O. The built-in transport and the external-broker client both use it, so a device
sees the same topic strings and payloads whichever mode runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

TOPIC_ROOT = "$oc/devices/"
SYSTEM_SEGMENT = "sys/"
REQUEST_ID_MARK = "request_id="


def device_prefix(device_id: str) -> str:
    """`$oc/devices/{device_id}/`: every topic a device may use starts with it."""
    return f"{TOPIC_ROOT}{device_id}/"


# --- downlinks (platform -> device) ---------------------------------------------------------


# Downlinks and uplinks are made once per message on the hot path: plain slotted classes,
# since a frozen dataclass's __init__ costs about twice as much. Treat them as immutable.


@dataclass(slots=True)
class Downlink:
    """One message for one device; `response_topic` is where the device answers, if it does."""

    device_id: str
    topic: str
    payload: bytes
    qos: int = 1
    response_topic: str | None = None
    request_id: str | None = None


def _json(value: Any) -> bytes:
    # orjson: a tenth of the json module's cost, on every downlink (compact UTF-8, as IoTDA)
    return orjson.dumps(value)


def _request(device_id: str, request_id: str, kind: str, body: dict[str, Any]) -> Downlink:
    """A downlink on `sys/{kind}/request_id=...`, answered on `sys/{kind}/response/...`."""
    prefix = device_prefix(device_id)
    return Downlink(
        device_id,
        f"{prefix}sys/{kind}/{REQUEST_ID_MARK}{request_id}",
        _json(body),
        response_topic=f"{prefix}sys/{kind}/response/{REQUEST_ID_MARK}{request_id}",
        request_id=request_id,
    )


def command(
    device_id: str,
    request_id: str,
    *,
    service_id: str | None = None,
    command_name: str | None = None,
    paras: dict[str, Any] | None = None,
    object_device_id: str | None = None,
) -> Downlink:
    """A platform command (T1); the device answers on the command response topic (T2)."""
    body: dict[str, Any] = {"object_device_id": object_device_id or device_id}
    if service_id is not None:
        body["service_id"] = service_id
    if command_name is not None:
        body["command_name"] = command_name
    body["paras"] = paras if paras is not None else {}
    return _request(device_id, request_id, "commands", body)


def properties_set(
    device_id: str,
    request_id: str,
    services: list[dict[str, Any]],
    *,
    object_device_id: str | None = None,
) -> Downlink:
    """Set properties (T6); `services` items are `{"service_id", "properties"}`; answered on T7."""
    body = {"object_device_id": object_device_id or device_id, "services": services}
    return _request(device_id, request_id, "properties/set", body)


def properties_get(
    device_id: str,
    request_id: str,
    service_id: str | None = None,
    *,
    object_device_id: str | None = None,
) -> Downlink:
    """Ask for property values (T8), all services when `service_id` is None; answered on T9."""
    body: dict[str, Any] = {"object_device_id": object_device_id or device_id}
    if service_id is not None:
        body["service_id"] = service_id
    return _request(device_id, request_id, "properties/get", body)


def message(
    device_id: str,
    content: Any,
    *,
    message_id: str | None = None,
    name: str | None = None,
    object_device_id: str | None = None,
) -> Downlink:
    """A platform message in the system format (T3), acknowledged only by the PUBACK."""
    body: dict[str, Any] = {"object_device_id": object_device_id or device_id}
    if message_id is not None:
        body["id"] = message_id
    if name is not None:
        body["name"] = name
    body["content"] = content
    return Downlink(device_id, f"{device_prefix(device_id)}sys/messages/down", _json(body))


def raw_message(device_id: str, payload: bytes) -> Downlink:
    """A transparent message (T3): the bytes as given, no envelope."""
    return Downlink(device_id, f"{device_prefix(device_id)}sys/messages/down", payload)


def user_topic(device_id: str, suffix: str) -> str:
    """A custom topic (T15): `$oc/devices/{device_id}/user/{suffix}`."""
    return f"{device_prefix(device_id)}user/{suffix}"


def events(
    device_id: str, services: list[dict[str, Any]], *, object_device_id: str | None = None
) -> Downlink:
    """Platform events (T12): OTA, time sync, gateway management, ..."""
    body = {"object_device_id": object_device_id or device_id, "services": services}
    return Downlink(device_id, f"{device_prefix(device_id)}sys/events/down", _json(body))


def shadow_response(
    device_id: str, request_id: str, shadow: list[dict[str, Any]], *, object_device_id: str
) -> Downlink:
    """The platform's answer (T11) to a device's shadow request (T10)."""
    body = {"object_device_id": object_device_id, "shadow": shadow}
    return Downlink(
        device_id,
        f"{device_prefix(device_id)}sys/shadow/get/response/{REQUEST_ID_MARK}{request_id}",
        _json(body),
    )


# --- uplinks (device -> platform) -----------------------------------------------------------


@dataclass(slots=True)
class Uplink:
    """Something a device published. `body` is the parsed JSON, None when it is not JSON."""

    device_id: str
    topic: str
    payload: bytes
    received_ms: int
    body: Any = field(default=None, compare=False)


@dataclass(slots=True)
class CommandResponse(Uplink):
    """T2: `result_code` 0 is success; None when the device sent no usable code."""

    request_id: str = ""
    result_code: int | None = None
    response_name: str | None = None
    paras: Any = None


@dataclass(slots=True)
class PropertiesSetResponse(Uplink):
    """T7: `result_code` 0 is success."""

    request_id: str = ""
    result_code: int | None = None
    result_desc: str | None = None


@dataclass(slots=True)
class PropertiesGetResponse(Uplink):
    """T9: the property values, in the report's item shape."""

    request_id: str = ""
    services: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class ShadowRequest(Uplink):
    """T10: a device asks for its shadow (`object_device_id` for a gateway's sub-device)."""

    request_id: str = ""
    object_device_id: str = ""
    service_id: str | None = None


@dataclass(slots=True)
class PropertiesReport(Uplink):
    """T5: `services` items are `{"service_id", "properties", "event_time"?}`."""

    services: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class MessageUp(Uplink):
    """T4: a device message; `body` holds its JSON when it is JSON, else use `payload`."""


@dataclass(slots=True)
class EventsUp(Uplink):
    """T13: device events (OTA reports, time sync requests, ...)."""

    object_device_id: str = ""
    services: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class GatewayReport(Uplink):
    """T14: a gateway reports properties of its sub-devices."""

    devices: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class OtherUplink(Uplink):
    """A custom `user/...` topic, or a system topic fleetbatch does not interpret."""


def device_id_of(topic: str) -> str | None:
    """The device id a topic belongs to, or None when it is not under `$oc/devices/`."""
    if not topic.startswith(TOPIC_ROOT):
        return None
    device_id, sep, _ = topic[len(TOPIC_ROOT) :].partition("/")
    return device_id if sep and device_id else None


def _load(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    # orjson refuses what the json module takes (integers past 64 bits): try that too
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _int_or_none(value: Any) -> int | None:
    # bool is an int subclass; a device's `true` is not a result code
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def parse_uplink(device_id: str, topic: str, payload: bytes, received_ms: int) -> Uplink:
    """Type what `device_id` published on `topic` (already known to be under its prefix)."""
    rest = topic[len(TOPIC_ROOT) + len(device_id) + 1 :]
    if not rest.startswith(SYSTEM_SEGMENT):
        return OtherUplink(device_id, topic, payload, received_ms)
    rest = rest[len(SYSTEM_SEGMENT) :]
    body = _load(payload)
    obj = body if isinstance(body, dict) else {}
    head, mark, request_id = rest.rpartition(REQUEST_ID_MARK)
    if mark:
        if head == "commands/response/":
            return CommandResponse(
                device_id,
                topic,
                payload,
                received_ms,
                body,
                request_id=request_id,
                result_code=_int_or_none(obj.get("result_code", 0)),
                response_name=obj.get("response_name"),
                paras=obj.get("paras"),
            )
        if head == "properties/set/response/":
            desc = obj.get("result_desc")
            return PropertiesSetResponse(
                device_id,
                topic,
                payload,
                received_ms,
                body,
                request_id=request_id,
                result_code=_int_or_none(obj.get("result_code", 0)),
                result_desc=desc if isinstance(desc, str) else None,
            )
        if head == "properties/get/response/":
            return PropertiesGetResponse(
                device_id,
                topic,
                payload,
                received_ms,
                body,
                request_id=request_id,
                services=_list(obj.get("services")),
            )
        if head == "shadow/get/":
            object_id = obj.get("object_device_id")
            service_id = obj.get("service_id")
            return ShadowRequest(
                device_id,
                topic,
                payload,
                received_ms,
                body,
                request_id=request_id,
                object_device_id=object_id if isinstance(object_id, str) else device_id,
                service_id=service_id if isinstance(service_id, str) else None,
            )
        return OtherUplink(device_id, topic, payload, received_ms, body)
    if rest == "properties/report":
        return PropertiesReport(
            device_id, topic, payload, received_ms, body, services=_list(obj.get("services"))
        )
    if rest == "messages/up":
        return MessageUp(device_id, topic, payload, received_ms, body)
    if rest == "events/up":
        object_id = obj.get("object_device_id")
        return EventsUp(
            device_id,
            topic,
            payload,
            received_ms,
            body,
            object_device_id=object_id if isinstance(object_id, str) else device_id,
            services=_list(obj.get("services")),
        )
    if rest == "gateway/sub_devices/properties/report":
        return GatewayReport(
            device_id, topic, payload, received_ms, body, devices=_list(obj.get("devices"))
        )
    return OtherUplink(device_id, topic, payload, received_ms, body)


# --- access control -------------------------------------------------------------------------


def may_publish(device_id: str, topic: str) -> bool:
    """A device publishes only under its own `$oc/devices/{device_id}/`."""
    return topic.startswith(TOPIC_ROOT) and topic.startswith(device_prefix(device_id))


def may_subscribe(device_id: str, topic_filter: str) -> bool:
    """A device subscribes only to filters inside its own prefix (wildcards allowed there)."""
    prefix = device_prefix(device_id)
    return topic_filter.startswith(prefix) or topic_filter == prefix[:-1]


def is_system_topic(device_id: str, topic: str) -> bool:
    """System downlinks reach a connected device without a subscription."""
    return topic.startswith(device_prefix(device_id) + SYSTEM_SEGMENT)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching of a (valid) filter against a topic name."""
    if topic_filter == topic:
        return True
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    # MQTT-4.7.2-1: a filter starting with a wildcard does not match `$` topics
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    # a trailing `#` returned above, so it also matches its parent level (`a/#` matches `a`)
    return len(topic_levels) == len(filter_levels)
