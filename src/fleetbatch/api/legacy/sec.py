"""`/iocm/app/sec/v1.1.0`: login, refreshToken, logout (spec: oceanconnect-legacy §1)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request, Response

from fleetbatch.api.legacy.common import LegacyRoute, json_response, mapped, tokens_of
from fleetbatch.api.legacy.errors import Api, fail, translate
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


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise fail(Api.AUTH, 400, "100022", f"{name} is required")
    return value


@router.post("/login")
async def login(request: Request) -> Response:
    """Form `appId` + `secret` → accessToken (3600 s), refreshToken; 401/100208 otherwise."""
    fields = await _fields(request)
    app_id, secret = _text(fields, "appId"), _text(fields, "secret")
    with mapped(Api.AUTH):
        issued = await tokens_of(request).login(app_id, secret)
    return json_response(_token_body(issued))


@router.post("/refreshToken")
async def refresh_token(request: Request) -> Response:
    """`{appId, secret, refreshToken}` → new tokens; the refresh token is spent."""
    fields = await _fields(request)
    app_id, secret = _text(fields, "appId"), _text(fields, "secret")
    refresh = _text(fields, "refreshToken")
    try:
        issued = await tokens_of(request).refresh(app_id, secret, refresh)
    except TokenExpired:
        raise fail(Api.AUTH, 401, "100006", "the refresh token is invalid or expired") from None
    except FleetbatchError as error:
        raise translate(Api.AUTH, error) from error
    return json_response(_token_body(issued))


@router.post("/logout")
async def logout(request: Request) -> Response:
    """`{accessToken}` ends that token and its refresh token; 204 (no body)."""
    fields = await _fields(request)
    await tokens_of(request).logout(_text(fields, "accessToken"))
    return Response(status_code=204)
