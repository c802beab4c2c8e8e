"""The legacy error body, the seeds' codes and texts, and the families' mapping per call.

Body: `{"error_code": "<digits>", "error_desc": "<text>"}`, both strings (spec §5). The
gateway-level codes (1010005, 1010009) also carry `resultcode`/`resultmsg`, the keys the
live platform used, so clients that re-login on `resultcode` keep working (spec §1.4).
Texts differ per page (S000/S001 "is not existed", S003 "does not exist"): each call
family has its own table, and a wrong-family lookup falls back to the common text.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from fleetbatch.domain.errors import (
    AlreadyExists,
    AuthFailed,
    Conflict,
    FleetbatchError,
    InvalidInput,
    LimitExceeded,
    NotFound,
    Unavailable,
)


class Api(enum.Enum):
    """Which seed's texts a call uses."""

    QUERY = "query"  # S000 queryOneTask, S001 taskDetails
    CREATE = "create"  # S003 createBatchTask
    AUTH = "auth"  # login, refresh, logout
    COMMANDS = "commands"  # device commands v1.4.0


INVALID_TOKEN = "1010005"  # noqa: S105 (an error code, not a secret)
THROTTLED = "1010009"
APP_NOT_FOUND = "100203"
NOT_AUTHORIZED = "100217"
INTERNAL = "50252"

_COMMON = {
    "100019": "Illegal request.",
    "100022": "The input is invalid",
    APP_NOT_FOUND: "The application is not existed.",
    NOT_AUTHORIZED: "The application hasn't been authorized",
    THROTTLED: "app throttle exceed.",
    INVALID_TOKEN: "App_key or access_token is invalid.",
    "105005": "The batchTask is not existed.",
    INTERNAL: "Internal server error.",
    # outside the seeds (spec §1.1, §1.2, §5; unconfirmed texts of public mocks and logs)
    "100208": "AppId or secret is not right.",
    "100006": "Refresh access token failed.",
    "100403": "The device is not existed.",
    "100418": "The deviceData is not existed.",
}
_CREATE = {
    APP_NOT_FOUND: "The application does not exist.",
    "101001": "The resource does not exist.",
    "105001": "The number of batch tasks has reached the upper limit.",
    "105002": "The batch task name exists.",
    "105201": "The tagName and tagValue have been used on the platform.",
    "50400": "An input parameter is invalid.",
    "100028": "The user has no right.",
    NOT_AUTHORIZED: "The application has not been authorized.",
    THROTTLED: "The application calls the API at a frequency that exceeds the flow control "
    "threshold.",
    INVALID_TOKEN: "Invalid access token or application ID.",
    "105202": "The tag does not exist.",
}
TEXTS: Mapping[Api, Mapping[str, str]] = {
    Api.QUERY: _COMMON,
    Api.CREATE: {**_COMMON, **_CREATE},
    Api.AUTH: _COMMON,
    Api.COMMANDS: _COMMON,
}


class LegacyError(Exception):
    """An error answer of the legacy dialect: HTTP status, code and text."""

    def __init__(self, status: int, code: str, desc: str, detail: str | None = None) -> None:
        super().__init__(f"{status} {code} {desc}")
        self.status = status
        self.code = code
        self.desc = desc
        self.detail = detail

    def response(self) -> JSONResponse:
        """The error body with its status."""
        return JSONResponse(error_body(self.code, self.desc, self.detail), self.status)


def error_body(code: str, desc: str, detail: str | None = None) -> dict[str, Any]:
    """`{"error_code", "error_desc"}` (+ `resultcode`/`resultmsg` for gateway codes)."""
    body: dict[str, Any] = {"error_code": code, "error_desc": desc}
    if code in (INVALID_TOKEN, THROTTLED):
        body["resultcode"] = code
        body["resultmsg"] = desc
    if detail:
        # which field or resource; the seeds' text alone never says
        body["error_detail"] = detail
    return body


def fail(api: Api, status: int, code: str, detail: str | None = None) -> LegacyError:
    """The error `code` with the text of `api`'s seed."""
    return LegacyError(status, code, TEXTS[api].get(code, _COMMON.get(code, code)), detail)


# How each error family answers, per call family (spec §5 "fleetbatch mapping"). The most
# specific class wins; `AlreadyExists` is told apart by what already exists (`translate`).
_QUERY_FAMILIES: Mapping[type[FleetbatchError], tuple[int, str]] = {
    InvalidInput: (400, "100022"),
    NotFound: (404, "105005"),
    Conflict: (400, "100022"),
    AlreadyExists: (400, "100022"),
    LimitExceeded: (403, THROTTLED),
    AuthFailed: (403, INVALID_TOKEN),
    Unavailable: (500, INTERNAL),
    FleetbatchError: (500, INTERNAL),
}
FAMILIES: Mapping[Api, Mapping[type[FleetbatchError], tuple[int, str]]] = {
    Api.QUERY: _QUERY_FAMILIES,
    Api.CREATE: {
        **_QUERY_FAMILIES,
        InvalidInput: (400, "50400"),
        NotFound: (200, "101001"),
        Conflict: (400, "50400"),
        AlreadyExists: (400, "105201"),
        LimitExceeded: (200, "105001"),
    },
    Api.AUTH: {**_QUERY_FAMILIES, NotFound: (401, "100208"), AuthFailed: (401, "100208")},
    Api.COMMANDS: {**_QUERY_FAMILIES, NotFound: (404, "100403")},
}


def translate(api: Api, error: FleetbatchError) -> LegacyError:
    """The legacy answer to an error the services raised."""
    if isinstance(error, AlreadyExists) and api is Api.CREATE and error.kind == "task name":
        # S003: a duplicate name is answered with HTTP 200
        return fail(api, 200, "105002", error.message)
    table = FAMILIES[api]
    for cls in type(error).__mro__:
        if cls in table:
            status, code = table[cls]
            return fail(api, status, code, error.message)
    return fail(api, 500, INTERNAL)
