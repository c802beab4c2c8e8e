"""The legacy OceanConnect northbound dialect (`/iocm/app/...`), spec: oceanconnect-legacy.

Routers: `sec` (login, refresh, logout), `batch` (batch tasks), `commands` (single-device
commands). Every route answers failures with the legacy error body (`errors`), checks
the caller (`common.authenticate`) and reads its input leniently, as the legacy SDKs need.
"""

from __future__ import annotations

from fastapi import APIRouter

from fleetbatch.api.legacy import batch, commands, sec


def legacy_router() -> APIRouter:
    """Every legacy route."""
    router = APIRouter()
    router.include_router(sec.router)
    router.include_router(batch.router)
    router.include_router(commands.router)
    return router


__all__ = ["legacy_router"]
