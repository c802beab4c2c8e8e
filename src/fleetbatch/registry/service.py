"""The registry service: projects, apps and their credentials, products, devices, groups.

Every method is one unit of work in one transaction; bad input raises before anything is
written, so a rejected call changes nothing. Methods scoped by `project_id` treat another
project's resource as not found.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.clock import Clock
from fleetbatch.domain.errors import AlreadyExists, AuthFailed, Conflict, InvalidInput, NotFound
from fleetbatch.domain.ids import (
    device_id_for,
    new_access_key,
    new_app_id,
    new_object_id,
    new_project_id,
    new_secret,
)
from fleetbatch.domain.registry import (
    App,
    AppCredentials,
    CreatedDevice,
    Device,
    DeviceGroup,
    DeviceStatus,
    NewDevice,
    NewProduct,
    Page,
    Product,
    Project,
    check_group_id,
    check_optional_text,
    check_secret,
    check_text,
)
from fleetbatch.store import apps as app_rows
from fleetbatch.store import devices as device_rows
from fleetbatch.store import groups as group_rows
from fleetbatch.store import products as product_rows
from fleetbatch.store.database import Store
from fleetbatch.store.paging import PageRequest
from fleetbatch.vault import SecretVault, hash_secret, verify_secret

T = TypeVar("T")

DEFAULT_PRODUCT_NAME = "fleetbatch-default"
# Rows per bulk statement: large enough to amortise round trips, small enough for SQLite's
# bound-parameter limit in the duplicate check and for steady memory.
BULK_CHUNK = 5_000
MAX_GROUP_DEPTH = 5
DEVICE_FILTERS = ("app_id", "product_id", "node_id", "name", "status", "gateway_id", "location")


class Registry:
    """Projects, apps, credentials, products, devices and groups."""

    def __init__(
        self, store: Store, vault: SecretVault, clock: Clock, *, default_throttle: int = 100
    ) -> None:
        self.store = store
        self.vault = vault
        self.clock = clock
        self.default_throttle = default_throttle

    # -- projects and apps -------------------------------------------------------------

    async def create_app(
        self, name: str, *, project_id: str | None = None, throttle_per_min: int | None = None
    ) -> AppCredentials:
        """Create an app, in a new project unless one is named, with all its credentials.

        The app secret (legacy login) and the AK/SK pair (v5 signing) are returned once;
        the store keeps the secret's hash and the SK encrypted.
        """
        check_text("name", name, 1, 256)
        throttle = self.default_throttle if throttle_per_min is None else throttle_per_min
        if throttle < 1:
            raise InvalidInput("throttle_per_min", "must be at least 1")
        now = self.clock.now_ms()
        secret, access_key, secret_key = new_secret(), new_access_key(), new_secret(40)
        async with self.store.write() as conn:
            if project_id is None:
                project_id = new_project_id()
                await app_rows.insert_project(conn, Project(project_id, name, now))
            elif await app_rows.get_project(conn, project_id) is None:
                raise NotFound("project", project_id)
            app = App(new_app_id(), project_id, name, throttle, now)
            await app_rows.insert_app(conn, app, hash_secret(secret))
            await app_rows.insert_access_key(
                conn, access_key, project_id, self.vault.encrypt(secret_key), now
            )
        return AppCredentials(project_id, app.app_id, secret, access_key, secret_key)

    async def get_app(self, app_id: str) -> App:
        """The app; NotFound otherwise."""
        async with self.store.read() as conn:
            return await _require_app(conn, app_id)

    async def get_project(self, project_id: str) -> Project:
        """The project; NotFound otherwise."""
        async with self.store.read() as conn:
            project = await app_rows.get_project(conn, project_id)
        if project is None:
            raise NotFound("project", project_id)
        return project

    async def list_apps(self, project_id: str | None = None) -> list[App]:
        """Every app, or those of one project, oldest first."""
        async with self.store.read() as conn:
            return await app_rows.list_apps(conn, project_id)

    async def verify_app_secret(self, app_id: str, secret: str) -> App:
        """The app when `secret` is its secret; AuthFailed otherwise (unknown app included)."""
        async with self.store.read() as conn:
            stored = await app_rows.get_app_secret_hash(conn, app_id)
            if stored is None or not verify_secret(secret, stored):
                raise AuthFailed("app id or secret is not right")
            return await _require_app(conn, app_id)

    async def set_throttle(self, app_id: str, per_min: int) -> None:
        """Set how many northbound calls per minute the app may make."""
        if per_min < 1:
            raise InvalidInput("throttle_per_min", "must be at least 1")
        async with self.store.write() as conn:
            if not await app_rows.update_app_throttle(conn, app_id, per_min):
                raise NotFound("app", app_id)

    async def secret_key_for(self, access_key: str) -> tuple[str, str]:
        """(project_id, SK) for an enabled access key; AuthFailed for any other key."""
        async with self.store.read() as conn:
            found = await app_rows.get_access_key(conn, access_key)
        if found is None:
            raise AuthFailed("unknown access key")
        project_id, secret_key_enc = found
        return project_id, self.vault.decrypt(secret_key_enc)

    async def grant(self, owner_app_id: str, grantee_app_id: str) -> None:
        """Let `grantee_app_id` act for `owner_app_id` (the legacy `appId` parameter)."""
        if owner_app_id == grantee_app_id:
            raise InvalidInput("appId", "an app always acts for itself")
        async with self.store.write() as conn:
            await _require_app(conn, owner_app_id)
            await _require_app(conn, grantee_app_id)
            await app_rows.insert_grant(conn, owner_app_id, grantee_app_id, self.clock.now_ms())

    async def revoke(self, owner_app_id: str, grantee_app_id: str) -> None:
        """Withdraw a grant; NotFound when there was none."""
        async with self.store.write() as conn:
            if not await app_rows.delete_grant(conn, owner_app_id, grantee_app_id):
                raise NotFound("grant", f"{owner_app_id}->{grantee_app_id}")

    async def may_act_for(self, grantee_app_id: str, owner_app_id: str) -> bool:
        """True when the grantee is the owner or was authorized by it."""
        if grantee_app_id == owner_app_id:
            return True
        async with self.store.read() as conn:
            return await app_rows.has_grant(conn, owner_app_id, grantee_app_id)

    # -- products ------------------------------------------------------------------------

    async def create_product(self, app_id: str, spec: NewProduct) -> Product:
        """Create a product in the app; its id is generated unless given."""
        spec.validate()
        async with self.store.write() as conn:
            app = await _require_app(conn, app_id)
            product_id = spec.product_id or new_object_id()
            if await product_rows.product_exists(conn, product_id):
                raise AlreadyExists("product", product_id)
            product = _product_from_spec(spec, product_id, app, self.clock.now_ms())
            await product_rows.insert_product(conn, product)
        return product

    async def default_product(self, app_id: str) -> Product:
        """The app's default product, created on first use (bulk device creation)."""
        async with self.store.read() as conn:
            found = await product_rows.find_product_by_name(conn, app_id, DEFAULT_PRODUCT_NAME)
        if found is not None:
            return found
        spec = NewProduct(
            name=DEFAULT_PRODUCT_NAME,
            device_type="Default",
            manufacturer_id="fleetbatch",
            manufacturer_name="fleetbatch",
            model="simulated",
            description="Created by fleetbatch for devices registered without a product.",
        )
        return await self.create_product(app_id, spec)

    async def get_product(self, project_id: str, product_id: str) -> Product:
        """The project's product; NotFound otherwise."""
        async with self.store.read() as conn:
            return await _require_product(conn, project_id, product_id)

    async def list_products(
        self,
        project_id: str,
        page: PageRequest | None = None,
        *,
        app_id: str | None = None,
        name: str | None = None,
    ) -> Page[Product]:
        """A page of the project's products, newest first."""
        async with self.store.read() as conn:
            return await product_rows.list_products(
                conn, project_id, page or PageRequest(), app_id=app_id, name=name
            )

    async def update_product(self, project_id: str, product_id: str, **changes: Any) -> Product:
        """Change a product's descriptive fields (name, device_type, manufacturer...)."""
        allowed = set(NewProduct.__dataclass_fields__) - {"product_id"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidInput(sorted(unknown)[0], "cannot be changed")
        async with self.store.write() as conn:
            current = await _require_product(conn, project_id, product_id)
            kept = {name: getattr(current, name) for name in allowed - set(changes)}
            NewProduct(**kept, **changes).validate()
            await product_rows.update_product(conn, product_id, changes)
        return replace(current, **changes)

    async def delete_product(self, project_id: str, product_id: str) -> None:
        """Remove a product; Conflict while devices of it exist."""
        async with self.store.write() as conn:
            await _require_product(conn, project_id, product_id)
            if await product_rows.count_product_devices(conn, product_id):
                raise Conflict(f"product {product_id!r} still has devices")
            await product_rows.delete_product(conn, product_id)

    # -- devices -------------------------------------------------------------------------

    async def create_device(self, app_id: str, product_id: str, spec: NewDevice) -> CreatedDevice:
        """Register one device; its secret is generated unless given."""
        return (await self.create_devices(app_id, product_id, [spec]))[0]

    async def create_devices(
        self,
        app_id: str,
        product_id: str,
        specs: Iterable[NewDevice],
        *,
        group_id: str | None = None,
    ) -> list[CreatedDevice]:
        """Register many devices in one transaction (all or none) and return their secrets."""
        created: list[CreatedDevice] = []
        await self.create_devices_streamed(
            app_id, product_id, specs, group_id=group_id, sink=created.extend
        )
        return created

    async def create_devices_streamed(
        self,
        app_id: str,
        product_id: str,
        specs: Iterable[NewDevice],
        *,
        group_id: str | None = None,
        sink: Callable[[Sequence[CreatedDevice]], object],
    ) -> int:
        """Register many devices in one transaction, handing each chunk's secrets to `sink`.

        All or none: a duplicate or invalid device anywhere rolls the whole batch back
        (`sink` has then seen chunks that were not kept; write them somewhere temporary).
        Rows go to the database in chunks through the dialect's bulk path (COPY or one
        executemany), so memory stays flat however many devices there are.
        """
        now = self.clock.now_ms()
        total = 0
        async with self.store.write() as conn:
            app = await _require_app(conn, app_id)
            product = await _require_product(conn, app.project_id, product_id)
            if product.app_id != app_id:
                raise InvalidInput("product_id", "belongs to another app")
            if group_id is not None:
                group = await _require_group(conn, app.project_id, group_id)
                if group.app_id != app_id:
                    raise InvalidInput("group_id", "belongs to another app")
            for chunk in _chunks(specs, BULK_CHUNK):
                rows, chunk_created = self._device_rows(chunk, app, product.product_id, now)
                ids = [device.device_id for device in chunk_created]
                _refuse_repeats(ids)
                # earlier chunks are already inserted in this transaction, so this also
                # catches an id repeated across chunks without remembering every id
                taken = await device_rows.existing_device_ids(conn, ids)
                if taken:
                    raise AlreadyExists("device", taken[0])
                try:
                    await device_rows.insert_devices(conn, rows)
                except IntegrityError as exc:  # a concurrent writer took one of the ids
                    raise AlreadyExists("device", ids[0]) from exc
                if group_id is not None:
                    await device_rows.add_members_by_device_id(conn, group_id, ids, app.project_id)
                sink(chunk_created)
                total += len(chunk_created)
        return total

    def _device_rows(
        self, specs: Sequence[NewDevice], app: App, product_id: str, now: int
    ) -> tuple[list[tuple[Any, ...]], list[CreatedDevice]]:
        """Validated insert rows (in `device_rows.INSERT_COLUMNS` order) and the receipts."""
        rows: list[tuple[Any, ...]] = []
        created: list[CreatedDevice] = []
        encrypt = self.vault.encrypt
        for spec in specs:
            spec.validate()
            device_id = spec.device_id or device_id_for(product_id, spec.node_id)
            if len(device_id) > 128:
                raise InvalidInput("device_id", "product_id + '_' + node_id exceeds 128 characters")
            secret = spec.secret or new_secret()
            tags = "{}" if not spec.tags else _json(spec.tags)
            rows.append(
                (
                    device_id,
                    app.project_id,
                    app.app_id,
                    product_id,
                    spec.node_id,
                    spec.name or spec.node_id,
                    spec.description,
                    encrypt(secret),
                    DeviceStatus.INACTIVE.value,
                    spec.location,
                    tags,
                    spec.gateway_id,
                    now,
                )
            )
            created.append(CreatedDevice(device_id, spec.node_id, product_id, secret))
        return rows, created

    async def get_device(self, project_id: str, device_id: str) -> Device:
        """The project's device; NotFound otherwise."""
        async with self.store.read() as conn:
            return await _require_device(conn, project_id, device_id)

    async def find_device(self, device_id: str) -> Device | None:
        """The device in whichever project holds it, or None (device-side lookups)."""
        async with self.store.read() as conn:
            return await device_rows.get_device(conn, device_id)

    async def device_credentials(self, device_id: str) -> tuple[DeviceStatus, str] | None:
        """(status, plain secret) for verifying a device's connect password, or None."""
        async with self.store.read() as conn:
            found = await device_rows.get_secret(conn, device_id)
        if found is None:
            return None
        status, secret_enc = found
        return status, self.vault.decrypt(secret_enc)

    async def list_devices(
        self, project_id: str, page: PageRequest | None = None, **filters: Any
    ) -> Page[Device]:
        """A page of the project's devices, newest first, filtered by `DEVICE_FILTERS`."""
        unknown = set(filters) - set(DEVICE_FILTERS)
        if unknown:
            raise InvalidInput(sorted(unknown)[0], "is not a device filter")
        given = {name: value for name, value in filters.items() if value is not None}
        if "status" in given:
            given["status"] = _device_status(given["status"])
        async with self.store.read() as conn:
            return await device_rows.list_devices(
                conn, project_id, page or PageRequest(), filters=given
            )

    async def update_device(
        self,
        project_id: str,
        device_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        location: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Device:
        """Change a device's descriptive fields; None leaves a field as it is."""
        if name is not None:
            check_text("device_name", name, 1, 256)
        check_optional_text("description", description, 2048)
        check_optional_text("location", location, 1024)
        changes: dict[str, Any] = {
            key: value
            for key, value in (
                ("name", name),
                ("description", description),
                ("location", location),
                ("tags", tags),
            )
            if value is not None
        }
        async with self.store.write() as conn:
            current = await _require_device(conn, project_id, device_id)
            if changes:
                await device_rows.update_device(conn, device_id, changes)
        return replace(current, **changes)

    async def delete_device(self, project_id: str, device_id: str) -> None:
        """Remove a device and its group memberships; Conflict while it has child devices."""
        async with self.store.write() as conn:
            device = await _require_device(conn, project_id, device_id)
            children = await device_rows.list_devices(
                conn, project_id, PageRequest(limit=1), filters={"gateway_id": device_id}
            )
            if children.items:
                raise Conflict(f"device {device_id!r} still has child devices")
            await device_rows.delete_device(conn, device.pk)

    async def freeze_device(self, project_id: str, device_id: str) -> Device:
        """Freeze a device: it may not connect until unfrozen."""
        async with self.store.write() as conn:
            device = await _require_device(conn, project_id, device_id)
            now = self.clock.now_ms()
            values = {"status": DeviceStatus.FROZEN.value, "status_changed_at": now}
            await device_rows.update_device(conn, device_id, values)
        return replace(device, status=DeviceStatus.FROZEN, status_changed_at_ms=now)

    async def unfreeze_device(self, project_id: str, device_id: str) -> Device:
        """Unfreeze a device: it goes back to OFFLINE, or INACTIVE if it never connected."""
        async with self.store.write() as conn:
            device = await _require_device(conn, project_id, device_id)
            if device.status is not DeviceStatus.FROZEN:
                return device
            status = DeviceStatus.INACTIVE if device.active_at_ms is None else DeviceStatus.OFFLINE
            now = self.clock.now_ms()
            values = {"status": status.value, "status_changed_at": now}
            await device_rows.update_device(conn, device_id, values)
        return replace(device, status=status, status_changed_at_ms=now)

    async def reset_secret(self, project_id: str, device_id: str, secret: str | None = None) -> str:
        """Give the device a new secret (generated unless given) and return it."""
        if secret is not None:
            check_secret("secret", secret)
        new = secret or new_secret()
        async with self.store.write() as conn:
            await _require_device(conn, project_id, device_id)
            await device_rows.update_device(
                conn, device_id, {"secret_enc": self.vault.encrypt(new)}
            )
        return new

    # -- groups --------------------------------------------------------------------------

    async def create_group(
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
            app = await _require_app(conn, app_id)
            if parent_group_id is not None:
                parent = await _require_group(conn, app.project_id, parent_group_id)
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

    async def ensure_group(self, app_id: str, name: str) -> DeviceGroup:
        """The app's group of that name, created when absent."""
        async with self.store.read() as conn:
            found = await group_rows.find_group_by_name(conn, app_id, name)
        if found is not None:
            return found
        try:
            return await self.create_group(app_id, name)
        except AlreadyExists:  # created by someone else meanwhile
            async with self.store.read() as conn:
                again = await group_rows.find_group_by_name(conn, app_id, name)
            if again is None:
                raise
            return again

    async def get_group(self, project_id: str, group_id: str) -> DeviceGroup:
        """The project's group; NotFound otherwise."""
        async with self.store.read() as conn:
            return await _require_group(conn, project_id, group_id)

    async def find_group(self, app_id: str, name: str) -> DeviceGroup | None:
        """The app's group of that name, or None."""
        async with self.store.read() as conn:
            return await group_rows.find_group_by_name(conn, app_id, name)

    async def list_groups(
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

    async def update_group(
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
            group = await _require_group(conn, project_id, group_id)
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

    async def delete_group(self, project_id: str, group_id: str) -> None:
        """Remove a group (its devices stay); Conflict while it has sub-groups."""
        async with self.store.write() as conn:
            await _require_group(conn, project_id, group_id)
            if await group_rows.child_group_ids(conn, [group_id]):
                raise Conflict(f"group {group_id!r} still has sub-groups")
            await group_rows.delete_group(conn, group_id)

    async def add_group_members(
        self, project_id: str, group_id: str, device_ids: Sequence[str]
    ) -> int:
        """Put devices into a group; NotFound names the first device that does not exist."""
        async with self.store.write() as conn:
            await _require_group(conn, project_id, group_id)
            added = 0
            for chunk in _chunks(device_ids, BULK_CHUNK):
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

    async def remove_group_members(
        self, project_id: str, group_id: str, device_ids: Sequence[str]
    ) -> int:
        """Unlink devices from a group; returns how many were members."""
        async with self.store.write() as conn:
            await _require_group(conn, project_id, group_id)
            pks = []
            for device_id in device_ids:
                device = await _require_device(conn, project_id, device_id)
                pks.append(device.pk)
            return await group_rows.remove_members(conn, group_id, pks)

    async def list_group_members(
        self, project_id: str, group_id: str, page: PageRequest | None = None
    ) -> Page[Device]:
        """A page of the group's devices, newest first."""
        async with self.store.read() as conn:
            await _require_group(conn, project_id, group_id)
            return await group_rows.list_members(conn, group_id, page or PageRequest())

    async def group_with_descendants(self, project_id: str, group_ids: Sequence[str]) -> list[str]:
        """The given groups and all their sub-groups (task targets include sub-groups)."""
        async with self.store.read() as conn:
            for group_id in group_ids:
                await _require_group(conn, project_id, group_id)
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


async def _require_app(conn: AsyncConnection, app_id: str) -> App:
    app = await app_rows.get_app(conn, app_id)
    if app is None:
        raise NotFound("app", app_id)
    return app


async def _require_product(conn: AsyncConnection, project_id: str, product_id: str) -> Product:
    product = await product_rows.get_product(conn, product_id)
    if product is None or product.project_id != project_id:
        raise NotFound("product", product_id)
    return product


async def _require_device(conn: AsyncConnection, project_id: str, device_id: str) -> Device:
    device = await device_rows.get_device(conn, device_id)
    if device is None or device.project_id != project_id:
        raise NotFound("device", device_id)
    return device


async def _require_group(conn: AsyncConnection, project_id: str, group_id: str) -> DeviceGroup:
    group = await group_rows.get_group(conn, group_id)
    if group is None or group.project_id != project_id:
        raise NotFound("group", group_id)
    return group


async def _group_depth(conn: AsyncConnection, group: DeviceGroup) -> int:
    """1 for a top-level group, 2 for its child, and so on."""
    depth = 1
    while group.parent_group_id is not None:
        parent = await group_rows.get_group(conn, group.parent_group_id)
        if parent is None:
            break
        group, depth = parent, depth + 1
    return depth


def _product_from_spec(spec: NewProduct, product_id: str, app: App, now: int) -> Product:
    return Product(
        product_id=product_id,
        project_id=app.project_id,
        app_id=app.app_id,
        name=spec.name,
        device_type=spec.device_type,
        protocol_type=spec.protocol_type,
        data_format=spec.data_format,
        manufacturer_id=spec.manufacturer_id,
        manufacturer_name=spec.manufacturer_name,
        model=spec.model,
        industry=spec.industry,
        description=spec.description,
        service_capabilities=list(spec.service_capabilities),
        created_at_ms=now,
    )


def _device_status(value: Any) -> str:
    try:
        return DeviceStatus(value).value
    except ValueError:
        raise InvalidInput("status", "must be one of " + ", ".join(DeviceStatus)) from None


def _refuse_repeats(ids: Sequence[str]) -> None:
    """Raise AlreadyExists for an id given twice in one chunk."""
    seen: set[str] = set()
    for device_id in ids:
        if device_id in seen:
            raise AlreadyExists("device", device_id)
        seen.add(device_id)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def new_node_ids(count: int, prefix: str | None = None) -> Iterator[str]:
    """`count` node ids `{prefix}-{n:06d}`; the prefix defaults to a random batch token."""
    batch = prefix or f"dev-{secrets.token_hex(3)}"
    return (f"{batch}-{n:06d}" for n in range(1, count + 1))
