"""What every registry service shares: its dependencies and the lookups that raise NotFound."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.clock import Clock
from fleetbatch.domain.errors import NotFound
from fleetbatch.domain.registry import (
    App,
    Device,
    DeviceGroup,
    Product,
)
from fleetbatch.store import apps as app_rows
from fleetbatch.store import devices as device_rows
from fleetbatch.store import groups as group_rows
from fleetbatch.store import products as product_rows
from fleetbatch.store.database import Store
from fleetbatch.vault import SecretVault


class Service:
    """A registry service: each public method is one unit of work in one transaction."""

    def __init__(self, store: Store, vault: SecretVault, clock: Clock) -> None:
        self.store = store
        self.vault = vault
        self.clock = clock


async def require_app(conn: AsyncConnection, app_id: str) -> App:
    """The app; NotFound otherwise."""
    app = await app_rows.get_app(conn, app_id)
    if app is None:
        raise NotFound("app", app_id)
    return app


async def require_product(conn: AsyncConnection, project_id: str, product_id: str) -> Product:
    """The project's product; NotFound otherwise."""
    product = await product_rows.get_product(conn, product_id)
    if product is None or product.project_id != project_id:
        raise NotFound("product", product_id)
    return product


async def require_device(conn: AsyncConnection, project_id: str, device_id: str) -> Device:
    """The project's device; NotFound otherwise."""
    device = await device_rows.get_device(conn, device_id)
    if device is None or device.project_id != project_id:
        raise NotFound("device", device_id)
    return device


async def require_group(conn: AsyncConnection, project_id: str, group_id: str) -> DeviceGroup:
    """The project's group; NotFound otherwise."""
    group = await group_rows.get_group(conn, group_id)
    if group is None or group.project_id != project_id:
        raise NotFound("group", group_id)
    return group
