"""The Huawei IoTDA v5 northbound dialect (`/v5/iot/{project_id}/...`, AK/SK signed).

Each resource group is one router module; `router()` assembles them under the project path.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from fleetbatch.api.v5 import (
    batchtask_files,
    batchtasks,
    commands,
    devices,
    groups,
    messages,
    products,
    shadows,
)
from fleetbatch.api.v5.common import project_scope
from fleetbatch.api.v5.route import error_body, new_request_id
from fleetbatch.api.v5.wire import NOT_FOUND

PREFIX = "/v5/iot/{project_id}"


def install(app: FastAPI) -> None:
    """Add the v5 operations to `app`, and IoTDA's 404 body for unknown v5 paths."""
    v5 = APIRouter(prefix=PREFIX, dependencies=[Depends(project_scope)])
    for module in (
        batchtasks,
        batchtask_files,
        products,
        devices,
        groups,
        shadows,
        commands,
        messages,
    ):
        v5.include_router(module.router)
    app.include_router(v5)
    app.add_api_route(
        "/v5/{path:path}",
        unknown_operation,
        methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
        include_in_schema=False,
    )


async def unknown_operation(request: Request) -> JSONResponse:
    """No v5 operation at this path (or not with this method)."""
    status, code, _ = NOT_FOUND
    message = f"No operation {request.method} {request.url.path}."
    return error_body(status, code, message, new_request_id())
