"""Devices over v5 (spec: iotda-v5 §5.2): a thin mapping over `registry.devices`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from fleetbatch.api.v5.common import (
    EXCLUDE_NONE,
    ID_PATTERN,
    CompactTime,
    DeviceId,
    PageOut,
    Paging,
    RuntimeDep,
    Signed,
    app_names,
    paged,
    time_window,
)
from fleetbatch.api.v5.route import Caller, V5Route
from fleetbatch.devices.channel import DeviceChannel
from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.registry import Device, NewDevice
from fleetbatch.domain.timefmt import to_compact
from fleetbatch.runtime import Runtime

router = APIRouter(route_class=V5Route, tags=["Devices"])

DEVICE_KEY_SHAPE = r"^[A-Za-z0-9_-]{8,32}$"


class AuthInfo(BaseModel):
    """AuthInfo of AddDevice: fleetbatch devices authenticate with a secret."""

    auth_type: Literal["SECRET", "CERTIFICATES"] | None = None
    secret: str | None = Field(
        None, pattern=DEVICE_KEY_SHAPE, description="8–32; generated if absent"
    )
    fingerprint: str | None = Field(None, pattern=r"^([0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")
    secure_access: bool | None = None
    timeout: int | None = Field(None, ge=0, le=2_147_483_647)


class InitialDesired(BaseModel):
    """InitialDesired: one service's initial desired values."""

    service_id: str = Field(min_length=1, max_length=64)
    desired: dict[str, Any]


class AddDevice(BaseModel):
    """AddDevice body."""

    device_id: str | None = Field(None, max_length=128, pattern=ID_PATTERN)
    node_id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    device_name: str | None = Field(None, max_length=256)
    product_id: str = Field(max_length=36, pattern=ID_PATTERN)
    auth_info: AuthInfo | None = None
    description: str | None = Field(None, max_length=2048)
    gateway_id: str | None = Field(None, max_length=128, pattern=ID_PATTERN)
    app_id: str | None = Field(None, max_length=36, pattern=ID_PATTERN)
    extension_info: dict[str, Any] | None = Field(None, description="Yours, ≤ 1 KB as JSON")
    shadow: list[InitialDesired] | None = Field(
        None, description="Initial desired values, stored as a shadow update would store them"
    )


class AuthInfoWithoutSecret(BaseModel):
    """What UpdateDevice may change of the authentication."""

    secure_access: bool | None = None
    timeout: int | None = Field(None, ge=0)


class UpdateDevice(BaseModel):
    """UpdateDevice body."""

    device_name: str | None = Field(None, min_length=1, max_length=256)
    description: str | None = Field(None, max_length=2048)
    extension_info: dict[str, Any] | None = None
    auth_info: AuthInfoWithoutSecret | None = None


class ResetDeviceSecret(BaseModel):
    """ResetDeviceSecret body."""

    secret: str | None = Field(
        None, pattern=DEVICE_KEY_SHAPE, description="8–32; generated if absent"
    )
    force_disconnect: bool | None = None
    secret_type: Literal["PRIMARY", "SECONDARY"] | None = None


class AuthInfoWire(BaseModel):
    """AuthInfoRes."""

    auth_type: str
    secret: str | None = None
    secondary_secret: str | None = None
    secure_access: bool
    timeout: int


class TagWire(BaseModel):
    """TagV5DTO."""

    tag_key: str
    tag_value: str | None = None


class DeviceSummaryWire(BaseModel):
    """QueryDeviceSimplify (list items)."""

    app_id: str
    app_name: str | None = None
    device_id: str
    node_id: str
    gateway_id: str
    device_name: str | None = None
    node_type: Literal["ENDPOINT", "GATEWAY", "UNKNOWN"]
    description: str | None = None
    fw_version: str | None = None
    sw_version: str | None = None
    product_id: str
    product_name: str | None = None
    status: Literal["ONLINE", "OFFLINE", "ABNORMAL", "INACTIVE", "FROZEN"]
    tags: list[TagWire]


class DeviceWire(DeviceSummaryWire):
    """ShowDevice / AddDevice / UpdateDevice response."""

    auth_info: AuthInfoWire
    create_time: str
    connection_status_update_time: str | None = None
    active_time: str | None = None
    extension_info: dict[str, Any] | None = None


class ListDevicesWire(BaseModel):
    """ListDevices: one page of devices, newest first."""

    devices: list[DeviceSummaryWire]
    page: PageOut


class ResetSecretWire(BaseModel):
    """ResetDeviceSecret response."""

    device_id: str
    secret: str
    secret_type: str


async def product_names(runtime: Runtime, who: Caller, devices: list[Device]) -> dict[str, str]:
    """The names of the devices' products, by product id."""
    names = {}
    for product_id in {device.product_id for device in devices}:
        names[product_id] = (await runtime.registry.products.get(who.project_id, product_id)).name
    return names


def device_wire(
    device: Device,
    apps: dict[str, str],
    products: dict[str, str],
    *,
    full: bool = True,
    secret: str | None = None,
) -> dict[str, Any]:
    """A device as IoTDA's device object (QueryDeviceSimplify without `full`)."""
    wire: dict[str, Any] = {
        "app_id": device.app_id,
        "app_name": apps.get(device.app_id),
        "device_id": device.device_id,
        "node_id": device.node_id,
        # a directly connected device is its own gateway (IoTDA's convention)
        "gateway_id": device.gateway_id or device.device_id,
        "device_name": device.name,
        "node_type": "ENDPOINT" if device.gateway_id else "GATEWAY",
        "description": device.description,
        "fw_version": device.fw_version,
        "sw_version": device.sw_version,
        "product_id": device.product_id,
        "product_name": products.get(device.product_id),
        "status": device.status.value,
        "tags": [{"tag_key": k, "tag_value": v} for k, v in device.tags.items()],
    }
    if full:
        # the secret is shown once, when it is set; never on a read
        wire["auth_info"] = {
            "auth_type": "SECRET",
            "secret": secret,
            "secure_access": True,
            "timeout": 0,
        }
        wire["create_time"] = to_compact(device.created_at_ms)
        if device.status_changed_at_ms is not None:
            wire["connection_status_update_time"] = to_compact(device.status_changed_at_ms)
        if device.active_at_ms is not None:
            wire["active_time"] = to_compact(device.active_at_ms)
        wire["extension_info"] = device.extension_info
    return wire


async def _full(
    runtime: Runtime, who: Caller, device: Device, secret: str | None = None
) -> dict[str, Any]:
    apps = await app_names(runtime, who)
    products = await product_names(runtime, who, [device])
    return device_wire(device, apps, products, secret=secret)


async def _disconnect(request: Request, device_id: str) -> None:
    """Close the device's connection, as the freezeDevices executor does; called after the
    commit, so its next CONNECT already meets the change (frozen, new secret)."""
    channel: DeviceChannel | None = request.app.state.channel
    if channel is not None:
        await channel.disconnect(device_id)


@router.post(
    "/devices", status_code=201, response_model=DeviceWire, summary="AddDevice", **EXCLUDE_NONE
)
async def add_device(body: AddDevice, runtime: RuntimeDep, who: Signed) -> dict[str, Any]:
    """Register a device of a product, with its secret (generated unless given)."""
    auth = body.auth_info or AuthInfo()
    if auth.auth_type == "CERTIFICATES" or auth.fingerprint is not None:
        raise InvalidInput("auth_info.auth_type", "only SECRET authentication is supported")
    product = await runtime.registry.products.get(who.project_id, body.product_id)
    if body.app_id is not None and body.app_id != product.app_id:
        raise InvalidInput("app_id", "the product belongs to another resource space")
    if body.gateway_id is not None:
        await runtime.registry.devices.get(who.project_id, body.gateway_id)
    spec = NewDevice(
        node_id=body.node_id,
        device_id=body.device_id,
        name=body.device_name,
        secret=auth.secret,
        description=body.description,
        gateway_id=body.gateway_id,
        extension_info=body.extension_info,
        shadow=tuple((item.service_id, item.desired) for item in body.shadow or ()),
    )
    created = await runtime.registry.devices.create(product.app_id, product.product_id, spec)
    device = await runtime.registry.devices.get(who.project_id, created.device_id)
    return await _full(runtime, who, device, created.secret)


@router.get("/devices/{device_id}", response_model=DeviceWire, summary="ShowDevice", **EXCLUDE_NONE)
async def show_device(device_id: DeviceId, runtime: RuntimeDep, who: Signed) -> dict[str, Any]:
    """One device of the project."""
    return await _full(runtime, who, await runtime.registry.devices.get(who.project_id, device_id))


@router.get("/devices", response_model=ListDevicesWire, summary="ListDevices", **EXCLUDE_NONE)
async def list_devices(
    runtime: RuntimeDep,
    who: Signed,
    paging: Paging,
    product_id: Annotated[str | None, Query(max_length=36, pattern=ID_PATTERN)] = None,
    gateway_id: Annotated[str | None, Query(max_length=128, pattern=ID_PATTERN)] = None,
    is_cascade_query: bool | None = None,
    node_id: Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)] = None,
    device_name: Annotated[str | None, Query(max_length=256)] = None,
    start_time: CompactTime = None,
    end_time: CompactTime = None,
    app_id: Annotated[str | None, Query(max_length=36, pattern=ID_PATTERN)] = None,
) -> dict[str, Any]:
    """The project's devices, newest first, filtered; registered within the time window;
    with `gateway_id`, its children (`is_cascade_query`: every device below it, any depth)."""
    created_from_ms, created_to_ms = time_window(start_time, end_time)
    cascade = bool(is_cascade_query) and gateway_id is not None
    page = await runtime.registry.devices.page(
        who.project_id,
        paging,
        app_id=app_id,
        product_id=product_id,
        node_id=node_id,
        name=device_name,
        gateway_id=None if cascade else gateway_id,
        below_gateway=gateway_id if cascade else None,
        created_from_ms=created_from_ms,
        created_to_ms=created_to_ms,
    )
    apps = await app_names(runtime, who)
    products = await product_names(runtime, who, page.items)
    return paged("devices", page, lambda d: device_wire(d, apps, products, full=False))


@router.put(
    "/devices/{device_id}", response_model=DeviceWire, summary="UpdateDevice", **EXCLUDE_NONE
)
async def update_device(
    device_id: DeviceId, body: UpdateDevice, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """Rename a device, change its description or replace its extension info."""
    if body.auth_info is not None and (
        body.auth_info.secure_access is False or body.auth_info.timeout
    ):
        raise InvalidInput("auth_info", "fleetbatch devices always use secure access, no expiry")
    device = await runtime.registry.devices.update(
        who.project_id,
        device_id,
        name=body.device_name,
        description=body.description,
        extension_info=body.extension_info,
    )
    return await _full(runtime, who, device)


@router.delete(
    "/devices/{device_id}", status_code=204, response_class=Response, summary="DeleteDevice"
)
async def delete_device(device_id: DeviceId, runtime: RuntimeDep, who: Signed) -> Response:
    """Delete a device that has no child devices."""
    await runtime.registry.devices.delete(who.project_id, device_id)
    return Response(status_code=204)


@router.post(
    "/devices/{device_id}/freeze", status_code=204, response_class=Response, summary="FreezeDevice"
)
async def freeze_device(
    device_id: DeviceId, request: Request, runtime: RuntimeDep, who: Signed
) -> Response:
    """Freeze a device: its connection is closed and it may not connect until unfrozen."""
    await runtime.registry.devices.freeze(who.project_id, device_id)
    await _disconnect(request, device_id)
    return Response(status_code=204)


@router.post(
    "/devices/{device_id}/unfreeze",
    status_code=204,
    response_class=Response,
    summary="UnfreezeDevice",
)
async def unfreeze_device(device_id: DeviceId, runtime: RuntimeDep, who: Signed) -> Response:
    """Unfreeze a device."""
    await runtime.registry.devices.unfreeze(who.project_id, device_id)
    return Response(status_code=204)


@router.post(
    "/devices/{device_id}/action",
    response_model=ResetSecretWire,
    summary="ResetDeviceSecret",
)
async def device_action(
    device_id: DeviceId,
    runtime: RuntimeDep,
    who: Signed,
    action_id: Annotated[Literal["resetSecret"], Query(description="resetSecret")],
    request: Request,
    body: ResetDeviceSecret | None = None,
) -> dict[str, Any]:
    """Give a device a new primary or secondary secret (it may connect with either), used
    from its next connection on; `force_disconnect` closes the connection it has now."""
    body = body or ResetDeviceSecret()
    which = body.secret_type or "PRIMARY"
    secret = await runtime.registry.devices.reset_secret(
        who.project_id, device_id, body.secret, secondary=which == "SECONDARY"
    )
    if body.force_disconnect:
        await _disconnect(request, device_id)
    return {"device_id": device_id, "secret": secret, "secret_type": which}
