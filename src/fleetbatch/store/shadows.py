"""Device shadows: desired changes merged set-based per batch, reports recorded, reads.

`desired` and `reported` are JSON text; `version` counts the changes of `desired` (0 before
the first). Rows exist once something was desired for the service: a report only updates
a row that is there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Row, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.shadows import ServiceShadow, merge_properties
from fleetbatch.store.schema import device_shadows, devices

sh = device_shadows.c


def _loads(value: str | None) -> dict[str, Any] | None:
    return None if value is None else json.loads(value)


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def shadow_from_row(row: Row[Any]) -> ServiceShadow:
    m = row._mapping
    return ServiceShadow(
        device_pk=m["device_pk"],
        service_id=m["service_id"],
        desired=_loads(m["desired"]),
        desired_at=m["desired_at"],
        reported=_loads(m["reported"]),
        reported_at=m["reported_at"],
        version=m["version"],
    )


async def get_shadow(conn: AsyncConnection, device_pk: int) -> list[ServiceShadow]:
    """Every service shadow of one device, by service id."""
    rows = await conn.execute(
        select(device_shadows).where(sh.device_pk == device_pk).order_by(sh.service_id)
    )
    return [shadow_from_row(row) for row in rows.all()]


async def merge_desired(
    conn: AsyncConnection,
    device_pks: Sequence[int],
    changes: Sequence[tuple[str, Mapping[str, Any]]],
    now_ms: int,
) -> dict[int, list[ServiceShadow]]:
    """Merge the same desired `changes` (service id, properties) into each device's shadow.

    One SELECT of the rows there are (locked until commit on PostgreSQL, so a concurrent
    change cannot be lost between read and write), then one executemany UPDATE and one
    executemany INSERT. Each changed service's version grows by one. Returns the shadows
    afterwards, per device pk, in the order of `changes`.
    """
    if not device_pks or not changes:
        return {}
    service_ids = [service_id for service_id, _ in changes]
    found = await conn.execute(
        select(device_shadows)
        .where(sh.device_pk.in_(list(device_pks)), sh.service_id.in_(service_ids))
        .with_for_update()
    )
    existing = {(row.device_pk, row.service_id): shadow_from_row(row) for row in found.all()}
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    result: dict[int, list[ServiceShadow]] = {}
    for device_pk in device_pks:
        after: list[ServiceShadow] = []
        for service_id, change in changes:
            before = existing.get((device_pk, service_id))
            desired = merge_properties(before.desired if before else None, change)
            text = _dumps(desired)
            if before is None:
                version = 1
                inserts.append(
                    {
                        "device_pk": device_pk,
                        "service_id": service_id,
                        "desired": text,
                        "desired_at": now_ms,
                        "version": version,
                    }
                )
                reported, reported_at = None, None
            else:
                version = before.version + 1
                updates.append(
                    {
                        "b_pk": device_pk,
                        "b_service": service_id,
                        "b_desired": text,
                        "b_version": version,
                    }
                )
                reported, reported_at = before.reported, before.reported_at
            after.append(
                ServiceShadow(
                    device_pk, service_id, desired, now_ms, reported, reported_at, version
                )
            )
        result[device_pk] = after
    if updates:
        await conn.execute(
            update(device_shadows)
            .where(sh.device_pk == bindparam("b_pk"), sh.service_id == bindparam("b_service"))
            .values(
                desired=bindparam("b_desired"), desired_at=now_ms, version=bindparam("b_version")
            ),
            updates,
        )
    if inserts:
        await conn.execute(device_shadows.insert(), inserts)
    return result


async def record_reported(
    conn: AsyncConnection, reports: Sequence[tuple[str, str, Mapping[str, Any], int]]
) -> int:
    """Merge reported properties (device id, service id, properties, at) into existing rows.

    A report older than what is recorded is dropped. Returns how many rows changed.
    """
    if not reports:
        return 0
    device_ids = sorted({device_id for device_id, _, _, _ in reports})
    rows = await conn.execute(
        select(devices.c.device_id, sh.device_pk, sh.service_id, sh.reported, sh.reported_at)
        .select_from(device_shadows.join(devices, devices.c.pk == sh.device_pk))
        .where(devices.c.device_id.in_(device_ids))
        .with_for_update(of=device_shadows)
    )
    existing = {(row.device_id, row.service_id): row for row in rows.all()}
    changes: list[dict[str, Any]] = []
    for device_id, service_id, properties, at_ms in reports:
        row = existing.get((device_id, service_id))
        if row is None or (row.reported_at is not None and row.reported_at > at_ms):
            continue
        merged = {**(_loads(row.reported) or {}), **properties}
        changes.append(
            {
                "b_pk": row.device_pk,
                "b_service": service_id,
                "b_reported": _dumps(merged),
                "b_at": at_ms,
            }
        )
    if changes:
        await conn.execute(
            update(device_shadows)
            .where(
                sh.device_pk == bindparam("b_pk"),
                sh.service_id == bindparam("b_service"),
                or_(sh.reported_at.is_(None), sh.reported_at <= bindparam("b_at")),
            )
            .values(reported=bindparam("b_reported"), reported_at=bindparam("b_at")),
            changes,
        )
    return len(changes)
