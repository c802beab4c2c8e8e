"""Wiring: the store, the secret vault and the services, opened once from settings.

Every entry point (the server, each admin command, the demo, tests) opens a `Runtime`
the same way, so they all agree on the database, the migrations and the secret key.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from fleetbatch.clock import Clock, SystemClock
from fleetbatch.engine.service import TaskService
from fleetbatch.registry import Registry
from fleetbatch.settings import Settings
from fleetbatch.store.database import Store
from fleetbatch.vault import SecretVault, VaultKeyError, decode_key, load_or_create_key

KEY_CHECK_META = "vault_key_check"


@dataclass
class Runtime:
    """The opened parts every entry point shares."""

    settings: Settings
    store: Store
    vault: SecretVault
    clock: Clock
    registry: Registry
    tasks: TaskService

    @classmethod
    async def open(cls, settings: Settings, *, clock: Clock | None = None) -> Runtime:
        """Open the store (migrating it), load the secret key and check it fits the store."""
        vault = SecretVault(_load_key(settings))
        store = await Store.open(settings)
        try:
            await _check_key(store, vault)
        except BaseException:
            await store.close()
            raise
        clock = clock or SystemClock()
        registry = Registry(store, vault, clock, default_throttle=settings.default_throttle_per_min)
        tasks = TaskService(store, clock)
        return cls(
            settings=settings,
            store=store,
            vault=vault,
            clock=clock,
            registry=registry,
            tasks=tasks,
        )

    async def close(self) -> None:
        """Release the database connections."""
        await self.store.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _load_key(settings: Settings) -> bytes:
    if settings.secret_key is not None:
        return decode_key(settings.secret_key.get_secret_value())
    return load_or_create_key(settings.data_dir / "secret.key")


async def _check_key(store: Store, vault: SecretVault) -> None:
    """The first key to open a store is recorded; any other key is refused with a clear error."""
    async with store.write() as conn:
        recorded = await store.get_meta(conn, KEY_CHECK_META)
        if recorded is None:
            await store.set_meta(conn, KEY_CHECK_META, vault.key_check)
        elif recorded != vault.key_check:
            raise VaultKeyError(
                "the secret key does not match the one this database was created with; "
                "set FLEETBATCH_SECRET_KEY (or <data-dir>/secret.key) to that key"
            )
