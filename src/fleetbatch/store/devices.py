"""Devices: single-row access, listing, and the bulk insert fast paths."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    String,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.registry import Device, DeviceStatus, Page
from fleetbatch.store.paging import PageRequest, fetch_page
from fleetbatch.store.schema import device_shadows, devices, group_members

# The column order of the tuples `insert_devices` takes.
INSERT_COLUMNS = (
    "device_id",
    "project_id",
    "app_id",
    "product_id",
    "node_id",
    "name",
    "description",
    "secret_enc",
    "status",
    "location",
    "tags",
    "gateway_id",
    "created_at",
    "extension_info",
)
SECRET_COLUMNS = ("secret_enc", "secondary_secret_enc")

# Everything but the encrypted secrets, which leave the store only through `get_secret(s)`.
DEVICE_COLUMNS = [column for column in devices.c if column.key not in SECRET_COLUMNS]


def device_from_row(row: Row[tuple[object, ...]]) -> Device:
    m = row._mapping
    return Device(
        pk=m["pk"],
        device_id=m["device_id"],
        project_id=m["project_id"],
        app_id=m["app_id"],
        product_id=m["product_id"],
        node_id=m["node_id"],
        name=m["name"],
        description=m["description"],
        status=DeviceStatus(m["status"]),
        location=m["location"],
        tags=json.loads(m["tags"]),
        gateway_id=m["gateway_id"],
        fw_version=m["fw_version"],
        sw_version=m["sw_version"],
        created_at_ms=m["created_at"],
        active_at_ms=m["active_at"],
        last_seen_at_ms=m["last_seen_at"],
        status_changed_at_ms=m["status_changed_at"],
        extension_info=json.loads(m["extension_info"]) if m["extension_info"] else None,
    )


async def insert_devices(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert many devices at once; each row holds the values of `INSERT_COLUMNS`.

    PostgreSQL takes them through COPY (about 3x executemany's rate); SQLite through one
    executemany of a prepared statement.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        # COPY goes straight to asyncpg: it must run inside the transaction SQLAlchemy began
        if driver is None or not driver.is_in_transaction():
            raise RuntimeError("insert_devices needs an open transaction")
        await driver.copy_records_to_table("devices", records=rows, columns=INSERT_COLUMNS)
        return
    placeholders = ", ".join("?" for _ in INSERT_COLUMNS)
    statement = f"INSERT INTO devices ({', '.join(INSERT_COLUMNS)}) VALUES ({placeholders})"
    await conn.exec_driver_sql(statement, list(rows))


def _select_by_device_ids(
    conn: AsyncConnection, columns: Sequence[Any], device_ids: Sequence[str]
) -> Select[Any]:
    """SELECT `columns` of the devices whose id is one of `device_ids`.

    On PostgreSQL the ids arrive as one array and drive the join through `unnest`, so the
    plan is one unique-index probe per id whatever the statistics say (a plain `IN` or
    `= ANY` next to another predicate could turn into a scan of the project's devices).
    """
    if conn.dialect.name == "postgresql":
        ids = bindparam("device_ids", list(device_ids), type_=postgresql.ARRAY(String))
        given = func.unnest(ids).table_valued("device_id").render_derived(name="given")
        return select(*columns).select_from(
            given.join(devices, devices.c.device_id == given.c.device_id)
        )
    return select(*columns).where(devices.c.device_id.in_(device_ids))


async def existing_device_ids(conn: AsyncConnection, device_ids: Sequence[str]) -> list[str]:
    """Those of `device_ids` that are already registered (in any project)."""
    query = _select_by_device_ids(conn, [devices.c.device_id], device_ids)
    return list((await conn.execute(query)).scalars())


async def device_ids_of_other_apps(
    conn: AsyncConnection, app_id: str, device_ids: Sequence[str]
) -> list[str]:
    """Those of `device_ids` registered to an app other than `app_id`."""
    query = _select_by_device_ids(conn, [devices.c.device_id], device_ids).where(
        devices.c.app_id != app_id
    )
    return list((await conn.execute(query)).scalars())


async def add_members_by_device_id(
    conn: AsyncConnection, group_id: str, device_ids: Sequence[str], project_id: str
) -> int:
    """Put the named devices of the project into the group; returns how many were added."""
    source = _select_by_device_ids(conn, [literal(group_id), devices.c.pk], device_ids).where(
        devices.c.project_id == project_id
    )
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(group_members)
        .from_select(["group_id", "device_pk"], source)
        .on_conflict_do_nothing()  # already a member: keep it, count it as not added
    )
    result = await conn.execute(statement)
    return max(result.rowcount, 0)


async def get_device(conn: AsyncConnection, device_id: str) -> Device | None:
    """The device, or None."""
    query = select(*DEVICE_COLUMNS).where(devices.c.device_id == device_id)
    row = (await conn.execute(query)).first()
    return None if row is None else device_from_row(row)


async def get_secret(
    conn: AsyncConnection, device_id: str
) -> tuple[DeviceStatus, bytes, bytes | None] | None:
    """(status, encrypted secret, encrypted secondary secret or None) of the device, or None."""
    d = devices.c
    query = select(d.status, d.secret_enc, d.secondary_secret_enc).where(d.device_id == device_id)
    row = (await conn.execute(query)).first()
    return None if row is None else (DeviceStatus(row.status), row[1], row[2])


async def get_secrets(
    conn: AsyncConnection, device_ids: Sequence[str]
) -> dict[str, tuple[DeviceStatus, bytes, bytes | None]]:
    """`get_secret` of each of `device_ids` that exists, in one query."""
    d = devices.c
    columns = [d.device_id, d.status, d.secret_enc, d.secondary_secret_enc]
    rows = (await conn.execute(_select_by_device_ids(conn, columns, device_ids))).all()
    return {row[0]: (DeviceStatus(row[1]), row[2], row[3]) for row in rows}


async def device_pks(conn: AsyncConnection, device_ids: Sequence[str]) -> dict[str, int]:
    """The pk of each of `device_ids` that exists."""
    query = _select_by_device_ids(conn, [devices.c.device_id, devices.c.pk], device_ids)
    return {device_id: pk for device_id, pk in (await conn.execute(query)).all()}


def descendants_of(gateway_id: str) -> ColumnElement[bool]:
    """Devices below a gateway at any depth: its children, their children, and so on."""
    tree = (
        select(devices.c.device_id)
        .where(devices.c.gateway_id == gateway_id)
        .cte("tree", recursive=True)
    )
    below = devices.alias("below")
    tree = tree.union(select(below.c.device_id).where(below.c.gateway_id == tree.c.device_id))
    return devices.c.device_id.in_(select(tree.c.device_id))


async def list_devices(
    conn: AsyncConnection,
    project_id: str,
    page: PageRequest,
    *,
    filters: dict[str, Any],
    below_gateway: str | None = None,
    created_from_ms: int | None = None,
    created_to_ms: int | None = None,
) -> Page[Device]:
    """A page of the project's devices, newest first; `filters` maps column names to values;
    registration time within inclusive bounds; below a gateway at any depth."""
    where: list[ColumnElement[bool]] = [devices.c.project_id == project_id]
    if below_gateway is not None:
        where.append(descendants_of(below_gateway))
    if created_from_ms is not None:
        where.append(devices.c.created_at >= created_from_ms)
    if created_to_ms is not None:
        where.append(devices.c.created_at <= created_to_ms)
    where.extend(devices.c[name] == value for name, value in filters.items())
    rows, count, marker = await fetch_page(conn, select(*DEVICE_COLUMNS), devices.c.pk, where, page)
    return Page(items=[device_from_row(row) for row in rows], count=count, marker=marker)


async def has_child_devices(conn: AsyncConnection, device_id: str) -> bool:
    """True when some device names this one as its gateway."""
    query = select(devices.c.pk).where(devices.c.gateway_id == device_id).limit(1)
    return (await conn.execute(query)).first() is not None


async def update_device(conn: AsyncConnection, device_id: str, values: dict[str, Any]) -> None:
    """Change the given columns of a device."""
    if "tags" in values:
        values = {**values, "tags": json.dumps(values["tags"])}
    await conn.execute(devices.update().where(devices.c.device_id == device_id).values(values))


async def delete_device(conn: AsyncConnection, device_pk: int) -> None:
    """Remove a device and its group memberships."""
    await conn.execute(group_members.delete().where(group_members.c.device_pk == device_pk))
    await conn.execute(devices.delete().where(devices.c.pk == device_pk))


# --- bulk lifecycle (the registry task types: one statement per batch, not per device) ---


async def devices_by_pk(conn: AsyncConnection, pks: Sequence[int]) -> dict[int, Device]:
    """Those of the devices `pks` that exist, by pk."""
    if not pks:
        return {}
    rows = await conn.execute(select(*DEVICE_COLUMNS).where(devices.c.pk.in_(list(pks))))
    return {row.pk: device_from_row(row) for row in rows.all()}


async def child_device_ids(
    conn: AsyncConnection, gateway_ids: Sequence[str]
) -> list[tuple[str, str]]:
    """(gateway id, device id) of every device whose gateway is one of `gateway_ids`."""
    if not gateway_ids:
        return []
    rows = await conn.execute(
        select(devices.c.gateway_id, devices.c.device_id).where(
            devices.c.gateway_id.in_(list(gateway_ids))
        )
    )
    return [(gateway_id, device_id) for gateway_id, device_id in rows.all()]


async def freeze_devices(conn: AsyncConnection, pks: Sequence[int], now_ms: int) -> int:
    """Freeze the devices `pks` (a frozen one stays as it is); returns how many changed."""
    if not pks:
        return 0
    result = await conn.execute(
        devices.update()
        .where(devices.c.pk.in_(list(pks)), devices.c.status != DeviceStatus.FROZEN.value)
        .values(status=DeviceStatus.FROZEN.value, status_changed_at=now_ms)
    )
    return max(result.rowcount, 0)


async def unfreeze_devices(conn: AsyncConnection, pks: Sequence[int], now_ms: int) -> int:
    """Frozen ones of `pks` become OFFLINE, or INACTIVE if never connected; returns how many."""
    if not pks:
        return 0
    status = case(
        (devices.c.active_at.is_(None), DeviceStatus.INACTIVE.value),
        else_=DeviceStatus.OFFLINE.value,
    )
    result = await conn.execute(
        devices.update()
        .where(devices.c.pk.in_(list(pks)), devices.c.status == DeviceStatus.FROZEN.value)
        .values(status=status, status_changed_at=now_ms)
    )
    return max(result.rowcount, 0)


async def delete_devices(conn: AsyncConnection, pks: Sequence[int]) -> None:
    """Remove devices with their group memberships and shadows (`delete_device` in bulk)."""
    if not pks:
        return
    wanted = list(pks)
    await conn.execute(group_members.delete().where(group_members.c.device_pk.in_(wanted)))
    await conn.execute(device_shadows.delete().where(device_shadows.c.device_pk.in_(wanted)))
    await conn.execute(devices.delete().where(devices.c.pk.in_(wanted)))


# A frozen device keeps its status through connects and disconnects; any other becomes
# ONLINE when it connects. (A literal, not IN: executemany cannot expand lists.)
_IS_FROZEN = devices.c.status == literal(DeviceStatus.FROZEN.value)
# A change older than the one recorded (a late webhook, a slow flush) does not undo it.
_NOT_OLDER = or_(
    devices.c.status_changed_at.is_(None), devices.c.status_changed_at <= bindparam("b_at")
)


async def record_presence(
    conn: AsyncConnection,
    online: Sequence[tuple[str, int]],
    offline: Sequence[tuple[str, int, int | None]],
    seen: Sequence[tuple[str, int]],
) -> None:
    """Apply a batch of presence changes (times in epoch ms).

    `online`: (device_id, connected_at); `offline`: (device_id, disconnected_at, connected_at
    if it also connected within this batch, else None); `seen`: (device_id, last activity).
    """
    d = devices.c
    # connects and disconnects share one statement: the status, and the connect time to keep
    # as the first activity (a disconnect carries it when it connected within the batch)
    changes = [
        {"b_id": i, "b_status": DeviceStatus.ONLINE.value, "b_at": at, "b_on": at}
        for i, at in online
    ]
    changes += [
        {"b_id": i, "b_status": DeviceStatus.OFFLINE.value, "b_at": at, "b_on": on}
        for i, at, on in offline
    ]
    if changes:
        statement = (
            devices.update()
            .where(d.device_id == bindparam("b_id"), _NOT_OLDER)
            .values(
                # a frozen device stays frozen, but its connect times are still recorded
                status=case((_IS_FROZEN, d.status), else_=bindparam("b_status")),
                active_at=func.coalesce(d.active_at, bindparam("b_on")),
                last_seen_at=bindparam("b_at"),
                status_changed_at=bindparam("b_at"),
            )
        )
        await conn.execute(statement, changes)
    if seen:
        statement = (
            devices.update()
            .where(d.device_id == bindparam("b_id"))
            # never move last-seen backwards (an older touch flushed after a newer change)
            .values(
                last_seen_at=case(
                    (func.coalesce(d.last_seen_at, 0) < bindparam("b_at"), bindparam("b_at")),
                    else_=d.last_seen_at,
                )
            )
        )
        await conn.execute(statement, [{"b_id": i, "b_at": at} for i, at in seen])


async def mark_all_offline(conn: AsyncConnection, at_ms: int) -> int:
    """Every ONLINE device becomes OFFLINE (no connection survives a restart); returns how many."""
    statement = (
        devices.update()
        .where(devices.c.status == DeviceStatus.ONLINE.value)
        .values(status=DeviceStatus.OFFLINE.value, status_changed_at=at_ms)
    )
    result = await conn.execute(statement)
    return max(result.rowcount, 0)
