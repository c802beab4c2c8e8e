"""The legacy SDK's DTOs: the original class and attribute names (camelCase, as on the wire).

Every attribute starts as None; nested values may be DTOs or plain dicts and lists, as
callers of the original assigned them. `to_dict()` gives the JSON body (unset fields
left out); the `...OutDTO` classes read a response text with `from_json`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, TypeVar

D = TypeVar("D", bound="DTO")


class DTO:
    """Base of the DTOs: to and from the wire's dicts."""

    def to_dict(self) -> dict[str, Any]:
        """The non-None attributes, nested DTOs as dicts."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_dict(cls: type[D], data: dict[str, Any]) -> D:
        """The known keys of `data` (unknown ones ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_json(cls: type[D], text: str) -> D:
        """From a response text."""
        return cls.from_dict(json.loads(text))


def _plain(value: Any) -> Any:
    if isinstance(value, DTO):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    return value


# --- authentication ---------------------------------------------------------------------


@dataclass
class AuthOutDTO(DTO):
    """Login / refresh answer."""

    accessToken: str | None = None
    tokenType: str | None = None
    refreshToken: str | None = None
    expiresIn: int | None = None
    scope: str | None = None


@dataclass
class AuthRefreshInDTO(DTO):
    """refreshAuthToken input."""

    appId: str | None = None
    secret: str | None = None
    refreshToken: str | None = None


# --- batch tasks ------------------------------------------------------------------------


@dataclass
class TagDTO2(DTO):
    """A task tag."""

    tagName: str | None = None
    tagValue: str | None = None


@dataclass
class CommandDTO(DTO):
    """The command of a DeviceCmd task."""

    serviceId: str | None = None
    method: str | None = None
    paras: dict[str, Any] | None = None


@dataclass
class ObjectNode(DTO):
    """`param` of a DeviceCmd task."""

    type: str | None = None
    deviceList: list[str] | None = None
    deviceType: str | None = None
    manufacturerId: str | None = None
    model: str | None = None
    deviceLocation: str | None = None
    groupList: list[str] | None = None
    command: CommandDTO | dict[str, Any] | None = None
    callbackUrl: str | None = None
    maxRetransmit: int | None = None
    groupTag: str | None = None


@dataclass
class BatchTaskCreateInDTO(DTO):
    """createBatchTask input (S003)."""

    appId: str | None = None
    taskName: str | None = None
    taskType: str | None = None
    timeout: int | None = None
    param: ObjectNode | dict[str, Any] | None = None
    tags: list[TagDTO2 | dict[str, Any]] | None = None


@dataclass
class BatchTaskCreateOutDTO(DTO):
    """createBatchTask answer."""

    taskID: str | None = None


@dataclass
class QueryOneTaskOutDTO(DTO):
    """queryOneTask answer (S000)."""

    appId: str | None = None
    taskId: str | None = None
    taskName: str | None = None
    operator: str | None = None
    taskFrom: str | None = None
    taskType: str | None = None
    status: str | None = None
    startTime: str | None = None
    timeout: int | None = None
    progress: int | None = None
    totalCnt: int | None = None
    successCnt: int | None = None
    failCnt: int | None = None
    timeoutCnt: int | None = None
    expiredCnt: int | None = None
    completeCnt: int | None = None
    successRate: int | None = None
    param: dict[str, Any] | None = None
    tags: list[dict[str, Any]] | None = None


@dataclass
class QueryTaskDetailsInDTO(DTO):
    """queryTaskDetails input (S001; index and nodeId are for registration tasks)."""

    appId: str | None = None
    taskId: str | None = None
    status: str | None = None
    index: int | None = None
    nodeId: str | None = None
    deviceId: str | None = None
    commandId: str | None = None
    pageNo: int | None = None
    pageSize: int | None = None


@dataclass
class QueryTaskDetailDTOCloud2NA(DTO):
    """One subtask of queryTaskDetails (`output`, `error`: JSON text)."""

    status: str | None = None
    output: str | None = None
    error: str | None = None
    param: dict[str, Any] | None = None


@dataclass
class QueryTaskDetailsOutDTO(DTO):
    """queryTaskDetails answer."""

    pageNo: int | None = None
    pageSize: int | None = None
    totalCount: int | None = None
    taskDetails: list[dict[str, Any]] | None = None


# --- device commands --------------------------------------------------------------------


@dataclass
class CommandDTOV4(DTO):
    """The command of a single-device command."""

    serviceId: str | None = None
    method: str | None = None
    paras: dict[str, Any] | None = None


@dataclass
class PostDeviceCommandInDTO(DTO):
    """postDeviceCommand input."""

    deviceId: str | None = None
    command: CommandDTOV4 | dict[str, Any] | None = None
    callbackUrl: str | None = None
    expireTime: int | None = None
    maxRetransmit: int | None = None


@dataclass
class QueryDeviceCommandInDTO(DTO):
    """queryDeviceCommand input."""

    pageNo: int | None = None
    pageSize: int | None = None
    deviceId: str | None = None
    startTime: str | None = None
    endTime: str | None = None
    appId: str | None = None


@dataclass
class UpdateDeviceCommandInDTO(DTO):
    """updateDeviceCommand input: only CANCELED."""

    status: str | None = None


@dataclass
class CreateDeviceCmdCancelTaskInDTO(DTO):
    """createDeviceCmdCancelTask input."""

    deviceId: str | None = None


@dataclass
class QueryDeviceCmdCancelTaskInDTO(DTO):
    """queryDeviceCmdCancelTask input."""

    pageNo: int | None = None
    pageSize: int | None = None
    taskId: str | None = None
    deviceId: str | None = None
    status: str | None = None
    startTime: str | None = None
    endTime: str | None = None
    appId: str | None = None


# --- upgrades ---------------------------------------------------------------------------


@dataclass
class QueryUpgradeSubTaskInDTO(DTO):
    """queryUpgradeSubTask input (S004)."""

    subOperationStatus: str | None = None
    pageNo: int | None = None
    pageSize: int | None = None
