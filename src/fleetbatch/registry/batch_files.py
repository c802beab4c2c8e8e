"""Batch task files: spreadsheets of device ids uploaded for tasks to act on (v5).

The spreadsheet is read off the event loop (`asyncio.to_thread`): parsing 30,000 rows takes
long enough to hold up every other request.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

from fleetbatch.domain.batch_files import (
    MAX_FILE_BYTES,
    BatchTaskFile,
    check_file_name,
    device_ids_from_rows,
)
from fleetbatch.domain.errors import InvalidInput, NotFound
from fleetbatch.domain.ids import new_object_id
from fleetbatch.registry.common import Service
from fleetbatch.store import batch_files as file_rows


class BatchFileService(Service):
    """Upload, list, delete and read the device lists of batch task files."""

    async def upload(self, project_id: str, file_name: str, content: bytes) -> BatchTaskFile:
        """Parse and keep an .xlsx/.xls device list; InvalidInput when it is not one."""
        check_file_name(file_name)
        if len(content) > MAX_FILE_BYTES:
            raise InvalidInput("file", f"must be at most {MAX_FILE_BYTES} bytes")
        device_ids = await asyncio.to_thread(read_device_ids, file_name, content)
        file = BatchTaskFile(
            new_object_id(), project_id, file_name, len(device_ids), self.clock.now_ms()
        )
        async with self.store.write() as conn:
            await file_rows.insert_file(conn, file, device_ids)
        return file

    async def list_all(self, project_id: str) -> list[BatchTaskFile]:
        """The project's files, newest first."""
        async with self.store.read() as conn:
            return await file_rows.list_files(conn, project_id)

    async def delete(self, project_id: str, file_id: str) -> None:
        """Remove a file; tasks created from it keep their subtasks."""
        async with self.store.write() as conn:
            await _require(conn, project_id, file_id)
            await file_rows.delete_file(conn, file_id)

    async def device_ids(self, project_id: str, file_id: str) -> list[str]:
        """The device ids the project's file lists; NotFound otherwise."""
        async with self.store.read() as conn:
            await _require(conn, project_id, file_id)
            return await file_rows.get_device_ids(conn, file_id)


async def _require(conn: Any, project_id: str, file_id: str) -> BatchTaskFile:
    found = await file_rows.get_file(conn, file_id)
    if found is None or found.project_id != project_id:
        raise NotFound("batch task file", file_id)
    return found


def read_device_ids(file_name: str, content: bytes) -> list[str]:
    """The device ids of a spreadsheet's first sheet (blocking: run it in a thread)."""
    rows = _xls_rows(content) if file_name.lower().endswith(".xls") else _xlsx_rows(content)
    return device_ids_from_rows(rows)


def _xlsx_rows(content: bytes) -> Iterator[Sequence[Any]]:
    import openpyxl

    try:
        book = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise InvalidInput("file", f"is not a readable .xlsx spreadsheet ({exc})") from None
    try:
        yield from book.worksheets[0].iter_rows(values_only=True)
    finally:
        book.close()


def _xls_rows(content: bytes) -> Iterator[Sequence[Any]]:
    import xlrd

    try:
        book = xlrd.open_workbook(file_contents=content)
    except xlrd.XLRDError as exc:
        raise InvalidInput("file", f"is not a readable .xls spreadsheet ({exc})") from None
    sheet = book.sheet_by_index(0)
    for index in range(sheet.nrows):
        yield sheet.row_values(index)
