"""Device groups over v5 (spec: iotda-v5 §5.3): a thin mapping over `registry.groups`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from fleetbatch.api.v5.common import (
    EXCLUDE_NONE,
    ID_PATTERN,
    CompactTime,
    PageOut,
    Paging,
    RuntimeDep,
    Signed,
    app_of,
    paged,
)
from fleetbatch.api.v5.route import V5Route
from fleetbatch.domain.errors import InvalidInput, NotFound
from fleetbatch.domain.registry import Device, DeviceGroup, Page

router = APIRouter(route_class=V5Route, tags=["Device groups"])

GroupId = Annotated[str, Path(max_length=36, pattern=r"^[0-9a-fA-F-]{1,36}$")]


class AddDeviceGroupDTO(BaseModel):
    """AddDeviceGroup body."""

    name: str = Field(min_length=1, max_length=64)
    description: str | None = Field(None, max_length=64)
    super_group_id: str | None = Field(None, max_length=36, pattern=r"^[0-9a-fA-F-]{1,36}$")
    app_id: str | None = Field(None, max_length=36, pattern=ID_PATTERN)
    group_type: Literal["STATIC", "DYNAMIC"] | None = None
    dynamic_group_rule: str | None = None


class UpdateDeviceGroupDTO(BaseModel):
    """UpdateDeviceGroup body."""

    name: str | None = Field(None, min_length=1, max_length=64)
    description: str | None = Field(None, max_length=64)


class DeviceGroupWire(BaseModel):
    """A device group."""

    group_id: str
    name: str
    description: str | None = None
    super_group_id: str | None = None
    group_type: str


class ListDeviceGroupsWire(BaseModel):
    """ListDeviceGroups."""

    device_groups: list[DeviceGroupWire]
    page: PageOut


class SimplifyDeviceWire(BaseModel):
    """A member of a group."""

    device_id: str
    node_id: str
    device_name: str | None = None
    product_id: str


class GroupDevicesWire(BaseModel):
    """ShowDevicesInGroup."""

    devices: list[SimplifyDeviceWire]
    page: PageOut


def group_wire(group: DeviceGroup) -> dict[str, Any]:
    """A group as IoTDA's DeviceGroup."""
    return {
        "group_id": group.group_id,
        "name": group.name,
        "description": group.description,
        "super_group_id": group.parent_group_id,
        "group_type": "STATIC",
    }


@router.post(
    "/device-group",
    status_code=201,
    response_model=DeviceGroupWire,
    summary="AddDeviceGroup",
    **EXCLUDE_NONE,
)
async def add_device_group(
    body: AddDeviceGroupDTO, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """Create a static group, optionally under a parent group (depth ≤ 5)."""
    if body.group_type == "DYNAMIC" or body.dynamic_group_rule is not None:
        raise InvalidInput("group_type", "dynamic groups are not supported yet")
    app = await app_of(runtime, who, body.app_id)
    group = await runtime.registry.groups.create(
        app.app_id, body.name, description=body.description, parent_group_id=body.super_group_id
    )
    return group_wire(group)


@router.get(
    "/device-group/{group_id}",
    response_model=DeviceGroupWire,
    summary="ShowDeviceGroup",
    **EXCLUDE_NONE,
)
async def show_device_group(group_id: GroupId, runtime: RuntimeDep, who: Signed) -> dict[str, Any]:
    """One group of the project."""
    return group_wire(await runtime.registry.groups.get(who.project_id, group_id))


@router.get(
    "/device-group",
    response_model=ListDeviceGroupsWire,
    summary="ListDeviceGroups",
    **EXCLUDE_NONE,
)
async def list_device_groups(
    runtime: RuntimeDep,
    who: Signed,
    paging: Paging,
    app_id: Annotated[str | None, Query(max_length=36, pattern=ID_PATTERN)] = None,
    group_type: Literal["STATIC", "DYNAMIC"] | None = None,
    name: Annotated[str | None, Query(max_length=64)] = None,
    last_modified_time: CompactTime = None,
) -> dict[str, Any]:
    """The project's groups, newest first."""
    if last_modified_time is not None:
        raise InvalidInput("last_modified_time", "is not supported yet")
    if group_type == "DYNAMIC":
        # fleetbatch keeps only static groups
        return paged("device_groups", Page[DeviceGroup]([], 0, None), group_wire)
    page = await runtime.registry.groups.page(who.project_id, paging, app_id=app_id, name=name)
    return paged("device_groups", page, group_wire)


@router.put(
    "/device-group/{group_id}",
    response_model=DeviceGroupWire,
    summary="UpdateDeviceGroup",
    **EXCLUDE_NONE,
)
async def update_device_group(
    group_id: GroupId, body: UpdateDeviceGroupDTO, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """Rename a group or change its description."""
    group = await runtime.registry.groups.update(
        who.project_id, group_id, name=body.name, description=body.description
    )
    return group_wire(group)


@router.delete(
    "/device-group/{group_id}",
    status_code=204,
    response_class=Response,
    summary="DeleteDeviceGroup",
)
async def delete_device_group(group_id: GroupId, runtime: RuntimeDep, who: Signed) -> Response:
    """Delete a group without sub-groups; its devices stay."""
    await runtime.registry.groups.delete(who.project_id, group_id)
    return Response(status_code=204)


@router.post(
    "/device-group/{group_id}/action",
    status_code=200,
    response_class=Response,
    summary="CreateOrDeleteDeviceInGroup",
)
async def change_group_members(
    group_id: GroupId,
    runtime: RuntimeDep,
    who: Signed,
    action_id: Annotated[Literal["addDevice", "removeDevice"], Query()],
    device_id: Annotated[str, Query(max_length=128, pattern=ID_PATTERN)],
) -> Response:
    """Add a device to the group, or remove it (the device stays registered)."""
    groups = runtime.registry.groups
    if action_id == "addDevice":
        await groups.add_members(who.project_id, group_id, [device_id])
    elif not await groups.remove_members(who.project_id, group_id, [device_id]):
        raise NotFound("group member", device_id)
    return Response(status_code=200)


def member_wire(device: Device) -> dict[str, Any]:
    """SimplifyDevice: a group member as ShowDevicesInGroup lists it."""
    return {
        "device_id": device.device_id,
        "node_id": device.node_id,
        "device_name": device.name,
        "product_id": device.product_id,
    }


@router.get(
    "/device-group/{group_id}/devices",
    response_model=GroupDevicesWire,
    summary="ShowDevicesInGroup",
    **EXCLUDE_NONE,
)
async def show_devices_in_group(
    group_id: GroupId, runtime: RuntimeDep, who: Signed, paging: Paging
) -> dict[str, Any]:
    """A page of the group's devices, newest first."""
    page = await runtime.registry.groups.members(who.project_id, group_id, paging)
    return paged("devices", page, member_wire)
