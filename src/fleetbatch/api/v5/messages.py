"""Single-device messages over v5 (spec: iotda-v5 §5.4): a thin mapping over
`engine.device_messages`, so a message to one device takes the path of a batch subtask."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from fleetbatch.api.v5.common import (
    EXCLUDE_NONE,
    DeviceId,
    RuntimeDep,
    Signed,
    device_app_id,
)
from fleetbatch.api.v5.route import V5Route
from fleetbatch.api.v5.wire import SUBTASK_ERROR_CODES
from fleetbatch.domain.timefmt import to_compact
from fleetbatch.engine.device_messages import DeviceMessage, DeviceMessages
from fleetbatch.runtime import Runtime

router = APIRouter(route_class=V5Route, tags=["Messages"])

MessageId = Annotated[str, Path(max_length=100)]


class DeviceMessageRequest(BaseModel):
    """CreateMessage body (validated further as a createMessages document)."""

    message_id: str | None = Field(None, min_length=1, max_length=100)
    name: str | None = Field(None, max_length=128)
    message: Any = Field(description="A string or a JSON object")
    properties: dict[str, Any] | None = None
    encoding: Literal["none", "base64"] | None = None
    payload_format: Literal["standard", "raw"] | None = None
    topic: str | None = Field(None, max_length=128)
    topic_full_name: str | None = Field(None, max_length=128)
    ttl: int | None = Field(None, ge=0, le=1440, multiple_of=5)


class MessageResultWire(BaseModel):
    """Where a message stands."""

    status: Literal["PENDING", "DELIVERED", "FAILED", "TIMEOUT"]
    created_time: str
    finished_time: str | None = None


class CreateMessageWire(BaseModel):
    """CreateMessage response."""

    message_id: str
    result: MessageResultWire


class ErrorInfoWire(BaseModel):
    """Why a message failed."""

    error_code: str | None = None
    error_msg: str | None = None


class DeviceMessageWire(BaseModel):
    """A message with its status."""

    message_id: str
    name: str | None = None
    message: Any = None
    encoding: str | None = None
    payload_format: str | None = None
    topic: str | None = None
    properties: dict[str, Any] | None = None
    status: Literal["PENDING", "DELIVERED", "FAILED", "TIMEOUT"]
    error_info: ErrorInfoWire | None = None
    created_time: str
    finished_time: str | None = None


class DeviceMessagesWire(BaseModel):
    """ListDeviceMessages."""

    device_id: str
    messages: list[DeviceMessageWire]


def messages_of(request: Request, runtime: Runtime) -> DeviceMessages:
    """The device-message service (made on first use)."""
    state = request.app.state
    service: DeviceMessages | None = getattr(state, "device_messages", None)
    if service is None:
        service = DeviceMessages(runtime.tasks)
        state.device_messages = service
    return service


def message_wire(message: DeviceMessage) -> dict[str, Any]:
    """A message as IoTDA's DeviceMessage."""
    document = message.document
    error = None
    if message.error_code is not None:
        code = SUBTASK_ERROR_CODES.get(message.error_code, message.error_code)
        error = {"error_code": code, "error_msg": message.error_msg}
    return {
        "message_id": message.message_id,
        "name": document.get("name"),
        "message": document.get("message"),
        "encoding": document.get("encoding"),
        "payload_format": document.get("payload_format"),
        "topic": document.get("topic") or document.get("topic_full_name"),
        "properties": document.get("properties"),
        "status": message.status,
        "error_info": error,
        "created_time": to_compact(message.created_at),
        "finished_time": to_compact(message.finished_at) if message.finished_at else None,
    }


@router.post(
    "/devices/{device_id}/messages",
    status_code=201,
    response_model=CreateMessageWire,
    summary="CreateMessage",
    **EXCLUDE_NONE,
)
async def create_message(
    device_id: DeviceId,
    body: DeviceMessageRequest,
    request: Request,
    runtime: RuntimeDep,
    who: Signed,
) -> dict[str, Any]:
    """Send a message to a device (delivered when it is online; its PUBACK confirms it)."""
    app_id = await device_app_id(runtime, who, device_id)
    document = body.model_dump(exclude_none=True)
    message = await messages_of(request, runtime).send(app_id, device_id, document)
    wire = message_wire(message)
    result = {k: wire[k] for k in ("status", "created_time", "finished_time")}
    return {"message_id": message.message_id, "result": result}


@router.get(
    "/devices/{device_id}/messages/{message_id}",
    response_model=DeviceMessageWire,
    summary="ShowDeviceMessage",
    **EXCLUDE_NONE,
)
async def show_device_message(
    device_id: DeviceId, message_id: MessageId, request: Request, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """One message to a device, with its status."""
    app_id = await device_app_id(runtime, who, device_id)
    return message_wire(await messages_of(request, runtime).get(app_id, device_id, message_id))


@router.get(
    "/devices/{device_id}/messages",
    response_model=DeviceMessagesWire,
    summary="ListDeviceMessages",
    **EXCLUDE_NONE,
)
async def list_device_messages(
    device_id: DeviceId, request: Request, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """The device's newest messages (up to 100), newest first."""
    app_id = await device_app_id(runtime, who, device_id)
    messages = await messages_of(request, runtime).recent(app_id, device_id)
    return {"device_id": device_id, "messages": [message_wire(m) for m in messages]}
