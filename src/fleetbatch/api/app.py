"""The ASGI app: the runtime on `app.state`, the routers, and `/health`.

The app does not start or stop anything itself: the server runner owns the listeners and
the runtime, and tells the app which phase it is in, so `/health` answers ok only while
every listener accepts.
"""

from __future__ import annotations

import enum

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleetbatch import __version__
from fleetbatch.runtime import Runtime


class Phase(enum.StrEnum):
    """Where the server is in its life; the value is what `/health` reports."""

    STARTING = "starting"
    READY = "ok"
    STOPPING = "stopping"


def create_app(runtime: Runtime) -> FastAPI:
    """The API over an opened runtime; it reports `starting` until `set_phase(READY)`."""
    app = FastAPI(
        title="fleetbatch",
        version=__version__,
        description="Batch tasks over device fleets. IoTDA v5 operations live under "
        "`/v5/iot/{project_id}` and are signed with AK/SK as huaweicloudsdkcore signs.",
    )
    app.state.runtime = runtime
    app.state.phase = Phase.STARTING
    app.add_api_route("/health", health, methods=["GET"], include_in_schema=False)
    app.state.channel = None
    app.state.presence = None
    app.state.authenticator = None
    # the legacy OceanConnect dialect (spec: oceanconnect-legacy), on both listeners
    from fleetbatch.api.legacy import legacy_router

    app.include_router(legacy_router())
    if runtime.settings.broker:
        # the external broker asks these who may connect, publish and subscribe
        from fleetbatch.api.emqx import router as emqx_router

        app.include_router(emqx_router)
    # the IoTDA v5 dialect; imported here: its modules import this one for get_runtime
    from fleetbatch.api import v5

    v5.install(app)
    return app


def set_phase(app: FastAPI, phase: Phase) -> None:
    """Tell the app (and so `/health`) where the server is."""
    app.state.phase = phase


def get_runtime(request: Request) -> Runtime:
    """The runtime the app was created over (a FastAPI dependency for routers)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def health(request: Request) -> JSONResponse:
    """200 `{"status": "ok"}` when ready; 503 with `starting` or `stopping` otherwise."""
    phase: Phase = request.app.state.phase
    status_code = 200 if phase is Phase.READY else 503
    return JSONResponse({"status": phase.value}, status_code=status_code)
