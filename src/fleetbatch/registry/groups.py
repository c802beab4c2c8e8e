"""Device groups: nesting, membership, and expansion to sub-groups."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from fleetbatch.domain.registry import (
    Device,
    DeviceGroup,
    Page,
    check_group_id,
    check_optional_text,
    check_text,
)
from fleetbatch.registry.common import (
    Service,
    require_app,
    require_device,
    require_group,
)
from fleetbatch.registry.devices import BULK_CHUNK, chunks
from fleetbatch.store import devices as device_rows
from fleetbatch.store import groups as group_rows
from fleetbatch.store.paging import PageRequest

MAX_GROUP_DEPTH = 5


class GroupService(Service):
    """Device groups inside an app and their members."""

    async def create(
        self,
        app_id: str,
        name: str,
        *,
        description: str | None = None,
        parent_group_id: str | None = None,
    ) -> DeviceGroup:
        """Create a group in the app, optionally under a parent group (depth ≤ 5)."""
        check_text("name", name, 1, 64)
        check_optional_text("description", description, 64)
        if parent_group_id is not None:
            check_group_id("super_group_id", parent_group_id)
        async with self.store.write() as conn:
            app = await require_app(conn, app_id)
            if parent_group_id is not None:
                parent = await require_group(conn, app.project_id, parent_group_id)
                if parent.app_id != app_id:
                    raise InvalidInput("super_group_id", "belongs to another app")
                if await _group_depth(conn, parent) >= MAX_GROUP_DEPTH:
                    raise InvalidInput(
                        "super_group_id", f"groups nest at most {MAX_GROUP_DEPTH} deep"
                    )
            if await group_rows.find_group_by_name(conn, app_id, name) is not None:
                raise AlreadyExists("group", name)
            group = DeviceGroup(
                group_id=str(uuid.uuid4()),
                project_id=app.project_id,
                app_id=app_id,
                name=name,
                description=description,
                parent_group_id=parent_group_id,
                created_at_ms=self.clock.now_ms(),
            )
            await group_rows.insert_group(conn, group)
        return group

    async def ensure(self, app_id: str, name: str) -> DeviceGroup:
        """The app's group of that name, created when absent."""
        async with self.store.read() as conn:
            found = await group_rows.find_group_by_name(conn, app_id, name)
        if found is not None:
            return found
        try:
            return await self.create(app_id, name)
        except AlreadyExists:  # created by someone else meanwhile
            async with self.store.read() as conn:
                again = await group_rows.find_group_by_name(conn, app_id, name)
            if again is None:
                raise
            return again

    async def get(self, project_id: str, group_id: str) -> DeviceGroup:
        """The project's group; NotFound otherwise."""
        async with self.store.read() as conn:
            return await require_group(conn, project_id, group_id)

    async def find(self, app_id: str, name: str) -> DeviceGroup | None:
        """The app's group of that name, or None."""
        async with self.store.read() as conn:
            return await group_rows.find_group_by_name(conn, app_id, name)

    async def page(
        self,
        project_id: str,
        page: PageRequest | None = None,
        *,
        app_id: str | None = None,
        name: str | None = None,
    ) -> Page[DeviceGroup]:
        """A page of the project's groups, newest first."""
        async with self.store.read() as conn:
            return await group_rows.list_groups(
                conn, project_id, page or PageRequest(), app_id=app_id, name=name
            )

    async def update(
        self,
        project_id: str,
        group_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> DeviceGroup:
        """Rename a group or change its description."""
        if name is not None:
            check_text("name", name, 1, 64)
        check_optional_text("description", description, 64)
        async with self.store.write() as conn:
            group = await require_group(conn, project_id, group_id)
            renamed = name is not None and name != group.name
            if renamed and await group_rows.find_group_by_name(conn, group.app_id, name or ""):
                raise AlreadyExists("group", name or "")
            changes: dict[str, str | None] = {
                key: value
                for key, value in (("name", name), ("description", description))
                if value is not None
            }
            if changes:
                await group_rows.update_group(conn, group_id, changes)
        return replace(
            group,
            name=changes.get("name") or group.name,
            description=changes.get("description", group.description),
        )

    async def delete(self, project_id: str, group_id: str) -> None:
        """Remove a group (its devices stay); Conflict while it has sub-groups."""
        async with self.store.write() as conn:
            await require_group(conn, project_id, group_id)
            if await group_rows.child_group_ids(conn, [group_id]):
                raise Conflict(f"group {group_id!r} still has sub-groups")
            await group_rows.delete_group(conn, group_id)

    async def add_members(self, project_id: str, group_id: str, device_ids: Sequence[str]) -> int:
        """Put devices into a group; NotFound names the first device that does not exist."""
        async with self.store.write() as conn:
            await require_group(conn, project_id, group_id)
            added = 0
            for chunk in chunks(device_ids, BULK_CHUNK):
                for device_id in chunk:
                    if not isinstance(device_id, str):
                        raise InvalidInput("device_id", "must be a string")
                known = set(await device_rows.existing_device_ids(conn, chunk))
                missing = [device_id for device_id in chunk if device_id not in known]
                if missing:
                    raise NotFound("device", missing[0])
                added += await device_rows.add_members_by_device_id(
                    conn, group_id, chunk, project_id
                )
        return added

    async def remove_members(
        self, project_id: str, group_id: str, device_ids: Sequence[str]
    ) -> int:
        """Unlink devices from a group; returns how many were members."""
        async with self.store.write() as conn:
            await require_group(conn, project_id, group_id)
            pks = []
            for device_id in device_ids:
                device = await require_device(conn, project_id, device_id)
                pks.append(device.pk)
            return await group_rows.remove_members(conn, group_id, pks)

    async def members(
        self, project_id: str, group_id: str, page: PageRequest | None = None
    ) -> Page[Device]:
        """A page of the group's devices, newest first."""
        async with self.store.read() as conn:
            await require_group(conn, project_id, group_id)
            return await group_rows.list_members(conn, group_id, page or PageRequest())

    async def with_descendants(self, project_id: str, group_ids: Sequence[str]) -> list[str]:
        """The given groups and all their sub-groups (task targets include sub-groups)."""
        async with self.store.read() as conn:
            for group_id in group_ids:
                await require_group(conn, project_id, group_id)
            found = list(dict.fromkeys(group_ids))
            frontier = found
            while frontier:
                frontier = [
                    child
                    for child in await group_rows.child_group_ids(conn, frontier)
                    if child not in found
                ]
                found.extend(frontier)
        return found


async def _group_depth(conn: AsyncConnection, group: DeviceGroup) -> int:
    """1 for a top-level group, 2 for its child, and so on."""
    depth = 1
    while group.parent_group_id is not None:
        parent = await group_rows.get_group(conn, group.parent_group_id)
        if parent is None:
            break
        group, depth = parent, depth + 1
    return depth
