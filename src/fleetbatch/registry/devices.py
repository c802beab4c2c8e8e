"""Devices: bulk registration, lookups, lifecycle (freeze, secrets, deletion)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from itertools import islice
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.documents import normalise_document
from fleetbatch.domain.errors import AlreadyExists, Conflict, InvalidInput
from fleetbatch.domain.ids import (
    device_id_for,
    new_secret,
)
from fleetbatch.domain.registry import (
    App,
    CreatedDevice,
    Device,
    DeviceStatus,
    NewDevice,
    Page,
    check_extension_info,
    check_optional_text,
    check_secret,
    check_text,
    extension_info_text,
)
from fleetbatch.domain.tasks import TaskType
from fleetbatch.registry.common import (
    Service,
    require_app,
    require_device,
    require_group,
    require_product,
)
from fleetbatch.store import devices as device_rows
from fleetbatch.store import shadows as shadow_rows
from fleetbatch.store.paging import PageRequest

T = TypeVar("T")

# Rows per bulk statement: large enough to amortise round trips, small enough for SQLite's
# bound-parameter limit in the duplicate check and for steady memory.
BULK_CHUNK = 5_000
DEVICE_FILTERS = ("app_id", "product_id", "node_id", "name", "status", "gateway_id", "location")


class DeviceService(Service):
    """Registered devices and their secrets."""

    async def create(self, app_id: str, product_id: str, spec: NewDevice) -> CreatedDevice:
        """Register one device; its secret is generated unless given."""
        return (await self.create_many(app_id, product_id, [spec]))[0]

    async def create_many(
        self,
        app_id: str,
        product_id: str,
        specs: Iterable[NewDevice],
        *,
        group_id: str | None = None,
    ) -> list[CreatedDevice]:
        """Register many devices in one transaction (all or none) and return their secrets."""
        created: list[CreatedDevice] = []
        await self.create_many_streamed(
            app_id, product_id, specs, group_id=group_id, sink=created.extend
        )
        return created

    async def create_many_streamed(
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
            app = await require_app(conn, app_id)
            product = await require_product(conn, app.project_id, product_id)
            if product.app_id != app_id:
                raise InvalidInput("product_id", "belongs to another app")
            if group_id is not None:
                group = await require_group(conn, app.project_id, group_id)
                if group.app_id != app_id:
                    raise InvalidInput("group_id", "belongs to another app")
            for chunk in chunks(specs, BULK_CHUNK):
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
                await _initial_shadows(conn, chunk, chunk_created, now)
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
            if spec.shadow:
                _check_initial_shadow(spec.shadow)
            device_id = spec.device_id or device_id_for(product_id, spec.node_id)
            if len(device_id) > 128:
                raise InvalidInput("device_id", "product_id + '_' + node_id exceeds 128 characters")
            secret = spec.secret or new_secret()
            tags = json.dumps(spec.tags, separators=(",", ":"))
            extension = spec.extension_info
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
                    None if extension is None else extension_info_text(extension),
                )
            )
            created.append(CreatedDevice(device_id, spec.node_id, product_id, secret))
        return rows, created

    async def get(self, project_id: str, device_id: str) -> Device:
        """The project's device; NotFound otherwise."""
        async with self.store.read() as conn:
            return await require_device(conn, project_id, device_id)

    async def owned_by_others(self, app_id: str, device_ids: Sequence[str]) -> list[str]:
        """Those of `device_ids` that belong to another app (up to the first chunk found)."""
        async with self.store.read() as conn:
            for chunk in chunks(list(dict.fromkeys(device_ids)), 5000):
                found = await device_rows.device_ids_of_other_apps(conn, app_id, chunk)
                if found:
                    return found
        return []

    async def find(self, device_id: str) -> Device | None:
        """The device in whichever project holds it, or None (device-side lookups)."""
        async with self.store.read() as conn:
            return await device_rows.get_device(conn, device_id)

    async def credentials(self, device_id: str) -> tuple[DeviceStatus, str] | None:
        """(status, plain primary secret) of a device, or None."""
        async with self.store.read() as conn:
            found = await device_rows.get_secret(conn, device_id)
        if found is None:
            return None
        status, secret_enc, _ = found
        return status, self.vault.decrypt(secret_enc)

    async def record_presence(
        self,
        online: Sequence[tuple[str, int]],
        offline: Sequence[tuple[str, int, int | None]],
        seen: Sequence[tuple[str, int]],
    ) -> None:
        """Persist a batch of connects, disconnects and last-seen times (see the store)."""
        async with self.store.write() as conn:
            await device_rows.record_presence(conn, online, offline, seen)

    async def mark_all_offline(self) -> int:
        """No device is connected yet: every ONLINE status is stale (a restart, a crash)."""
        async with self.store.write() as conn:
            return await device_rows.mark_all_offline(conn, self.clock.now_ms())

    async def credentials_many(
        self, device_ids: Sequence[str]
    ) -> dict[str, tuple[DeviceStatus, tuple[str, ...]]]:
        """(status, the plain secrets it may connect with, primary first) of many devices in
        one read (a connect storm); unknown ones absent."""
        async with self.store.read() as conn:
            found = await device_rows.get_secrets(conn, device_ids)
        decrypt = self.vault.decrypt
        return {
            device_id: (status, tuple(decrypt(enc) for enc in (primary, secondary) if enc))
            for device_id, (status, primary, secondary) in found.items()
        }

    async def page(
        self,
        project_id: str,
        page: PageRequest | None = None,
        *,
        below_gateway: str | None = None,
        created_from_ms: int | None = None,
        created_to_ms: int | None = None,
        **filters: Any,
    ) -> Page[Device]:
        """A page of the project's devices, newest first, filtered by `DEVICE_FILTERS`, by
        registration time (inclusive bounds) and to the devices below a gateway at any depth."""
        unknown = set(filters) - set(DEVICE_FILTERS)
        if unknown:
            raise InvalidInput(sorted(unknown)[0], "is not a device filter")
        given = {name: value for name, value in filters.items() if value is not None}
        if "status" in given:
            given["status"] = _device_status(given["status"])
        async with self.store.read() as conn:
            return await device_rows.list_devices(
                conn,
                project_id,
                page or PageRequest(),
                filters=given,
                below_gateway=below_gateway,
                created_from_ms=created_from_ms,
                created_to_ms=created_to_ms,
            )

    async def update(
        self,
        project_id: str,
        device_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        location: str | None = None,
        tags: dict[str, str] | None = None,
        extension_info: dict[str, Any] | None = None,
    ) -> Device:
        """Change a device's descriptive fields; None leaves a field as it is (the extension
        info is replaced as a whole)."""
        if name is not None:
            check_text("device_name", name, 1, 256)
        check_optional_text("description", description, 2048)
        check_optional_text("location", location, 1024)
        check_extension_info("extension_info", extension_info)
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
        columns = dict(changes)
        if extension_info is not None:
            changes["extension_info"] = extension_info
            columns["extension_info"] = extension_info_text(extension_info)
        async with self.store.write() as conn:
            current = await require_device(conn, project_id, device_id)
            if columns:
                await device_rows.update_device(conn, device_id, columns)
        return replace(current, **changes)

    async def delete(self, project_id: str, device_id: str) -> None:
        """Remove a device and its group memberships; Conflict while it has child devices."""
        async with self.store.write() as conn:
            device = await require_device(conn, project_id, device_id)
            if await device_rows.has_child_devices(conn, device_id):
                raise Conflict(f"device {device_id!r} still has child devices")
            await device_rows.delete_device(conn, device.pk)

    async def freeze(self, project_id: str, device_id: str) -> Device:
        """Freeze a device: it may not connect until unfrozen."""
        async with self.store.write() as conn:
            device = await require_device(conn, project_id, device_id)
            now = self.clock.now_ms()
            values = {"status": DeviceStatus.FROZEN.value, "status_changed_at": now}
            await device_rows.update_device(conn, device_id, values)
        return replace(device, status=DeviceStatus.FROZEN, status_changed_at_ms=now)

    async def unfreeze(self, project_id: str, device_id: str) -> Device:
        """Unfreeze a device: it goes back to OFFLINE, or INACTIVE if it never connected."""
        async with self.store.write() as conn:
            device = await require_device(conn, project_id, device_id)
            if device.status is not DeviceStatus.FROZEN:
                return device
            status = DeviceStatus.INACTIVE if device.active_at_ms is None else DeviceStatus.OFFLINE
            now = self.clock.now_ms()
            values = {"status": status.value, "status_changed_at": now}
            await device_rows.update_device(conn, device_id, values)
        return replace(device, status=status, status_changed_at_ms=now)

    async def reset_secret(
        self,
        project_id: str,
        device_id: str,
        secret: str | None = None,
        *,
        secondary: bool = False,
    ) -> str:
        """Give the device a new secret (generated unless given) and return it: its primary
        one, or its `secondary` one (it may connect with either)."""
        if secret is not None:
            check_secret("secret", secret)
        new = secret or new_secret()
        column = "secondary_secret_enc" if secondary else "secret_enc"
        async with self.store.write() as conn:
            await require_device(conn, project_id, device_id)
            await device_rows.update_device(conn, device_id, {column: self.vault.encrypt(new)})
        return new


async def _initial_shadows(
    conn: AsyncConnection, specs: Sequence[NewDevice], created: Sequence[CreatedDevice], now: int
) -> None:
    """Store the initial desired values of the devices given some, as a shadow update does."""
    wanted = [(c.device_id, s.shadow) for s, c in zip(specs, created, strict=True) if s.shadow]
    if not wanted:
        return
    pks = await device_rows.device_pks(conn, [device_id for device_id, _ in wanted])
    for device_id, shadow in wanted:
        await shadow_rows.merge_desired(conn, [pks[device_id]], shadow, now)


def _check_initial_shadow(shadow: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Initial desired values obey a shadow update's rules; InvalidInput names `shadow`."""
    document = {"shadow": [{"service_id": s, "desired": dict(d)} for s, d in shadow]}
    try:
        normalise_document(TaskType.UPDATE_DEVICE_SHADOWS, document)
    except InvalidInput as exc:
        field = exc.field.removeprefix("document.")
        raise InvalidInput(field, str(exc).split(": ", 1)[-1]) from None


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


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of up to `size` items."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def new_node_ids(count: int, prefix: str | None = None) -> Iterator[str]:
    """`count` node ids `{prefix}-{n:06d}`; the prefix defaults to a random batch token."""
    batch = prefix or f"dev-{secrets.token_hex(3)}"
    return (f"{batch}-{n:06d}" for n in range(1, count + 1))
