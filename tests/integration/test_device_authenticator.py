"""The CONNECT check against the store, alone and in a connect storm."""

from __future__ import annotations

import asyncio

from fleetbatch.devices.auth import AuthFailure
from fleetbatch.devices.authenticator import MAX_BATCH, DeviceAuthenticator
from fleetbatch.domain.registry import NewDevice
from fleetbatch.runtime import Runtime
from support.mqtt_device import credentials


async def test_a_connect_storm_is_checked_in_batched_lookups(runtime: Runtime) -> None:
    registry = runtime.registry
    app = await registry.apps.create("storm")
    product = await registry.products.default(app.app_id)
    created = await registry.devices.create_many(
        app.app_id,
        product.product_id,
        [NewDevice(node_id=f"n{i}") for i in range(MAX_BATCH + 100)],
    )
    await registry.devices.freeze(app.project_id, created[0].device_id)
    lookups: list[int] = []
    fetch = registry.devices.credentials_many

    async def counted(device_ids: list[str]) -> object:
        lookups.append(len(device_ids))
        return await fetch(device_ids)

    registry.devices.credentials_many = counted  # type: ignore[method-assign]
    authenticator = DeviceAuthenticator(registry, runtime.clock, tolerance_s=3600)
    try:
        attempts = [credentials(d.device_id, d.secret) for d in created]
        attempts.append(credentials(created[1].device_id, "wrong"))  # same device, twice
        attempts.append(credentials(f"{product.product_id}_nosuch", "x"))
        results = await asyncio.gather(
            *(authenticator.authenticate(c, u, p.encode()) for c, u, p in attempts)
        )
    finally:
        await authenticator.close()

    assert results[0].failure is AuthFailure.NOT_AUTHORIZED  # frozen
    assert all(r.ok for r in results[1 : len(created)])
    assert [r.device_id for r in results[1:3]] == [created[1].device_id, created[2].device_id]
    assert results[-2].failure is AuthFailure.BAD_CREDENTIALS
    assert results[-1].failure is AuthFailure.BAD_CREDENTIALS
    # every lookup was served, at most MAX_BATCH devices per query, in far fewer queries
    assert sum(lookups) == len(created) + 1
    assert max(lookups) <= MAX_BATCH
    assert len(lookups) <= 4
