"""Wire schemas of the legacy dialect: the seeds' camelCase names through aliases.

Explicit JSON `null` is the same as an absent field (the Python SDK sends every unset
attribute as null, spec §7); unknown fields are ignored, as the platform did. Routes read
the raw request and validate with these models themselves (a 422 means nothing to a legacy
client), so the served OpenAPI learns of the bodies through `openapi_body`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from fleetbatch.domain import legacy as L
from fleetbatch.engine import device_commands as dc


class Wire(BaseModel):
    """Base of the legacy request bodies."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class TagDTO2(Wire):
    """S003 TagDTO2."""

    tag_name: str = Field(alias="tagName", min_length=1, max_length=L.MAX_TAG_NAME)
    tag_value: str = Field(alias="tagValue", min_length=1, max_length=L.MAX_TAG_VALUE)


class CommandDTO(Wire):
    """S003 CommandDTO: the command each device gets."""

    service_id: str = Field(alias="serviceId", min_length=1, max_length=L.MAX_SERVICE_ID)
    method: str = Field(min_length=1, max_length=L.MAX_METHOD)
    paras: dict[str, Any] | None = None


# documented values of fields the route checks itself (anything else: 50400)
_PARAM_TYPES: list[JsonValue] = [*sorted(L.PARAM_TYPES)]


class DeviceCmdParam(Wire):
    """S003 `param` of a DeviceCmd task: which devices, which command, how."""

    type: str = Field(json_schema_extra={"enum": _PARAM_TYPES})
    device_list: list[str] | None = Field(None, alias="deviceList")
    device_type: str | None = Field(None, alias="deviceType", max_length=32)
    manufacturer_id: str | None = Field(None, alias="manufacturerId", max_length=128)
    model: str | None = Field(None, max_length=128)
    device_location: str | None = Field(None, alias="deviceLocation", max_length=1024)
    group_list: list[str] | None = Field(None, alias="groupList")
    command: CommandDTO
    callback_url: str | None = Field(None, alias="callbackUrl", max_length=L.MAX_CALLBACK_URL)
    max_retransmit: int | None = Field(
        None, alias="maxRetransmit", ge=0, le=L.MAX_RETRANSMIT, strict=True
    )
    group_tag: str | None = Field(None, alias="groupTag", max_length=256)


class BatchTaskCreateIn(Wire):
    """S003 BatchTaskCreateInDTO."""

    app_id: str | None = Field(None, alias="appId", max_length=L.MAX_APP_ID)
    task_name: str = Field(alias="taskName", min_length=1, max_length=L.MAX_TASK_NAME)
    task_type: str = Field(
        alias="taskType", min_length=1, json_schema_extra={"enum": [L.DEVICE_CMD]}
    )
    timeout: int = Field(ge=L.MIN_TIMEOUT_MIN, le=L.MAX_TIMEOUT_MIN, strict=True)
    # read as DeviceCmdParam once taskType is known to be DeviceCmd
    param: dict[str, Any]
    tags: list[TagDTO2] | None = None


class WireNamesOnly(Wire):
    """Bodies that know only their wire names (`appId`, never `app_id`), as when they were
    read field by field."""

    model_config = ConfigDict(populate_by_name=False, validate_by_name=False)


class LoginIn(WireNamesOnly):
    """Login (spec §1.1): form fields, or a JSON object."""

    app_id: str = Field(alias="appId", min_length=1)
    secret: str = Field(min_length=1)


class RefreshTokenIn(WireNamesOnly):
    """refreshToken (spec §1.2): the app's credentials and a live refresh token."""

    app_id: str = Field(alias="appId", min_length=1)
    secret: str = Field(min_length=1)
    refresh_token: str = Field(alias="refreshToken", min_length=1)


class LogoutIn(WireNamesOnly):
    """logout (spec §1.3): the access token to end."""

    access_token: str = Field(alias="accessToken", min_length=1)


class PostDeviceCommandIn(Wire):
    """PostDeviceCommandInDTO (spec §3.1)."""

    device_id: str = Field(alias="deviceId", min_length=1, max_length=64)
    command: CommandDTO
    callback_url: str | None = Field(None, alias="callbackUrl", max_length=1024)
    expire_time: int | None = Field(None, alias="expireTime", ge=0, le=dc.MAX_EXPIRE_S, strict=True)
    max_retransmit: int | None = Field(
        None, alias="maxRetransmit", ge=0, le=dc.MAX_RETRANSMIT, strict=True
    )


class UpdateDeviceCommandIn(WireNamesOnly):
    """UpdateDeviceCommandInDTO: only a PENDING command's cancellation (spec §3.2)."""

    status: Literal["CANCELED"]


class DeviceCmdCancelTaskIn(WireNamesOnly):
    """CreateDeviceCmdCancelTaskInDTO: cancel every PENDING command of a device (spec §3.3)."""

    device_id: str = Field(alias="deviceId", min_length=1, max_length=64)


def first_problem(error: ValidationError) -> str:
    """`field.path: message` of the first validation problem, with the wire names."""
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "body"
    return f"{where}: {problem['msg']}"


JSON = ("application/json",)


def openapi_body(
    model: type[BaseModel],
    media_types: Sequence[str] = JSON,
    *,
    nested: Mapping[str, type[BaseModel]] | None = None,
) -> dict[str, Any]:
    """A route's `openapi_extra` describing its request body as `model` (wire names).

    `nested` describes a field the route reads in a second step (S003's `param`) by its
    own model. The schema is inlined, since these models are in no route's signature and
    so not among the document's components.
    """
    schema = _inlined(model.model_json_schema(by_alias=True))
    for name, inner in (nested or {}).items():
        schema["properties"][name] = _inlined(inner.model_json_schema(by_alias=True))
    content = {media_type: {"schema": schema} for media_type in media_types}
    return {"requestBody": {"required": True, "content": content}}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` references replaced by the definitions."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**resolve(defs[ref.removeprefix("#/$defs/")]), **resolve(rest)}
        return {k: resolve(v) for k, v in node.items()}

    resolved: dict[str, Any] = resolve(schema)
    return resolved
