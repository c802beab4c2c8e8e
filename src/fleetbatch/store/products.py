"""Products (device models)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import ColumnElement, Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetbatch.domain.registry import Page, Product
from fleetbatch.store.paging import PageRequest, fetch_page
from fleetbatch.store.schema import devices, products


def _product(row: Row[tuple[object, ...]]) -> Product:
    m = row._mapping
    return Product(
        product_id=m["product_id"],
        project_id=m["project_id"],
        app_id=m["app_id"],
        name=m["name"],
        device_type=m["device_type"],
        protocol_type=m["protocol_type"],
        data_format=m["data_format"],
        manufacturer_id=m["manufacturer_id"],
        manufacturer_name=m["manufacturer_name"],
        model=m["model"],
        industry=m["industry"],
        description=m["description"],
        service_capabilities=json.loads(m["service_capabilities"]),
        created_at_ms=m["created_at"],
    )


async def insert_product(conn: AsyncConnection, product: Product) -> None:
    """Add a product."""
    await conn.execute(
        products.insert().values(
            product_id=product.product_id,
            project_id=product.project_id,
            app_id=product.app_id,
            name=product.name,
            device_type=product.device_type,
            protocol_type=product.protocol_type,
            data_format=product.data_format,
            manufacturer_id=product.manufacturer_id,
            manufacturer_name=product.manufacturer_name,
            model=product.model,
            industry=product.industry,
            description=product.description,
            service_capabilities=json.dumps(product.service_capabilities),
            created_at=product.created_at_ms,
        )
    )


async def product_exists(conn: AsyncConnection, product_id: str) -> bool:
    """True when any project has a product with this id (ids are global)."""
    query = select(products.c.pk).where(products.c.product_id == product_id)
    return (await conn.execute(query)).first() is not None


async def get_product(conn: AsyncConnection, product_id: str) -> Product | None:
    """The product, or None."""
    query = select(products).where(products.c.product_id == product_id)
    row = (await conn.execute(query)).first()
    return None if row is None else _product(row)


async def find_product_by_name(conn: AsyncConnection, app_id: str, name: str) -> Product | None:
    """The app's oldest product with this name, or None."""
    query = (
        select(products)
        .where(products.c.app_id == app_id, products.c.name == name)
        .order_by(products.c.pk)
        .limit(1)
    )
    row = (await conn.execute(query)).first()
    return None if row is None else _product(row)


async def list_products(
    conn: AsyncConnection,
    project_id: str,
    page: PageRequest,
    *,
    app_id: str | None = None,
    name: str | None = None,
) -> Page[Product]:
    """A page of the project's products, newest first."""
    where: list[ColumnElement[bool]] = [products.c.project_id == project_id]
    if app_id is not None:
        where.append(products.c.app_id == app_id)
    if name is not None:
        where.append(products.c.name == name)
    rows, count, marker = await fetch_page(conn, select(products), products.c.pk, where, page)
    return Page(items=[_product(row) for row in rows], count=count, marker=marker)


async def update_product(conn: AsyncConnection, product_id: str, values: dict[str, Any]) -> None:
    """Change the given columns of a product."""
    if "service_capabilities" in values:
        values = {**values, "service_capabilities": json.dumps(values["service_capabilities"])}
    await conn.execute(products.update().where(products.c.product_id == product_id).values(values))


async def count_product_devices(conn: AsyncConnection, product_id: str) -> int:
    """How many devices belong to the product."""
    query = select(func.count()).where(devices.c.product_id == product_id)
    return int((await conn.execute(query)).scalar_one())


async def delete_product(conn: AsyncConnection, product_id: str) -> None:
    """Remove a product row."""
    await conn.execute(products.delete().where(products.c.product_id == product_id))
