"""The registry service (work in progress)."""

from __future__ import annotations

from fleetbatch.clock import Clock
from fleetbatch.store.database import Store
from fleetbatch.vault import SecretVault


class Registry:
    """Projects, apps, credentials, products, devices and groups."""

    def __init__(
        self, store: Store, vault: SecretVault, clock: Clock, *, default_throttle: int = 100
    ) -> None:
        self.store = store
        self.vault = vault
        self.clock = clock
        self.default_throttle = default_throttle
