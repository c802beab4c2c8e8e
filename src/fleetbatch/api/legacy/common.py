"""What every legacy route shares: error answers, the caller check, lenient input reading.

The legacy SDKs are sloppy clients (spec §0, §7): they send `?&a=b` and bare `?`, leave
query values unencoded, put `Content-Type: application/json` on GETs, write `bearer` in
any case and send explicit `null` for every unset field. Routes therefore read the raw
request themselves (no FastAPI parameter validation, whose 422 bodies no legacy client
understands) and answer every failure with the legacy error body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from fleetbatch.api.legacy.errors import (
    APP_NOT_FOUND,
    INTERNAL,
    INVALID_TOKEN,
    NOT_AUTHORIZED,
    THROTTLED,
    Api,
    LegacyError,
    fail,
    translate,
)
from fleetbatch.api.legacy.schemas import first_problem
from fleetbatch.domain.errors import AuthFailed, FleetbatchError, LimitExceeded, NotFound
from fleetbatch.domain.legacy import MAX_APP_ID
from fleetbatch.domain.registry import App
from fleetbatch.registry.tokens import TokenService
from fleetbatch.runtime import Runtime

log = logging.getLogger(__name__)


class LegacyRoute(APIRoute):
    """A route whose every failure is a legacy error body (unexpected ones: 500 / 50252)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except LegacyError as error:
                return error.response()
            except Exception:
                log.exception("legacy.internal_error path=%s", request.url.path)
                return fail(Api.QUERY, 500, INTERNAL).response()

        return answer


@contextmanager
def mapped(api: Api) -> Iterator[None]:
    """Errors raised by the services inside become `api`'s legacy answers."""
    try:
        yield
    except FleetbatchError as error:
        raise translate(api, error) from error


def runtime_of(request: Request) -> Runtime:
    """The runtime the app serves."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def tokens_of(request: Request) -> TokenService:
    """The app's token service (one per app, made on first use)."""
    state = request.app.state
    service: TokenService | None = getattr(state, "legacy_tokens", None)
    if service is None:
        runtime = runtime_of(request)
        service = TokenService(runtime.store, runtime.vault, runtime.clock)
        state.legacy_tokens = service
    return service


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls (the `app_key` app, token checked) and for which app it acts."""

    app: App
    acting_app_id: str

    @property
    def project_id(self) -> str:
        return self.app.project_id


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, the scheme in any case."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(request: Request, api: Api, app_id: Any = None) -> Caller:
    """Check `app_key` + token (403/1010005), count the call (403/1010009), and resolve
    `appId` as `act_for` does."""
    app_key = request.headers.get("app_key", "").strip()
    token = bearer_token(request)
    if not app_key or token is None:
        raise fail(api, 403, INVALID_TOKEN, "app_key and Authorization: Bearer are required")
    try:
        app = await tokens_of(request).admit(app_key, token)
    except LimitExceeded as error:
        raise fail(api, 403, THROTTLED, error.message) from None
    except (AuthFailed, NotFound):
        raise fail(api, 403, INVALID_TOKEN) from None
    return await act_for(request, api, Caller(app, app.app_id), app_id)


async def act_for(request: Request, api: Api, caller: Caller, app_id: Any) -> Caller:
    """The caller acting for `app_id` (query or body; empty or null: itself).

    403/100203 when that app does not exist, 403/100217 when it did not authorize the
    caller; a non-text or over-long appId is invalid input.
    """
    if app_id is None or app_id == "":
        return caller
    if not isinstance(app_id, str) or len(app_id) > MAX_APP_ID:
        raise fail(api, 400, "50400" if api is Api.CREATE else "100022", "appId is invalid")
    if app_id == caller.app.app_id:
        return caller
    registry = runtime_of(request).registry
    try:
        await registry.apps.get(app_id)
    except NotFound:
        raise fail(api, 403, APP_NOT_FOUND, f"app {app_id}") from None
    if not await registry.apps.may_act_for(caller.app.app_id, app_id):
        raise fail(api, 403, NOT_AUTHORIZED, f"app {app_id} has not authorized the caller")
    return Caller(caller.app, app_id)


def query_value(request: Request, name: str) -> str | None:
    """A query parameter; empty means absent (`?&a=` from the legacy SDKs)."""
    value = request.query_params.get(name)
    return value if value else None


def query_int(
    request: Request, name: str, api: Api, code: str, *, default: int, low: int, high: int
) -> int:
    """An integer query parameter within [low, high]; `code` (HTTP 400) otherwise."""
    raw = query_value(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise fail(api, 400, code, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise fail(api, 400, code, f"{name} must be {low} to {high}")
    return value


async def json_body(request: Request, api: Api, code: str) -> dict[str, Any]:
    """The request's JSON object; `code` (HTTP 400) for anything else."""
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise fail(api, 400, code, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise fail(api, 400, code, "the body must be a JSON object")
    return body


W = TypeVar("W", bound=BaseModel)


def read_wire(model: type[W], data: Any, api: Api, code: str, *, where: str = "") -> W:
    """`data` read as the wire model; `code` (HTTP 400) naming the first problem otherwise.

    `where` prefixes the problem's field path (a part of the body read on its own).
    """
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise fail(api, 400, code, where + first_problem(error)) from None


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON answer (orjson: keys as given, no spaces)."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")
