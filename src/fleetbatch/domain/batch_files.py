"""Batch task files: the device list an uploaded spreadsheet holds, and its limits.

Pure: the rows come in as sequences of cell values (read from xlsx or xls by the adapter).
The device id is the first column; a first row that is a header is skipped. Huawei's own
templates' column layout is unconfirmed (spec: iotda-v5 §4.3), so fleetbatch documents its
own: one device id per row in the first column, anything after it ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fleetbatch.domain.errors import InvalidInput

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_FILE_ROWS = 30_000
MAX_FILE_NAME = 255
FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
FILE_SUFFIXES = (".xlsx", ".xls")
HEADER_WORDS = frozenset({"device_id", "deviceid", "device id", "设备id", "设备标识"})
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)
class BatchTaskFile:
    """An uploaded device list."""

    file_id: str
    project_id: str
    file_name: str
    row_count: int
    uploaded_at_ms: int


def check_file_name(name: str) -> str:
    """The upload's file name; an .xlsx or .xls name of 1–255 characters."""
    if not name or len(name) > MAX_FILE_NAME:
        raise InvalidInput("file", f"the file name must be 1 to {MAX_FILE_NAME} characters")
    if not name.lower().endswith(FILE_SUFFIXES):
        raise InvalidInput("file", "must be an .xlsx or .xls spreadsheet")
    return name


def device_ids_from_rows(rows: Iterable[Sequence[Any]]) -> list[str]:
    """The device ids of the first column, in row order; InvalidInput names the bad row."""
    found: list[str] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        cell = _text(row[0]) if row else ""
        if not cell:
            continue
        if number == 1 and (cell.lower() in HEADER_WORDS or not _DEVICE_ID.fullmatch(cell)):
            continue  # a header row
        if not _DEVICE_ID.fullmatch(cell):
            raise InvalidInput(
                "file", f"row {number}: {cell!r} is not a device id (1-128 of A-Za-z0-9_-)"
            )
        if cell in seen:
            raise InvalidInput("file", f"row {number}: device {cell} is listed twice")
        seen.add(cell)
        found.append(cell)
        if len(found) > MAX_FILE_ROWS:
            raise InvalidInput("file", f"lists more than {MAX_FILE_ROWS} devices")
    if not found:
        raise InvalidInput("file", "lists no device id in its first column")
    return found


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a numeric id typed into a spreadsheet cell
    return str(value).strip()
