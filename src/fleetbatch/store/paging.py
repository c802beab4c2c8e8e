"""Marker paging as IoTDA lists do it: newest first by record id, `id < marker`, then offset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Row, Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.ids import MAX_MARKER, format_record_id, parse_marker

MAX_LIMIT = 50
MAX_OFFSET = 500


@dataclass(frozen=True, slots=True)
class PageRequest:
    """Validated paging parameters (spec: iotda-v5 §4.7: limit 1–50, offset 0–500)."""

    limit: int = 10
    marker: str = MAX_MARKER
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidInput("limit", f"must be 1 to {MAX_LIMIT}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise InvalidInput("offset", f"must be 0 to {MAX_OFFSET}")
        try:
            parse_marker(self.marker)
        except ValueError as exc:
            raise InvalidInput("marker", str(exc)) from None


async def fetch_page(
    conn: AsyncConnection,
    query: Select[tuple[object, ...]],
    id_column: ColumnElement[int],
    where: Sequence[ColumnElement[bool]],
    page: PageRequest,
) -> tuple[Sequence[Row[tuple[object, ...]]], int, str | None]:
    """Rows of one page, the count of all rows matching `where`, and the next marker.

    `query` selects the row columns (its FROM may join); `where` filters it. The marker
    of a page is the id of its last row, so the next page continues strictly below it.
    """
    bound = parse_marker(page.marker)
    rows = (
        await conn.execute(
            query.where(*where, id_column < bound)
            .order_by(id_column.desc())
            .offset(page.offset)
            .limit(page.limit)
        )
    ).all()
    count_query = select(func.count()).select_from(query.where(*where).subquery())
    count = int((await conn.execute(count_query)).scalar_one())
    marker = format_record_id(int(rows[-1]._mapping[id_column])) if rows else None
    return rows, count, marker
