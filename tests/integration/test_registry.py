"""The registry services on a real store: SQLite and PostgreSQL (each test runs on both)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from fleetbatch.domain.errors import AlreadyExists, AuthFailed, Conflict, InvalidInput, NotFound
from fleetbatch.domain.registry import DeviceStatus, NewDevice, NewProduct
from fleetbatch.registry.devices import BULK_CHUNK, new_node_ids
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from fleetbatch.store.paging import PageRequest
from fleetbatch.store.schema import access_keys, apps, devices, group_members
from fleetbatch.vault import VaultKeyError


async def count_rows(runtime: Runtime, table: object, *where: object) -> int:
    async with runtime.store.read() as conn:
        query = select(func.count()).select_from(table)  # type: ignore[arg-type]
        return int((await conn.execute(query.where(*where))).scalar_one())  # type: ignore[arg-type]


async def test_app_credentials_are_returned_once_and_kept_only_hashed_or_encrypted(
    runtime: Runtime,
) -> None:
    registry = runtime.registry
    credentials = await registry.apps.create("factory")

    assert len(credentials.project_id) == 32
    assert (await registry.apps.verify_secret(credentials.app_id, credentials.secret)).name == (
        "factory"
    )
    with pytest.raises(AuthFailed):
        await registry.apps.verify_secret(credentials.app_id, credentials.secret + "x")
    with pytest.raises(AuthFailed):
        await registry.apps.verify_secret("no-such-app", credentials.secret)
    assert await registry.apps.secret_key_for(credentials.access_key) == (
        credentials.project_id,
        credentials.secret_key,
    )
    with pytest.raises(AuthFailed):
        await registry.apps.secret_key_for("NOSUCHKEY")
    async with runtime.store.read() as conn:
        stored_hash = (await conn.execute(select(apps.c.secret_hash))).scalar_one()
        stored_sk = (await conn.execute(select(access_keys.c.secret_key_enc))).scalar_one()
    assert credentials.secret not in stored_hash
    assert credentials.secret_key.encode() not in stored_sk


async def test_a_second_app_joins_an_existing_project_and_grants_are_explicit(
    runtime: Runtime,
) -> None:
    registry = runtime.registry
    owner = await registry.apps.create("owner")
    other = await registry.apps.create("other", project_id=owner.project_id)
    assert other.project_id == owner.project_id
    with pytest.raises(NotFound):
        await registry.apps.create("lost", project_id="0" * 32)

    assert not await registry.apps.may_act_for(other.app_id, owner.app_id)
    await registry.apps.grant(owner.app_id, other.app_id)
    await registry.apps.grant(owner.app_id, other.app_id)  # granting twice is harmless
    assert await registry.apps.may_act_for(other.app_id, owner.app_id)
    assert not await registry.apps.may_act_for(owner.app_id, other.app_id)
    assert await registry.apps.may_act_for(owner.app_id, owner.app_id)
    with pytest.raises(NotFound):
        await registry.apps.grant(owner.app_id, "unknown-app")
    await registry.apps.revoke(owner.app_id, other.app_id)
    assert not await registry.apps.may_act_for(other.app_id, owner.app_id)
    with pytest.raises(NotFound):
        await registry.apps.revoke(owner.app_id, other.app_id)


async def test_products_are_validated_unique_paged_and_scoped_to_their_project(
    runtime: Runtime,
) -> None:
    registry = runtime.registry
    app = await registry.apps.create("a")
    stranger = await registry.apps.create("b")
    made = [
        await registry.products.create(app.app_id, NewProduct(name=f"p{n}", device_type="Meter"))
        for n in range(3)
    ]
    assert all(len(p.product_id) == 24 for p in made)
    chosen = await registry.products.create(
        app.app_id, NewProduct(name="mine", device_type="Meter", product_id="meter-v2")
    )
    with pytest.raises(AlreadyExists):
        await registry.products.create(
            stranger.app_id, NewProduct(name="x", device_type="M", product_id="meter-v2")
        )
    with pytest.raises(InvalidInput) as bad:
        await registry.products.create(
            app.app_id, NewProduct(name="x", device_type="M", protocol_type="Pigeon")
        )
    assert bad.value.field == "protocol_type"
    with pytest.raises(InvalidInput):
        await registry.products.create(app.app_id, NewProduct(name="", device_type="M"))

    first = await registry.products.page(app.project_id, PageRequest(limit=3))
    assert first.count == 4
    assert [p.product_id for p in first.items] == [chosen.product_id] + [
        p.product_id for p in reversed(made[1:])
    ]
    rest = await registry.products.page(app.project_id, PageRequest(limit=3, marker=first.marker))
    assert [p.product_id for p in rest.items] == [made[0].product_id]
    assert (await registry.products.page(stranger.project_id)).count == 0
    with pytest.raises(NotFound):
        await registry.products.get(stranger.project_id, chosen.product_id)

    renamed = await registry.products.update(app.project_id, chosen.product_id, name="renamed")
    assert renamed.name == "renamed"
    assert (await registry.products.get(app.project_id, chosen.product_id)).name == "renamed"
    with pytest.raises(InvalidInput):
        await registry.products.update(app.project_id, chosen.product_id, name="x" * 65)
    await registry.devices.create(app.app_id, chosen.product_id, NewDevice(node_id="n1"))
    with pytest.raises(Conflict):
        await registry.products.delete(app.project_id, chosen.product_id)
    await registry.products.delete(app.project_id, made[0].product_id)
    with pytest.raises(NotFound):
        await registry.products.get(app.project_id, made[0].product_id)


async def test_bulk_creation_spans_chunks_joins_the_group_and_keeps_secrets_recoverable(
    runtime: Runtime,
) -> None:
    registry = runtime.registry
    app = await registry.apps.create("fleet")
    product = await registry.products.default(app.app_id)
    assert (await registry.products.default(app.app_id)).product_id == product.product_id
    group = await registry.groups.ensure(app.app_id, "all")
    count = BULK_CHUNK * 2 + 7
    specs = (NewDevice(node_id=node) for node in new_node_ids(count, "meter"))

    created = await registry.devices.create_many(
        app.app_id, product.product_id, specs, group_id=group.group_id
    )

    assert len(created) == count
    assert len({device.device_id for device in created}) == count
    assert created[0].device_id == f"{product.product_id}_meter-000001"
    assert all(8 <= len(device.secret) <= 32 for device in created)
    assert await count_rows(runtime, devices) == count
    assert await count_rows(runtime, group_members) == count
    for device in (created[0], created[BULK_CHUNK], created[-1]):
        assert await registry.devices.credentials(device.device_id) == (
            DeviceStatus.INACTIVE,
            device.secret,
        )
    async with runtime.store.read() as conn:
        blob = (
            await conn.execute(
                select(devices.c.secret_enc).where(devices.c.device_id == created[0].device_id)
            )
        ).scalar_one()
    assert created[0].secret.encode() not in blob
    assert await registry.devices.credentials("nobody") is None


async def test_a_rejected_batch_creates_nothing(runtime: Runtime) -> None:
    registry = runtime.registry
    app = await registry.apps.create("fleet")
    product = await registry.products.default(app.app_id)
    await registry.devices.create(app.app_id, product.product_id, NewDevice(node_id="taken"))
    before = await count_rows(runtime, devices)

    repeated = [NewDevice(node_id=f"n{n}") for n in range(BULK_CHUNK + 10)] + [
        NewDevice(node_id="n3")
    ]
    with pytest.raises(AlreadyExists) as dup:
        await registry.devices.create_many(app.app_id, product.product_id, repeated)
    assert dup.value.key.endswith("_n3")
    clash = [NewDevice(node_id=f"m{n}") for n in range(BULK_CHUNK + 10)] + [
        NewDevice(node_id="taken")
    ]
    with pytest.raises(AlreadyExists):
        await registry.devices.create_many(app.app_id, product.product_id, clash)
    invalid = [NewDevice(node_id="ok"), NewDevice(node_id="bad id!")]
    with pytest.raises(InvalidInput) as bad:
        await registry.devices.create_many(app.app_id, product.product_id, invalid)
    assert bad.value.field == "node_id"
    with pytest.raises(InvalidInput):
        await registry.devices.create(
            app.app_id, product.product_id, NewDevice(node_id="s", secret="short")
        )
    with pytest.raises(NotFound):
        await registry.devices.create(app.app_id, "no-such-product", NewDevice(node_id="x"))
    with pytest.raises(NotFound):
        await registry.devices.create("no-such-app", product.product_id, NewDevice(node_id="x"))

    assert await count_rows(runtime, devices) == before


async def test_devices_list_filter_page_and_stay_inside_their_project(runtime: Runtime) -> None:
    registry = runtime.registry
    app = await registry.apps.create("fleet")
    stranger = await registry.apps.create("stranger")
    meters = await registry.products.create(app.app_id, NewProduct(name="m", device_type="Meter"))
    pumps = await registry.products.create(app.app_id, NewProduct(name="p", device_type="Pump"))
    made_meters = await registry.devices.create_many(
        app.app_id,
        meters.product_id,
        [NewDevice(node_id=f"m{n}", location="north") for n in range(25)],
    )
    await registry.devices.create_many(
        app.app_id, pumps.product_id, [NewDevice(node_id=f"p{n}") for n in range(5)]
    )

    seen: list[str] = []
    page = await registry.devices.page(app.project_id, PageRequest(limit=7))
    assert page.count == 30
    while page.items:
        seen.extend(device.device_id for device in page.items)
        assert page.marker is not None
        page = await registry.devices.page(app.project_id, PageRequest(limit=7, marker=page.marker))
    assert len(seen) == len(set(seen)) == 30
    only_meters = await registry.devices.page(
        app.project_id, PageRequest(limit=50), product_id=meters.product_id
    )
    assert only_meters.count == 25
    assert [d.device_id for d in only_meters.items] == [d.device_id for d in reversed(made_meters)]
    offset = await registry.devices.page(app.project_id, PageRequest(limit=5, offset=25))
    assert offset.count == 30
    assert len(offset.items) == 5
    assert (await registry.devices.page(app.project_id, location="north")).count == 25
    assert (await registry.devices.page(app.project_id, status="INACTIVE")).count == 30
    with pytest.raises(InvalidInput):
        await registry.devices.page(app.project_id, status="SLEEPY")
    with pytest.raises(InvalidInput):
        await registry.devices.page(app.project_id, colour="red")
    with pytest.raises(InvalidInput):
        PageRequest(limit=51)
    with pytest.raises(InvalidInput):
        PageRequest(offset=501)
    with pytest.raises(InvalidInput):
        PageRequest(marker="not-hex")
    assert (await registry.devices.page(stranger.project_id)).count == 0
    with pytest.raises(NotFound):
        await registry.devices.get(stranger.project_id, made_meters[0].device_id)
    with pytest.raises(NotFound):
        await registry.devices.freeze(stranger.project_id, made_meters[0].device_id)


async def test_device_lifecycle_update_freeze_reset_delete(runtime: Runtime) -> None:
    registry = runtime.registry
    app = await registry.apps.create("fleet")
    product = await registry.products.default(app.app_id)
    made = await registry.devices.create(
        app.app_id, product.product_id, NewDevice(node_id="pump-1", secret="initial-secret")
    )
    project = app.project_id
    device = await registry.devices.get(project, made.device_id)
    assert (device.name, device.status, device.tags) == ("pump-1", DeviceStatus.INACTIVE, {})

    updated = await registry.devices.update(
        project, made.device_id, name="Pump 1", location="hall", tags={"floor": "2"}
    )
    assert (updated.name, updated.location, updated.tags) == ("Pump 1", "hall", {"floor": "2"})
    assert await registry.devices.get(project, made.device_id) == updated
    with pytest.raises(InvalidInput):
        await registry.devices.update(project, made.device_id, name="")

    frozen = await registry.devices.freeze(project, made.device_id)
    assert frozen.status is DeviceStatus.FROZEN
    assert (await registry.devices.credentials(made.device_id)) == (
        DeviceStatus.FROZEN,
        "initial-secret",
    )
    thawed = await registry.devices.unfreeze(project, made.device_id)
    assert thawed.status is DeviceStatus.INACTIVE

    generated = await registry.devices.reset_secret(project, made.device_id)
    assert generated != "initial-secret"
    assert await registry.devices.credentials(made.device_id) == (DeviceStatus.INACTIVE, generated)
    assert (
        await registry.devices.reset_secret(project, made.device_id, "chosen-secret")
        == "chosen-secret"
    )
    with pytest.raises(InvalidInput):
        await registry.devices.reset_secret(project, made.device_id, "bad secret!")

    group = await registry.groups.create(app.app_id, "g")
    await registry.groups.add_members(project, group.group_id, [made.device_id])
    await registry.devices.delete(project, made.device_id)
    with pytest.raises(NotFound):
        await registry.devices.get(project, made.device_id)
    assert (await registry.groups.members(project, group.group_id)).count == 0


async def test_groups_nest_hold_members_and_refuse_bad_changes(runtime: Runtime) -> None:
    registry = runtime.registry
    app = await registry.apps.create("fleet")
    project = app.project_id
    product = await registry.products.default(app.app_id)
    made = await registry.devices.create_many(
        app.app_id, product.product_id, [NewDevice(node_id=f"d{n}") for n in range(12)]
    )
    ids = [device.device_id for device in made]

    top = await registry.groups.create(app.app_id, "top", description="root")
    chain = [top]
    for depth in range(2, 6):
        chain.append(
            await registry.groups.create(
                app.app_id, f"level{depth}", parent_group_id=chain[-1].group_id
            )
        )
    with pytest.raises(InvalidInput):
        await registry.groups.create(app.app_id, "too-deep", parent_group_id=chain[-1].group_id)
    with pytest.raises(AlreadyExists):
        await registry.groups.create(app.app_id, "top")
    with pytest.raises(NotFound):
        await registry.groups.create(
            app.app_id, "orphan", parent_group_id="00000000-0000-0000-0000-000000000000"
        )
    assert await registry.groups.with_descendants(project, [chain[2].group_id]) == [
        g.group_id for g in chain[2:]
    ]

    assert await registry.groups.add_members(project, top.group_id, ids[:10]) == 10
    assert await registry.groups.add_members(project, top.group_id, ids[5:]) == 2
    with pytest.raises(NotFound):
        await registry.groups.add_members(project, top.group_id, [ids[0], "ghost"])
    members = await registry.groups.members(project, top.group_id, PageRequest(limit=5))
    assert members.count == 12
    assert [d.device_id for d in members.items] == list(reversed(ids))[:5]
    assert await registry.groups.remove_members(project, top.group_id, ids[:3]) == 3
    assert (await registry.groups.members(project, top.group_id)).count == 9

    renamed = await registry.groups.update(project, top.group_id, name="root", description="d")
    assert (renamed.name, renamed.description) == ("root", "d")
    with pytest.raises(AlreadyExists):
        await registry.groups.update(project, top.group_id, name="level2")
    assert (await registry.groups.page(project, name="root")).items == [renamed]
    assert (await registry.groups.page(project)).count == 5
    with pytest.raises(Conflict):
        await registry.groups.delete(project, top.group_id)
    await registry.groups.delete(project, chain[-1].group_id)
    with pytest.raises(NotFound):
        await registry.groups.get(project, chain[-1].group_id)
    stranger = await registry.apps.create("stranger")
    with pytest.raises(NotFound):
        await registry.groups.get(stranger.project_id, top.group_id)


async def test_a_store_refuses_a_different_secret_key(runtime: Runtime, settings: Settings) -> None:
    await runtime.registry.apps.create("a")
    wrong = Settings(
        data_dir=settings.data_dir,
        database=settings.database,
        secret_key="QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",  # base64 of 32 x "A"
    )
    with pytest.raises(VaultKeyError):
        await Runtime.open(wrong)
