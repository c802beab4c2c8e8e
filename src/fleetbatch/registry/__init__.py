"""The registry: projects, apps and credentials, products, devices, groups.

`Registry` bundles one service per aggregate (`registry.apps`, `.products`, `.devices`,
`.groups`, `.shadows`, `.batch_files`); each public method is one unit of work in one
transaction, validates before it writes, and treats another project's resource as not found.
"""

from __future__ import annotations

from fleetbatch.clock import Clock
from fleetbatch.registry.apps import AppService
from fleetbatch.registry.batch_files import BatchFileService
from fleetbatch.registry.devices import DeviceService
from fleetbatch.registry.groups import GroupService
from fleetbatch.registry.products import ProductService
from fleetbatch.registry.shadows import ShadowService
from fleetbatch.store.database import Store
from fleetbatch.vault import SecretVault


class Registry:
    """The registry services over one store."""

    def __init__(
        self, store: Store, vault: SecretVault, clock: Clock, *, default_throttle: int = 100
    ) -> None:
        self.apps = AppService(store, vault, clock, default_throttle=default_throttle)
        self.products = ProductService(store, vault, clock)
        self.devices = DeviceService(store, vault, clock)
        self.groups = GroupService(store, vault, clock)
        self.shadows = ShadowService(store, vault, clock)
        self.batch_files = BatchFileService(store, vault, clock)


__all__ = [
    "AppService",
    "BatchFileService",
    "DeviceService",
    "GroupService",
    "ProductService",
    "Registry",
    "ShadowService",
]
