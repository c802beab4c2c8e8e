"""`/iocm/app/sec/v1.1.0`: login, refreshToken, logout (spec: oceanconnect-legacy §1)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request, Response

from fleetbatch.api.legacy.common import (
    LegacyRoute,
    json_response,
    mapped,
    read_wire,
    tokens_of,
)
from fleetbatch.api.legacy.errors import Api, fail, translate
from fleetbatch.api.legacy.schemas import LoginIn, LogoutIn, RefreshTokenIn, openapi_body
from fleetbatch.domain.errors import FleetbatchError
from fleetbatch.registry.tokens import IssuedTokens, TokenExpired

router = APIRouter(prefix="/iocm/app/sec/v1.1.0", route_class=LegacyRoute)


def _token_body(issued: IssuedTokens) -> dict[str, Any]:
    # key order and values as the live platform sent them (spec §1.1)
    return {
        "accessToken": issued.access_token,
        "tokenType": "bearer",
        "refreshToken": issued.refresh_token,
        "expiresIn": issued.expires_in_s,
        "scope": "default",
    }


async def _fields(request: Request) -> dict[str, Any]:
    """Form fields (login's documented encoding) or a JSON object (refresh, logout)."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    if "json" in content_type or raw.lstrip().startswith(b"{"):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise fail(Api.AUTH, 400, "100022", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise fail(Api.AUTH, 400, "100022", "the body must be a JSON object")
        return body
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


# every sec call takes either encoding; login is documented as a form, the others as JSON
_FORM_FIRST = ("application/x-www-form-urlencoded", "application/json")
_JSON_FIRST = _FORM_FIRST[::-1]


@router.post("/login", openapi_extra=openapi_body(LoginIn, _FORM_FIRST))
async def login(request: Request) -> Response:
    """Form `appId` + `secret` → accessToken (3600 s), refreshToken; 401/100208 otherwise."""
    wire = read_wire(LoginIn, await _fields(request), Api.AUTH, "100022")
    with mapped(Api.AUTH):
        issued = await tokens_of(request).login(wire.app_id, wire.secret)
    return json_response(_token_body(issued))


@router.post("/refreshToken", openapi_extra=openapi_body(RefreshTokenIn, _JSON_FIRST))
async def refresh_token(request: Request) -> Response:
    """`{appId, secret, refreshToken}` → new tokens; the refresh token is spent."""
    wire = read_wire(RefreshTokenIn, await _fields(request), Api.AUTH, "100022")
    try:
        issued = await tokens_of(request).refresh(wire.app_id, wire.secret, wire.refresh_token)
    except TokenExpired:
        raise fail(Api.AUTH, 401, "100006", "the refresh token is invalid or expired") from None
    except FleetbatchError as error:
        raise translate(Api.AUTH, error) from error
    return json_response(_token_body(issued))


@router.post("/logout", openapi_extra=openapi_body(LogoutIn, _JSON_FIRST))
async def logout(request: Request) -> Response:
    """`{accessToken}` ends that token and its refresh token; 204 (no body)."""
    wire = read_wire(LogoutIn, await _fields(request), Api.AUTH, "100022")
    await tokens_of(request).logout(wire.access_token)
    return Response(status_code=204)
