"""Products: the device models devices are registered under."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fleetbatch.domain.errors import AlreadyExists, Conflict, InvalidInput
from fleetbatch.domain.ids import (
    new_object_id,
)
from fleetbatch.domain.registry import (
    App,
    NewProduct,
    Page,
    Product,
)
from fleetbatch.registry.common import (
    Service,
    require_app,
    require_product,
)
from fleetbatch.store import products as product_rows
from fleetbatch.store.paging import PageRequest

DEFAULT_PRODUCT_NAME = "fleetbatch-default"


class ProductService(Service):
    """Products, with ids global across projects."""

    async def create(self, app_id: str, spec: NewProduct) -> Product:
        """Create a product in the app; its id is generated unless given."""
        spec.validate()
        async with self.store.write() as conn:
            app = await require_app(conn, app_id)
            product_id = spec.product_id or new_object_id()
            if await product_rows.product_exists(conn, product_id):
                raise AlreadyExists("product", product_id)
            product = _product_from_spec(spec, product_id, app, self.clock.now_ms())
            await product_rows.insert_product(conn, product)
        return product

    async def default(self, app_id: str) -> Product:
        """The app's default product, created on first use (bulk device creation)."""
        async with self.store.read() as conn:
            found = await product_rows.find_product_by_name(conn, app_id, DEFAULT_PRODUCT_NAME)
        if found is not None:
            return found
        spec = NewProduct(
            name=DEFAULT_PRODUCT_NAME,
            device_type="Default",
            manufacturer_id="fleetbatch",
            manufacturer_name="fleetbatch",
            model="simulated",
            description="Created by fleetbatch for devices registered without a product.",
        )
        return await self.create(app_id, spec)

    async def get(self, project_id: str, product_id: str) -> Product:
        """The project's product; NotFound otherwise."""
        async with self.store.read() as conn:
            return await require_product(conn, project_id, product_id)

    async def page(
        self,
        project_id: str,
        page: PageRequest | None = None,
        *,
        app_id: str | None = None,
        name: str | None = None,
    ) -> Page[Product]:
        """A page of the project's products, newest first."""
        async with self.store.read() as conn:
            return await product_rows.list_products(
                conn, project_id, page or PageRequest(), app_id=app_id, name=name
            )

    async def update(self, project_id: str, product_id: str, **changes: Any) -> Product:
        """Change a product's descriptive fields (name, device_type, manufacturer...)."""
        allowed = set(NewProduct.__dataclass_fields__) - {"product_id"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidInput(sorted(unknown)[0], "cannot be changed")
        async with self.store.write() as conn:
            current = await require_product(conn, project_id, product_id)
            kept = {name: getattr(current, name) for name in allowed - set(changes)}
            NewProduct(**kept, **changes).validate()
            await product_rows.update_product(conn, product_id, changes)
        return replace(current, **changes)

    async def delete(self, project_id: str, product_id: str) -> None:
        """Remove a product; Conflict while devices of it exist."""
        async with self.store.write() as conn:
            await require_product(conn, project_id, product_id)
            if await product_rows.count_product_devices(conn, product_id):
                raise Conflict(f"product {product_id!r} still has devices")
            await product_rows.delete_product(conn, product_id)


def _product_from_spec(spec: NewProduct, product_id: str, app: App, now: int) -> Product:
    return Product(
        product_id=product_id,
        project_id=app.project_id,
        app_id=app.app_id,
        name=spec.name,
        device_type=spec.device_type,
        protocol_type=spec.protocol_type,
        data_format=spec.data_format,
        manufacturer_id=spec.manufacturer_id,
        manufacturer_name=spec.manufacturer_name,
        model=spec.model,
        industry=spec.industry,
        description=spec.description,
        service_capabilities=list(spec.service_capabilities),
        created_at_ms=now,
    )
