"""Wire schemas of the legacy dialect: the seeds' camelCase names through aliases.

Explicit JSON `null` is the same as an absent field (the Python SDK sends every unset
attribute as null, spec §7); unknown fields are ignored, as the platform did.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetbatch.domain import legacy as L


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


class DeviceCmdParam(Wire):
    """S003 `param` of a DeviceCmd task: which devices, which command, how."""

    type: str
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
    task_type: str = Field(alias="taskType", min_length=1)
    timeout: int = Field(ge=L.MIN_TIMEOUT_MIN, le=L.MAX_TIMEOUT_MIN, strict=True)
    param: dict[str, Any]
    tags: list[TagDTO2] | None = None


def first_problem(error: ValidationError) -> str:
    """`field.path: message` of the first validation problem, with the wire names."""
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "body"
    return f"{where}: {problem['msg']}"
