"""Products over v5 (spec: iotda-v5 §5.1): a thin mapping over `registry.products`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from fleetbatch.api.v5.common import (
    EXCLUDE_NONE,
    ID_PATTERN,
    PageOut,
    Paging,
    RuntimeDep,
    Signed,
    app_names,
    app_of,
    paged,
)
from fleetbatch.api.v5.route import V5Route
from fleetbatch.domain.errors import InvalidInput, NotFound
from fleetbatch.domain.registry import NewProduct, Product
from fleetbatch.domain.timefmt import to_compact

router = APIRouter(route_class=V5Route, tags=["Products"])

ProtocolType = Literal[
    "MQTT", "CoAP", "HTTP", "HTTPS", "Modbus", "ONVIF", "OPC-UA", "OPC-DA", "Other", "TCP", "UDP"
]
ProductId = Annotated[str, Path(max_length=36, pattern=ID_PATTERN)]
MAX_SERVICES = 500


class ProductFields(BaseModel):
    """What AddProduct and UpdateProduct share."""

    name: str | None = Field(None, min_length=1, max_length=64)
    device_type: str | None = Field(None, min_length=1, max_length=32)
    protocol_type: ProtocolType | None = None
    data_format: Literal["json", "binary"] | None = None
    service_capabilities: list[dict[str, Any]] | None = Field(None, max_length=MAX_SERVICES)
    manufacturer_name: str | None = Field(None, max_length=32)
    industry: str | None = Field(None, max_length=64)
    description: str | None = Field(None, max_length=128)
    app_id: str | None = Field(None, max_length=36, pattern=ID_PATTERN)


class AddProduct(ProductFields):
    """AddProduct body."""

    product_id: str | None = Field(None, max_length=36, pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=64)
    device_type: str = Field(min_length=1, max_length=32)
    protocol_type: ProtocolType
    data_format: Literal["json", "binary"]
    service_capabilities: list[dict[str, Any]] = Field(max_length=MAX_SERVICES)


class ProductSummaryWire(BaseModel):
    """ProductSummary (list items)."""

    app_id: str
    app_name: str | None = None
    product_id: str
    name: str
    device_type: str
    protocol_type: str
    data_format: str
    manufacturer_name: str | None = None
    industry: str | None = None
    description: str | None = None
    create_time: str


class ProductWire(ProductSummaryWire):
    """A product with its service capabilities."""

    service_capabilities: list[dict[str, Any]]


class ListProductsWire(BaseModel):
    """ListProducts: one page of products, newest first."""

    products: list[ProductSummaryWire]
    page: PageOut


def product_wire(product: Product, names: dict[str, str], *, full: bool = True) -> dict[str, Any]:
    """A product as IoTDA's Product (or ProductSummary without `full`)."""
    wire: dict[str, Any] = {
        "app_id": product.app_id,
        "app_name": names.get(product.app_id),
        "product_id": product.product_id,
        "name": product.name,
        "device_type": product.device_type,
        "protocol_type": product.protocol_type,
        "data_format": product.data_format,
        "manufacturer_name": product.manufacturer_name,
        "industry": product.industry,
        "description": product.description,
        "create_time": to_compact(product.created_at_ms),
    }
    if full:
        wire["service_capabilities"] = product.service_capabilities
    return wire


def _in_app(product: Product, app_id: str | None) -> Product:
    if app_id is not None and product.app_id != app_id:
        raise NotFound("product", product.product_id)
    return product


AppQuery = Annotated[str | None, Query(max_length=36, pattern=ID_PATTERN)]


@router.post(
    "/products",
    status_code=201,
    response_model=ProductWire,
    summary="CreateProduct",
    **EXCLUDE_NONE,
)
async def create_product(body: AddProduct, runtime: RuntimeDep, who: Signed) -> dict[str, Any]:
    """Create a product (device model) in a resource space."""
    app = await app_of(runtime, who, body.app_id)
    spec = NewProduct(
        name=body.name,
        device_type=body.device_type,
        protocol_type=body.protocol_type,
        data_format=body.data_format,
        product_id=body.product_id,
        manufacturer_name=body.manufacturer_name,
        industry=body.industry,
        description=body.description,
        service_capabilities=body.service_capabilities,
    )
    product = await runtime.registry.products.create(app.app_id, spec)
    return product_wire(product, {app.app_id: app.name})


@router.get(
    "/products/{product_id}", response_model=ProductWire, summary="ShowProduct", **EXCLUDE_NONE
)
async def show_product(
    product_id: ProductId, runtime: RuntimeDep, who: Signed, app_id: AppQuery = None
) -> dict[str, Any]:
    """One product of the project."""
    product = _in_app(await runtime.registry.products.get(who.project_id, product_id), app_id)
    return product_wire(product, await app_names(runtime, who))


@router.get("/products", response_model=ListProductsWire, summary="ListProducts", **EXCLUDE_NONE)
async def list_products(
    runtime: RuntimeDep,
    who: Signed,
    paging: Paging,
    app_id: AppQuery = None,
    product_name: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The project's products, newest first."""
    page = await runtime.registry.products.page(
        who.project_id, paging, app_id=app_id, name=product_name
    )
    names = await app_names(runtime, who)
    return paged("products", page, lambda p: product_wire(p, names, full=False))


@router.put(
    "/products/{product_id}", response_model=ProductWire, summary="UpdateProduct", **EXCLUDE_NONE
)
async def update_product(
    product_id: ProductId, body: ProductFields, runtime: RuntimeDep, who: Signed
) -> dict[str, Any]:
    """Change a product's fields; those not given stay as they are."""
    _in_app(await runtime.registry.products.get(who.project_id, product_id), body.app_id)
    changes = body.model_dump(exclude_none=True, exclude={"app_id"})
    if not changes:
        raise InvalidInput("body", "names no field to change")
    product = await runtime.registry.products.update(who.project_id, product_id, **changes)
    return product_wire(product, await app_names(runtime, who))


@router.delete(
    "/products/{product_id}", status_code=204, response_class=Response, summary="DeleteProduct"
)
async def delete_product(
    product_id: ProductId, runtime: RuntimeDep, who: Signed, app_id: AppQuery = None
) -> Response:
    """Delete a product that no device uses."""
    _in_app(await runtime.registry.products.get(who.project_id, product_id), app_id)
    await runtime.registry.products.delete(who.project_id, product_id)
    return Response(status_code=204)
