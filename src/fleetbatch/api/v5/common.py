"""Pieces every v5 resource shares: the project path, paging, the caller's app, page bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Path, Query
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from fleetbatch.api.app import get_runtime
from fleetbatch.api.v5.route import Caller, caller
from fleetbatch.domain.errors import InvalidInput, NotFound
from fleetbatch.domain.ids import MAX_MARKER
from fleetbatch.domain.registry import App, Page
from fleetbatch.domain.timefmt import from_compact
from fleetbatch.runtime import Runtime
from fleetbatch.store.paging import MAX_LIMIT, MAX_OFFSET, PageRequest

HEX24 = r"^[0-9a-f]{24}$"
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
# documents the signature in OpenAPI; V5Route checks it before any endpoint runs
signature_header = APIKeyHeader(
    name="Authorization",
    scheme_name="AK/SK",
    description="`SDK-HMAC-SHA256 Access=…` or `V11-HMAC-SHA256 Credential=…`, "
    "as huaweicloudsdkcore signs (with X-Sdk-Date, Host and the other signed headers)",
    auto_error=False,
)


def project_scope(
    project_id: Annotated[str, Path(description="Project id (the access key's project)")],
    _authorization: Annotated[str | None, Depends(signature_header)] = None,
    _instance_id: Annotated[
        str | None,
        Header(alias="Instance-Id", min_length=1, max_length=36, description="Instance id"),
    ] = None,
) -> None:
    """Router-wide parameters, declared so OpenAPI shows them (V5Route enforces them)."""


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Records per page, 1–50 (default 10)")]
Marker = Annotated[
    str,
    Query(
        pattern=HEX24,
        description="Id of the last record of the previous page (24 lower-case hex); "
        "records with smaller ids follow, newest first",
    ),
]
Offset = Annotated[
    int, Query(ge=0, le=MAX_OFFSET, description="Records skipped after the marker, 0–500")
]


def page_request(limit: Limit = 10, marker: Marker = MAX_MARKER, offset: Offset = 0) -> PageRequest:
    """IoTDA paging (limit 1–50 default 10, marker 24 hex default all f, offset 0–500)."""
    return PageRequest(limit=limit, marker=marker, offset=offset)


Paging = Annotated[PageRequest, Depends(page_request)]
# IoTDA's bodies leave out what is not set (the SDK reads a missing key as None)
EXCLUDE_NONE: dict[str, Any] = {"response_model_exclude_none": True}
Signed = Annotated[Caller, Depends(caller)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


T = TypeVar("T")
DeviceId = Annotated[str, Path(max_length=128, pattern=ID_PATTERN, description="Device id")]
COMPACT_TIME = r"^\d{8}T\d{6}Z$"
CompactTime = Annotated[
    str | None, Query(pattern=COMPACT_TIME, description="UTC, yyyyMMdd'T'HHmmss'Z'")
]


def time_window(start_time: str | None, end_time: str | None) -> tuple[int | None, int | None]:
    """(from_ms, to_ms) of a query's `start_time`/`end_time`, either open; InvalidInput
    naming the field for a time that does not exist or a window that ends before it starts."""
    bounds: list[int | None] = []
    for field, text in (("start_time", start_time), ("end_time", end_time)):
        try:
            bounds.append(None if text is None else from_compact(text))
        except ValueError as exc:
            raise InvalidInput(field, str(exc)) from None
    start_ms, end_ms = bounds
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        # not a format error (IOTDA.000009): the plain invalid-input code
        raise InvalidInput("start_time..end_time", "end_time must not be before start_time")
    return start_ms, end_ms


def paged(key: str, page: Page[T], item_wire: Callable[[T], Any]) -> dict[str, Any]:
    """A list response: the page's items under `key`, and IoTDA's page object."""
    return {
        key: [item_wire(item) for item in page.items],
        "page": {"count": page.count, "marker": page.marker},
    }


class PageOut(BaseModel):
    """Page: how many records match in all, and the marker of this page's last record."""

    count: int = Field(description="Records matching the query")
    marker: str | None = Field(None, description="Pass as the next page's marker")


async def app_of(runtime: Runtime, who: Caller, app_id: str | None) -> App:
    """The named resource space in the caller's project, or the project's first (default)."""
    if app_id is not None:
        app = await runtime.registry.apps.get(app_id)
        if app.project_id != who.project_id:
            raise NotFound("app", app_id)
        return app
    apps = await runtime.registry.apps.list_all(who.project_id)
    if not apps:
        raise NotFound("app", "(default)")
    return apps[0]


async def device_app_id(runtime: Runtime, who: Caller, device_id: str) -> str:
    """The resource space of the caller's device; NotFound (IOTDA.014000) otherwise."""
    return (await runtime.registry.devices.get(who.project_id, device_id)).app_id


async def app_names(runtime: Runtime, who: Caller) -> dict[str, str]:
    """The project's resource spaces' names by app id (the `app_name` of responses)."""
    return {app.app_id: app.name for app in await runtime.registry.apps.list_all(who.project_id)}
