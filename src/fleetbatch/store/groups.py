"""Device groups and their members."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import ColumnElement, Row, select
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.registry import Device, DeviceGroup, Page
from fleetbatch.store.devices import DEVICE_COLUMNS, device_from_row
from fleetbatch.store.paging import PageRequest, fetch_page
from fleetbatch.store.schema import device_groups, devices, group_members


def _group(row: Row[tuple[object, ...]]) -> DeviceGroup:
    m = row._mapping
    return DeviceGroup(
        group_id=m["group_id"],
        project_id=m["project_id"],
        app_id=m["app_id"],
        name=m["name"],
        description=m["description"],
        parent_group_id=m["parent_group_id"],
        created_at_ms=m["created_at"],
    )


async def insert_group(conn: AsyncConnection, group: DeviceGroup) -> None:
    """Add a group."""
    await conn.execute(
        device_groups.insert().values(
            group_id=group.group_id,
            project_id=group.project_id,
            app_id=group.app_id,
            name=group.name,
            description=group.description,
            parent_group_id=group.parent_group_id,
            created_at=group.created_at_ms,
        )
    )


async def get_group(conn: AsyncConnection, group_id: str) -> DeviceGroup | None:
    """The group, or None."""
    query = select(device_groups).where(device_groups.c.group_id == group_id)
    row = (await conn.execute(query)).first()
    return None if row is None else _group(row)


async def find_group_by_name(conn: AsyncConnection, app_id: str, name: str) -> DeviceGroup | None:
    """The app's group of that name, or None."""
    query = select(device_groups).where(
        device_groups.c.app_id == app_id, device_groups.c.name == name
    )
    row = (await conn.execute(query)).first()
    return None if row is None else _group(row)


async def list_groups(
    conn: AsyncConnection,
    project_id: str,
    page: PageRequest,
    *,
    app_id: str | None = None,
    name: str | None = None,
) -> Page[DeviceGroup]:
    """A page of the project's groups, newest first."""
    where: list[ColumnElement[bool]] = [device_groups.c.project_id == project_id]
    if app_id is not None:
        where.append(device_groups.c.app_id == app_id)
    if name is not None:
        where.append(device_groups.c.name == name)
    rows, count, marker = await fetch_page(
        conn, select(device_groups), device_groups.c.pk, where, page
    )
    return Page(items=[_group(row) for row in rows], count=count, marker=marker)


async def update_group(conn: AsyncConnection, group_id: str, values: dict[str, str | None]) -> None:
    """Change the given columns of a group."""
    query = device_groups.update().where(device_groups.c.group_id == group_id).values(values)
    await conn.execute(query)


async def child_group_ids(conn: AsyncConnection, group_ids: Iterable[str]) -> list[str]:
    """Ids of the direct sub-groups of the given groups."""
    query = select(device_groups.c.group_id).where(
        device_groups.c.parent_group_id.in_(list(group_ids))
    )
    return list((await conn.execute(query)).scalars())


async def delete_group(conn: AsyncConnection, group_id: str) -> None:
    """Remove a group and its memberships (the devices stay)."""
    await conn.execute(group_members.delete().where(group_members.c.group_id == group_id))
    await conn.execute(device_groups.delete().where(device_groups.c.group_id == group_id))


async def remove_members(conn: AsyncConnection, group_id: str, device_pks: Sequence[int]) -> int:
    """Unlink devices from the group; returns how many were members."""
    result = await conn.execute(
        group_members.delete().where(
            group_members.c.group_id == group_id, group_members.c.device_pk.in_(device_pks)
        )
    )
    return max(result.rowcount, 0)


async def list_members(conn: AsyncConnection, group_id: str, page: PageRequest) -> Page[Device]:
    """A page of the group's devices, newest first."""
    query = select(*DEVICE_COLUMNS).select_from(
        devices.join(group_members, group_members.c.device_pk == devices.c.pk)
    )
    where = [group_members.c.group_id == group_id]
    rows, count, marker = await fetch_page(conn, query, devices.c.pk, where, page)
    return Page(items=[device_from_row(row) for row in rows], count=count, marker=marker)
