"""Registry records (projects, apps, products, devices, groups) and their validation rules.

Limits are those IoTDA documents (spec: iotda-v5 §5.1–5.3, §6); validation raises
`InvalidInput` naming the offending field, before anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from fleetbatch.domain.errors import InvalidInput

MAX_EXTENSION_INFO_BYTES = 1024

T = TypeVar("T")

_ID_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_GROUP_ID = re.compile(r"[0-9a-fA-F-]{1,36}")

PROTOCOL_TYPES = (
    "MQTT", "CoAP", "HTTP", "HTTPS", "Modbus", "ONVIF", "OPC-UA", "OPC-DA", "Other", "TCP", "UDP",
)  # fmt: skip
DATA_FORMATS = ("json", "binary")


class DeviceStatus(StrEnum):
    """A device's registry status as IoTDA reports it."""

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    ABNORMAL = "ABNORMAL"
    INACTIVE = "INACTIVE"  # registered, never connected
    FROZEN = "FROZEN"


@dataclass(frozen=True, slots=True)
class Project:
    """A tenant: everything else lives inside exactly one project."""

    project_id: str
    name: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class App:
    """An application (IoTDA resource space, OceanConnect appId) inside a project."""

    app_id: str
    project_id: str
    name: str
    throttle_per_min: int
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class AppCredentials:
    """Everything `create_app` hands out once: the secrets are not kept in clear elsewhere."""

    project_id: str
    app_id: str
    secret: str
    access_key: str
    secret_key: str


@dataclass(frozen=True, slots=True)
class Product:
    """A product (device model): what devices of one kind share."""

    product_id: str
    project_id: str
    app_id: str
    name: str
    device_type: str
    protocol_type: str
    data_format: str
    manufacturer_id: str | None
    manufacturer_name: str | None
    model: str | None
    industry: str | None
    description: str | None
    service_capabilities: list[dict[str, Any]]
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class NewProduct:
    """What a caller gives to create a product; `product_id` is generated when absent."""

    name: str
    device_type: str
    protocol_type: str = "MQTT"
    data_format: str = "json"
    product_id: str | None = None
    manufacturer_id: str | None = None
    manufacturer_name: str | None = None
    model: str | None = None
    industry: str | None = None
    description: str | None = None
    service_capabilities: list[dict[str, Any]] = field(default_factory=list)

    def validate(self) -> None:
        """Raise `InvalidInput` for the first field outside IoTDA's documented limits."""
        check_text("name", self.name, 1, 64)
        check_text("device_type", self.device_type, 1, 32)
        if self.protocol_type not in PROTOCOL_TYPES:
            raise InvalidInput("protocol_type", f"must be one of {', '.join(PROTOCOL_TYPES)}")
        if self.data_format not in DATA_FORMATS:
            raise InvalidInput("data_format", "must be json or binary")
        if self.product_id is not None:
            check_identifier("product_id", self.product_id, 36)
        check_optional_text("manufacturer_id", self.manufacturer_id, 128)
        check_optional_text("manufacturer_name", self.manufacturer_name, 32)
        check_optional_text("model", self.model, 128)
        check_optional_text("industry", self.industry, 64)
        check_optional_text("description", self.description, 128)
        if len(self.service_capabilities) > 500:
            raise InvalidInput("service_capabilities", "at most 500 services")


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device. Its secret is never part of this record."""

    pk: int
    device_id: str
    project_id: str
    app_id: str
    product_id: str
    node_id: str
    name: str
    description: str | None
    status: DeviceStatus
    location: str | None
    tags: dict[str, str]
    gateway_id: str | None
    fw_version: str | None
    sw_version: str | None
    created_at_ms: int
    active_at_ms: int | None
    last_seen_at_ms: int | None
    status_changed_at_ms: int | None
    extension_info: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class NewDevice:
    """What a caller gives to register one device; omitted values are derived or generated."""

    node_id: str
    device_id: str | None = None
    name: str | None = None
    secret: str | None = None
    description: str | None = None
    location: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    gateway_id: str | None = None
    extension_info: dict[str, Any] | None = None
    # initial desired values: (service id, properties), stored as a shadow update would
    shadow: tuple[tuple[str, dict[str, Any]], ...] = ()

    def validate(self) -> None:
        """Raise `InvalidInput` for the first field outside IoTDA's documented limits."""
        check_identifier("node_id", self.node_id, 64)
        check_extension_info("extension_info", self.extension_info)
        if self.device_id is not None:
            check_identifier("device_id", self.device_id, 128)
        check_optional_text("device_name", self.name, 256)
        if self.secret is not None:
            check_secret("secret", self.secret)
        check_optional_text("description", self.description, 2048)
        check_optional_text("location", self.location, 1024)
        for key, value in self.tags.items():
            check_text("tag_key", key, 1, 64)
            check_text("tag_value", value, 0, 128)


@dataclass(frozen=True, slots=True)
class CreatedDevice:
    """A device just registered, with the secret that is shown this once."""

    device_id: str
    node_id: str
    product_id: str
    secret: str


@dataclass(frozen=True, slots=True)
class DeviceGroup:
    """A named set of devices inside an app, optionally nested under a parent group."""

    group_id: str
    project_id: str
    app_id: str
    name: str
    description: str | None
    parent_group_id: str | None
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: the items, how many match in all, and the next marker."""

    items: list[T]
    count: int
    marker: str | None


def check_text(name: str, value: str, min_len: int, max_len: int) -> None:
    """Require a string of `min_len`..`max_len` characters."""
    if not isinstance(value, str):
        raise InvalidInput(name, "must be a string")
    if not min_len <= len(value) <= max_len:
        raise InvalidInput(name, f"must be {min_len} to {max_len} characters")


def check_optional_text(name: str, value: str | None, max_len: int) -> None:
    """Like `check_text` with a minimum of 0, and None allowed."""
    if value is not None:
        check_text(name, value, 0, max_len)


def check_identifier(name: str, value: str, max_len: int) -> None:
    """Require 1..`max_len` characters of `[A-Za-z0-9_-]` (IoTDA's id alphabet)."""
    check_text(name, value, 1, max_len)
    if not _ID_CHARS.fullmatch(value):
        raise InvalidInput(name, "may contain only letters, digits, '_' and '-'")


def check_extension_info(name: str, value: dict[str, Any] | None) -> None:
    """A device's extension info: a JSON object of at most 1 KB (spec: IoTDA AddDevice)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidInput(name, "must be a JSON object")
    size = len(extension_info_text(value).encode())
    if size > MAX_EXTENSION_INFO_BYTES:
        raise InvalidInput(name, f"is {size} bytes as JSON; at most {MAX_EXTENSION_INFO_BYTES}")


def extension_info_text(value: dict[str, Any]) -> str:
    """The stored (and measured) form of extension info: compact JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def check_secret(name: str, value: str) -> None:
    """A device secret: 8–32 characters of `[A-Za-z0-9_-]` (spec: iotda-v5 §5.2)."""
    check_text(name, value, 8, 32)
    if not _ID_CHARS.fullmatch(value):
        raise InvalidInput(name, "may contain only letters, digits, '_' and '-'")


def check_group_id(name: str, value: str) -> None:
    """A group id: up to 36 hex digits and '-' (a UUID)."""
    if not isinstance(value, str) or not _GROUP_ID.fullmatch(value):
        raise InvalidInput(name, "must be up to 36 hex digits and '-'")
