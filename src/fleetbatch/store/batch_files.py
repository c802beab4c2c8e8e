"""Rows of uploaded batch task files."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Row, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.batch_files import BatchTaskFile
from fleetbatch.store.schema import batch_task_files

f = batch_task_files.c
SUMMARY = (f.file_id, f.project_id, f.file_name, f.row_count, f.uploaded_at)


def file_from_row(row: Row[Any, Any, Any, Any, Any]) -> BatchTaskFile:
    m = row._mapping
    return BatchTaskFile(
        m["file_id"], m["project_id"], m["file_name"], m["row_count"], m["uploaded_at"]
    )


async def insert_file(conn: AsyncConnection, file: BatchTaskFile, device_ids: list[str]) -> None:
    """Store a parsed file."""
    await conn.execute(
        insert(batch_task_files).values(
            file_id=file.file_id,
            project_id=file.project_id,
            file_name=file.file_name,
            device_ids=json.dumps(device_ids),
            row_count=file.row_count,
            uploaded_at=file.uploaded_at_ms,
        )
    )


async def get_file(conn: AsyncConnection, file_id: str) -> BatchTaskFile | None:
    """One file's summary, in whichever project holds it."""
    row = (await conn.execute(select(*SUMMARY).where(f.file_id == file_id))).first()
    return None if row is None else file_from_row(row)


async def list_files(conn: AsyncConnection, project_id: str) -> list[BatchTaskFile]:
    """The project's files, newest first."""
    rows = await conn.execute(
        select(*SUMMARY).where(f.project_id == project_id).order_by(f.file_id.desc())
    )
    return [file_from_row(row) for row in rows.all()]


async def get_device_ids(conn: AsyncConnection, file_id: str) -> list[str]:
    """The device ids a file lists."""
    text = (await conn.execute(select(f.device_ids).where(f.file_id == file_id))).scalar_one()
    ids: list[str] = json.loads(text)
    return ids


async def delete_file(conn: AsyncConnection, file_id: str) -> None:
    """Remove a file."""
    await conn.execute(delete(batch_task_files).where(f.file_id == file_id))
