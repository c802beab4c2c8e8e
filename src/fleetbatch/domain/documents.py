"""The operation document of each task type: checked and normalised before a task is stored.

Field names and limits are IoTDA's (spec: iotda-v5 §4.3, §5.4, §5.5); the legacy DeviceCmd
command (serviceId, method, paras) is mapped to the `createCommands` document by its dialect.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import orjson

from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.tasks import REGISTRY_TASK_TYPES, TaskType

MAX_PARAS_BYTES = 32 * 1024
MAX_SHADOW_BYTES = 10 * 1024
MAX_SHADOW_SERVICES = 5
MAX_ASYNC_EXPIRE_S = 2 * 24 * 3600
DEFAULT_ASYNC_EXPIRE_S = 24 * 3600
SEND_STRATEGIES = ("immediately", "delay")
MESSAGE_ENCODINGS = ("none", "base64")
PAYLOAD_FORMATS = ("standard", "raw")


def normalise_document(task_type: TaskType, document: Any) -> dict[str, Any]:
    """The document with defaults filled in; InvalidInput names the first bad field."""
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise InvalidInput("document", "must be a JSON object")
    if task_type in REGISTRY_TASK_TYPES:
        if document:
            raise InvalidInput("document", f"{task_type.value} takes no document")
        return {}
    if task_type is TaskType.CREATE_COMMANDS:
        return _command(document)
    if task_type is TaskType.CREATE_ASYNC_COMMANDS:
        return _async_command(document)
    if task_type is TaskType.CREATE_MESSAGES:
        return _message(document)
    if task_type is TaskType.UPDATE_DEVICE_SHADOWS:
        return _shadow(document)
    raise InvalidInput("task_type", f"{task_type.value} is not supported")


def _optional_text(document: Mapping[str, Any], name: str, max_len: int) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_len:
        raise InvalidInput(f"document.{name}", f"must be a string of 1 to {max_len} characters")
    return value


def _command(document: Mapping[str, Any]) -> dict[str, Any]:
    _refuse_unknown(document, {"service_id", "command_name", "paras"})
    paras = document.get("paras")
    if not isinstance(paras, Mapping):
        raise InvalidInput("document.paras", "is required and must be a JSON object")
    if len(orjson.dumps(paras)) > MAX_PARAS_BYTES:
        raise InvalidInput("document.paras", f"must be at most {MAX_PARAS_BYTES} bytes")
    result: dict[str, Any] = {"paras": dict(paras)}
    for name, max_len in (("service_id", 64), ("command_name", 128)):
        if (value := _optional_text(document, name, max_len)) is not None:
            result[name] = value
    return result


def _async_command(document: Mapping[str, Any]) -> dict[str, Any]:
    _refuse_unknown(
        document, {"service_id", "command_name", "paras", "expire_time", "send_strategy"}
    )
    result = _command(
        {k: v for k, v in document.items() if k in ("service_id", "command_name", "paras")}
    )
    strategy = document.get("send_strategy", "delay")
    if strategy not in SEND_STRATEGIES:
        raise InvalidInput("document.send_strategy", "must be immediately or delay")
    expire = document.get("expire_time", DEFAULT_ASYNC_EXPIRE_S)
    if (
        not isinstance(expire, int)
        or isinstance(expire, bool)
        or not 0 <= expire <= MAX_ASYNC_EXPIRE_S
    ):
        raise InvalidInput("document.expire_time", f"must be 0 to {MAX_ASYNC_EXPIRE_S} seconds")
    result["send_strategy"] = strategy
    result["expire_time"] = expire
    return result


def _message(document: Mapping[str, Any]) -> dict[str, Any]:
    _refuse_unknown(
        document,
        {
            "message_id",
            "name",
            "message",
            "encoding",
            "payload_format",
            "topic",
            "topic_full_name",
            "properties",
            "ttl",
        },
    )
    if "message" not in document or document["message"] is None:
        raise InvalidInput("document.message", "is required")
    message = document["message"]
    if len(orjson.dumps(message)) > MAX_PARAS_BYTES:
        raise InvalidInput("document.message", f"must be at most {MAX_PARAS_BYTES} bytes")
    result: dict[str, Any] = {"message": message}
    for name, max_len in (
        ("message_id", 100),
        ("name", 128),
        ("topic", 128),
        ("topic_full_name", 128),
    ):
        if (value := _optional_text(document, name, max_len)) is not None:
            result[name] = value
    if "topic" in result and "topic_full_name" in result:
        raise InvalidInput("document.topic", "give topic or topic_full_name, not both")
    for topic_name in ("topic", "topic_full_name"):
        topic = result.get(topic_name, "")
        if any(char in topic for char in "#+\0"):
            raise InvalidInput(f"document.{topic_name}", "may not contain wildcards")
    encoding = document.get("encoding", "none")
    if encoding not in MESSAGE_ENCODINGS:
        raise InvalidInput("document.encoding", "must be none or base64")
    payload_format = document.get("payload_format", "standard")
    if payload_format not in PAYLOAD_FORMATS:
        raise InvalidInput("document.payload_format", "must be standard or raw")
    if encoding == "base64":
        if not isinstance(message, str):
            raise InvalidInput("document.message", "a base64 message is a string")
        try:
            base64.b64decode(message, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("document.message", "is not valid base64") from None
    result["encoding"] = encoding
    result["payload_format"] = payload_format
    if document.get("properties") is not None:
        if not isinstance(document["properties"], Mapping):
            raise InvalidInput("document.properties", "must be a JSON object")
        result["properties"] = dict(document["properties"])
    if document.get("ttl") is not None:
        ttl = document["ttl"]
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 1440:
            raise InvalidInput("document.ttl", "must be 0 to 1440 minutes")
        result["ttl"] = ttl
    return result


def _shadow(document: Mapping[str, Any]) -> dict[str, Any]:
    _refuse_unknown(document, {"shadow"})
    shadow = document.get("shadow")
    if not isinstance(shadow, list) or not shadow:
        raise InvalidInput("document.shadow", "is required: a list of {service_id, desired}")
    services: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(shadow):
        where = f"document.shadow[{index}]"
        if not isinstance(item, Mapping):
            raise InvalidInput(where, "must be an object")
        service_id = item.get("service_id")
        if not isinstance(service_id, str) or not 1 <= len(service_id) <= 64:
            raise InvalidInput(f"{where}.service_id", "is required, 1 to 64 characters")
        desired = item.get("desired")
        if not isinstance(desired, Mapping):
            raise InvalidInput(f"{where}.desired", "is required and must be a JSON object")
        for key in desired:
            if not key or any(char in key for char in ".$\0"):
                raise InvalidInput(
                    f"{where}.desired", f"property {key!r} may not contain . $ or NUL"
                )
        if service_id in seen:
            raise InvalidInput(f"{where}.service_id", f"{service_id} is given twice")
        seen.add(service_id)
        services.append({"service_id": service_id, "desired": dict(desired)})
    if len(seen) > MAX_SHADOW_SERVICES:
        raise InvalidInput("document.shadow", f"at most {MAX_SHADOW_SERVICES} services")
    if len(orjson.dumps(services)) > MAX_SHADOW_BYTES:
        raise InvalidInput("document.shadow", f"must be at most {MAX_SHADOW_BYTES} bytes")
    return {"shadow": services}


def _refuse_unknown(document: Mapping[str, Any], known: set[str]) -> None:
    unknown = set(document) - known
    if unknown:
        raise InvalidInput(f"document.{sorted(unknown)[0]}", "is not a field of this document")
