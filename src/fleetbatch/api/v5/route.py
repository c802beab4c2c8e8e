"""What every v5 operation goes through: the AK/SK check, IoTDA error bodies, `X-Request-Id`.

`V5Route` wraps each endpoint: the request is authenticated before the endpoint runs (its body
read once and hashed as received), and whatever is raised becomes IoTDA's body
`{"error_code", "error_msg"}` with the documented HTTP status (spec: iotda-v5 §3). Every
response, good or bad, carries a fresh `X-Request-Id`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from fleetbatch.api.app import get_runtime
from fleetbatch.api.v5 import wire
from fleetbatch.domain import signing
from fleetbatch.domain.errors import AuthFailed, FleetbatchError, InvalidInput
from fleetbatch.runtime import Runtime

log = logging.getLogger("fleetbatch.api.v5")
REQUEST_ID_HEADER = "X-Request-Id"
MAX_INSTANCE_ID = 36


@dataclass(frozen=True, slots=True)
class Caller:
    """Who signed a request: the access key and the project it is bound to."""

    access_key: str
    project_id: str


class WireError(FleetbatchError):
    """An answer the dialect gives exactly: HTTP status, IoTDA code and message."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


def new_request_id() -> str:
    """32 hex digits, the shape of Huawei Cloud request ids."""
    return secrets.token_hex(16)


def error_body(status: int, code: str, message: str, request_id: str) -> JSONResponse:
    """IoTDA's error response."""
    return JSONResponse(
        {"error_code": code, "error_msg": message},
        status_code=status,
        headers={REQUEST_ID_HEADER: request_id},
    )


def render_error(exc: Exception, request_id: str) -> JSONResponse:
    """The IoTDA response for anything an endpoint raised."""
    if isinstance(exc, WireError):
        return error_body(exc.status, exc.error_code, exc.message, request_id)
    if isinstance(exc, FleetbatchError):
        status, code, prefix = wire.error_for(exc)
        return error_body(status, code, f"{prefix} {exc.message}", request_id)
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc, request_id)
    if isinstance(exc, HTTPException):
        code = wire.NOT_FOUND[1] if exc.status_code == 404 else wire.BAD_REQUEST[1]
        return error_body(exc.status_code, code, str(exc.detail), request_id)
    log.exception("v5.internal_error", extra={"request_id": request_id})
    status, code, message = wire.INTERNAL
    return error_body(status, code, message, request_id)


def _validation_error(exc: RequestValidationError, request_id: str) -> JSONResponse:
    """A request that does not fit the wire schema: the first error names its field."""
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    field = ".".join(location) or "body"
    if first.get("type") in ("json_invalid", "model_attributes_type") or field == "body":
        status, code, prefix = wire.BAD_REQUEST
    else:
        status, code, prefix = wire.FIELD_CODES.get(location[-1], wire.INVALID_INPUT)
    return error_body(status, code, f"{prefix} {field}: {first.get('msg', 'invalid')}", request_id)


class V5Route(APIRoute):
    """An IoTDA v5 operation: signed, scoped to its project, answered in IoTDA's shapes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def signed_handler(request: Request) -> Response:
            request_id = new_request_id()
            try:
                request.state.v5_caller = await authenticate(get_runtime(request), request)
                response = await handler(request)
            except Exception as exc:
                # every failure becomes IoTDA's body; unexpected ones are logged in full
                response = render_error(exc, request_id)
            response.headers[REQUEST_ID_HEADER] = request_id
            return response

        return signed_handler


async def authenticate(runtime: Runtime, request: Request) -> Caller:
    """Check the AK/SK signature, its freshness and the project; AuthFailed otherwise."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthFailed("the request is not signed (no Authorization header)")
    auth = signing.parse_authorization(header)
    project_id, secret_key = await runtime.registry.apps.secret_key_for(auth.access_key)
    headers = {name: value for name, value in request.headers.items()}
    # a multipart upload is signed UNSIGNED-PAYLOAD: its body is left to the form parser
    unsigned = headers.get(signing.CONTENT_SHA256_HEADER) == signing.UNSIGNED_PAYLOAD
    body = b"" if unsigned else await request.body()
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    received = signing.SignedRequest(
        method=request.method,
        raw_path=path,
        raw_query=request.scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=body,
    )
    signing.verify(received, auth, secret_key, runtime.clock.now_ms())
    # the key acts only in its own project, whatever the path or X-Project-Id say
    if request.path_params.get("project_id") != project_id:
        raise AuthFailed("the project in the path is not the access key's project")
    declared = headers.get("x-project-id")
    if declared is not None and declared != project_id:
        raise AuthFailed("X-Project-Id is not the access key's project")
    instance_id = headers.get("instance-id")
    if instance_id is not None and not 1 <= len(instance_id) <= MAX_INSTANCE_ID:
        raise InvalidInput("Instance-Id", f"must be 1 to {MAX_INSTANCE_ID} characters")
    return Caller(auth.access_key, project_id)


def caller(request: Request) -> Caller:
    """The authenticated caller (a dependency for v5 endpoints)."""
    found: Caller = request.state.v5_caller
    return found
