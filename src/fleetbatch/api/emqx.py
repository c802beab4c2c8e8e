"""The HTTP endpoints an EMQX 5 cluster calls in external-broker mode (docs/emqx.md).

- `POST /emqx/auth`: EMQX's HTTP authenticator. Devices are checked exactly as the built-in
  transport checks them (`DeviceAuthenticator`); the platform's own account is a superuser.
- `POST /emqx/acl`: EMQX's HTTP authorizer: a device publishes and subscribes only under its
  own `$oc/devices/{device_id}/`.
- `POST /emqx/events`: a webhook (rule engine HTTP action) with `client.connected` and
  `client.disconnected` events, handed to the presence sink at `app.state.presence`.

Bodies may be JSON or form-encoded. A body fleetbatch cannot read is answered 200
`{"result": "deny"}`, never an error: EMQX treats any other status as "ignore" and would
move on to its next authenticator, or let an authorizer with `no_match = allow` grant it.
When `broker_password` is set, every call must carry `Authorization: Bearer <it>` (401
otherwise), so only the broker can ask.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Annotated, Any, Protocol
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from fleetbatch.api.app import get_runtime
from fleetbatch.devices.auth import parse_client_id
from fleetbatch.devices.authenticator import DeviceAuthenticator
from fleetbatch.devices.topics import may_publish, may_subscribe
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
SHARED_PREFIXES = ("$share/", "$queue/")
# a disconnect because the same client id connected again: the device is still online
_REPLACED_REASONS = frozenset({"takenover", "takeovered", "discarded"})


class PresenceSink(Protocol):
    """Where connects and disconnects go (the presence recorder)."""

    def record(self, device_id: str, online: bool, at_ms: int) -> None: ...


def _require_broker(request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]) -> None:
    """401 unless the caller presents the platform's broker password as a bearer token.

    Without a configured password the endpoints serve nobody (503): open, they would let
    anyone who reaches the HTTP port flip devices' presence and try passwords unthrottled.
    """
    password = runtime.settings.broker_password
    if password is None:
        raise HTTPException(
            503,
            "the EMQX endpoints are off: set FLEETBATCH_BROKER_PASSWORD, and send it as "
            "'Authorization: Bearer <password>' from EMQX",
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = password.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise HTTPException(
            401, "the broker's bearer token is missing or wrong", {"WWW-Authenticate": "Bearer"}
        )


router = APIRouter(prefix="/emqx", tags=["emqx"], dependencies=[Depends(_require_broker)])

ALLOW = {"result": "allow"}
DENY = {"result": "deny"}


@router.post("/auth")
async def authenticate(
    request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> JSONResponse:
    """EMQX HTTP authentication: `clientid`, `username`, `password` -> allow or deny."""
    fields = await _fields(request)
    client_id = _text(fields, "clientid")
    username = _text(fields, "username")
    password = _text(fields, "password")
    if client_id is None or username is None or password is None:
        return JSONResponse(DENY)
    settings = runtime.settings
    if username == settings.broker_username:
        if _is_platform_password(settings, password):
            return JSONResponse({"result": "allow", "is_superuser": True})
        log.warning("emqx.platform_auth_denied client_id=%s", client_id)
        return JSONResponse(DENY)
    # the server's authenticator gathers concurrent lookups into one query
    authenticator: DeviceAuthenticator | None = getattr(request.app.state, "authenticator", None)
    if authenticator is None:
        authenticator = DeviceAuthenticator(
            runtime.registry, runtime.clock, tolerance_s=settings.mqtt_timestamp_tolerance_s
        )
    result = await authenticator.authenticate(client_id, username, password.encode())
    if not result.ok:
        log.debug("emqx.auth_denied client_id=%s reason=%s", client_id, result.reason)
        return JSONResponse(DENY)
    return JSONResponse({"result": "allow", "is_superuser": False})


@router.post("/acl")
async def authorize(
    request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> JSONResponse:
    """EMQX HTTP authorization: `clientid`, `username`, `topic`, `action` -> allow or deny."""
    fields = await _fields(request)
    client_id = _text(fields, "clientid")
    username = _text(fields, "username")
    topic = _text(fields, "topic")
    action = _text(fields, "action")
    if client_id is None or username is None or topic is None or action is None:
        return JSONResponse(DENY)
    settings = runtime.settings
    if username == settings.broker_username:
        # only reachable after /emqx/auth accepted the platform's password (a superuser
        # skips authorization anyway); with no password set, that account cannot connect
        return JSONResponse(ALLOW if settings.broker_password is not None else DENY)
    client = parse_client_id(client_id)
    if client is None or client.device_id != username:
        return JSONResponse(DENY)
    if action == "publish":
        allowed = may_publish(username, topic)
    elif action == "subscribe":
        # a device never shares its own topics with other clients
        allowed = not topic.startswith(SHARED_PREFIXES) and may_subscribe(username, topic)
    else:
        allowed = False
    return JSONResponse(ALLOW if allowed else DENY)


@router.post("/events")
async def events(
    request: Request, runtime: Annotated[Runtime, Depends(get_runtime)]
) -> JSONResponse:
    """Presence webhook: `client.connected` / `client.disconnected` events, one or a list.

    Other events, and clients that are not IoTDA devices, are accepted and ignored.
    """
    body = await _body(request)
    sink: PresenceSink | None = getattr(request.app.state, "presence", None)
    # the broker channel's presence handlers (the engine's "deliver when it connects")
    channel = getattr(request.app.state, "channel", None)
    report = getattr(channel, "report_presence", None)
    now_ms = runtime.clock.now_ms()
    for item in body if isinstance(body, list) else [body]:
        change = _presence_change(item, now_ms) if isinstance(item, dict) else None
        if change is None:
            continue
        if sink is not None:
            sink.record(*change)
        if report is not None:
            report(*change)
    return JSONResponse({})


def _presence_change(event: dict[str, Any], now_ms: int) -> tuple[str, bool, int] | None:
    """(device_id, online, at_ms) of a connect or disconnect of a device; None otherwise."""
    # EMQX 5 rule events say "client.connected"; the 4.x web hook said "client_connected"
    name = event.get("event", event.get("action"))
    if not isinstance(name, str):
        return None
    name = name.replace("_", ".")
    if name == "client.connected":
        online, at_field = True, "connected_at"
    elif name == "client.disconnected":
        if event.get("reason") in _REPLACED_REASONS:
            return None
        online, at_field = False, "disconnected_at"
    else:
        return None
    client_id = event.get("clientid")
    client = parse_client_id(client_id) if isinstance(client_id, str) else None
    if client is None:
        return None  # not an IoTDA device (the platform's own client, a tool)
    username = event.get("username")
    if isinstance(username, str) and username != client.device_id:
        return None
    at_ms = event.get(at_field, event.get("timestamp"))
    if not isinstance(at_ms, int) or isinstance(at_ms, bool) or at_ms <= 0:
        at_ms = now_ms
    return client.device_id, online, at_ms


def _is_platform_password(settings: Settings, password: str) -> bool:
    if settings.broker_password is None:
        return False  # no password configured: the platform account is refused
    expected = settings.broker_password.get_secret_value().encode()
    return hmac.compare_digest(password.encode(), expected)


async def _body(request: Request) -> Any:
    """The JSON or form body; None when it is neither, or too large."""
    raw = await request.body()
    if not raw or len(raw) > MAX_BODY_BYTES:
        return None
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            return dict(parse_qsl(raw.decode(), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


async def _fields(request: Request) -> dict[str, Any]:
    body = await _body(request)
    return body if isinstance(body, dict) else {}


def _text(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    return value if isinstance(value, str) else None
