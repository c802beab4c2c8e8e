"""Device shadows over v5 (spec: iotda-v5 §5.5): a thin mapping over `registry.shadows`.

A desired change is stored, then pushed to the device if it is online (as a batch
`updateDeviceShadows` subtask pushes it); an offline device asks for its shadow when it
connects.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from fleetbatch.api.v5.common import EXCLUDE_NONE, DeviceId, RuntimeDep, Signed
from fleetbatch.api.v5.route import V5Route
from fleetbatch.devices.channel import DeviceChannel
from fleetbatch.domain.documents import MAX_SHADOW_SERVICES
from fleetbatch.domain.shadows import ServiceShadow
from fleetbatch.domain.timefmt import to_compact
from fleetbatch.engine.executors.shadows import PUSH_TIMEOUT_S, push_desired

router = APIRouter(route_class=V5Route, tags=["Device shadows"])


class UpdateDesired(BaseModel):
    """One service's desired change."""

    service_id: str = Field(min_length=1, max_length=64)
    desired: dict[str, Any] = Field(
        description="Merged into what is desired; a null value deletes its key, {} clears all"
    )
    version: int | None = Field(
        None, ge=0, description="Must be the shadow's current version (0 before any change)"
    )


class UpdateDesireds(BaseModel):
    """UpdateDeviceShadowDesiredData body."""

    shadow: list[UpdateDesired] = Field(min_length=1, max_length=MAX_SHADOW_SERVICES)


class ShadowPropertiesWire(BaseModel):
    """What was desired or reported, and when."""

    properties: dict[str, Any] | None = None
    event_time: str | None = None


class ShadowDataWire(BaseModel):
    """DeviceShadowData: one service's shadow."""

    service_id: str
    desired: ShadowPropertiesWire | None = None
    reported: ShadowPropertiesWire | None = None
    version: int


class DeviceShadowWire(BaseModel):
    """ShowDeviceShadow / UpdateDeviceShadowDesiredData response."""

    device_id: str
    shadow: list[ShadowDataWire]


def _side(properties: Any, at_ms: int | None) -> dict[str, Any] | None:
    if properties is None:
        return None
    return {
        "properties": dict(properties),
        "event_time": to_compact(at_ms) if at_ms is not None else None,
    }


def shadow_wire(device_id: str, shadows: list[ServiceShadow]) -> dict[str, Any]:
    """A device's shadows as IoTDA's response."""
    return {
        "device_id": device_id,
        "shadow": [
            {
                "service_id": s.service_id,
                "desired": _side(s.desired, s.desired_at),
                "reported": _side(s.reported, s.reported_at),
                "version": s.version,
            }
            for s in shadows
        ],
    }


@router.get(
    "/devices/{device_id}/shadow",
    response_model=DeviceShadowWire,
    summary="ShowDeviceShadow",
    **EXCLUDE_NONE,
)
async def show_device_shadow(
    device_id: DeviceId, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """Every service shadow of a device: desired, reported and version."""
    return shadow_wire(device_id, await runtime.registry.shadows.get(who.project_id, device_id))


@router.put(
    "/devices/{device_id}/shadow",
    response_model=DeviceShadowWire,
    summary="UpdateDeviceShadowDesiredData",
    **EXCLUDE_NONE,
)
async def update_device_shadow_desired_data(
    device_id: DeviceId, body: UpdateDesireds, request: Request, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """Change what is desired of some services; pushed to the device when it is online."""
    changes = [(item.service_id, item.desired, item.version) for item in body.shadow]
    shadows = await runtime.registry.shadows.update_desired(who.project_id, device_id, changes)
    channel: DeviceChannel | None = request.app.state.channel
    if channel is not None:
        # not a subtask's request id form, so the engine never mistakes the answer for one
        request_id = f"v5-shadow-{secrets.token_hex(8)}"
        pushed = [(service_id, desired) for service_id, desired, _ in changes]
        push_desired(channel, device_id, request_id, pushed, timeout_s=PUSH_TIMEOUT_S)
    return shadow_wire(device_id, shadows)
