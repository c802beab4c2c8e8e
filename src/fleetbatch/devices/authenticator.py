"""Decides whether a device may connect: the IoTDA password check against the registry.

The built-in transport calls it for each CONNECT; in external-broker mode the broker calls
it through the EMQX-shaped HTTP endpoint. Both therefore accept and refuse the same devices.

A reconnect storm brings thousands of CONNECTs a second, and one store read each capped the
connect rate at ~900 devices/s here: lookups that arrive while one is running are gathered
and fetched together, in one query of up to `MAX_BATCH` devices.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import islice

from fleetbatch.clock import Clock
from fleetbatch.devices.auth import AuthFailure, check_password, parse_client_id
from fleetbatch.domain.registry import DeviceStatus
from fleetbatch.registry import Registry

# statuses that may connect; FROZEN may not (spec: IoTDA freeze "device cannot connect")
MAX_BATCH = 500

# (status, the secrets a device may connect with: its primary one, then its secondary one)
Credentials = tuple[DeviceStatus, tuple[str, ...]]

_MAY_CONNECT = frozenset(
    {DeviceStatus.ONLINE, DeviceStatus.OFFLINE, DeviceStatus.INACTIVE, DeviceStatus.ABNORMAL}
)


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The device that connected, or why it may not."""

    device_id: str | None
    failure: AuthFailure | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether the device may connect."""
        return self.failure is None


class DeviceAuthenticator:
    """Checks a device's CONNECT credentials against its stored secret."""

    def __init__(self, registry: Registry, clock: Clock, *, tolerance_s: int) -> None:
        self._registry = registry
        self._clock = clock
        self._tolerance_s = tolerance_s
        self._waiting: dict[str, list[asyncio.Future[Credentials | None]]] = {}
        self._fetcher: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop the lookup task; lookups still waiting fail."""
        if self._fetcher is not None:
            self._fetcher.cancel()
            await asyncio.gather(self._fetcher, return_exceptions=True)
        for futures in self._waiting.values():
            for future in futures:
                future.cancel()
        self._waiting.clear()

    async def _credentials(self, device_id: str) -> Credentials | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Credentials | None] = loop.create_future()
        self._waiting.setdefault(device_id, []).append(future)
        if self._fetcher is None or self._fetcher.done():
            self._fetcher = asyncio.create_task(self._fetch(), name="mqtt-credentials")
        return await future

    async def _fetch(self) -> None:
        """Serve every waiting lookup, `MAX_BATCH` devices per query, until none waits."""
        await asyncio.sleep(0)  # let the CONNECTs of this loop turn join the first batch
        while self._waiting:
            batch = {i: self._waiting.pop(i) for i in list(islice(self._waiting, MAX_BATCH))}
            try:
                found = await self._registry.devices.credentials_many(list(batch))
            except Exception as exc:
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            except BaseException:
                # cancelled (closing): these lookups are no longer in `_waiting`, end them here
                for futures in batch.values():
                    for future in futures:
                        future.cancel()
                raise
            for device_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(device_id))

    async def authenticate(
        self, client_id: str, username: str | None, password: bytes | None
    ) -> AuthResult:
        """The device id when the credentials prove it; else the CONNACK code and a reason."""
        client = parse_client_id(client_id)
        if client is None:
            return AuthResult(None, AuthFailure.BAD_CREDENTIALS, "client id is not the IoTDA form")
        if username != client.device_id:
            return AuthResult(None, AuthFailure.BAD_CREDENTIALS, "user name is not the device id")
        found = await self._credentials(client.device_id)
        if found is None:
            return AuthResult(None, AuthFailure.BAD_CREDENTIALS, "unknown device")
        status, device_secrets = found
        now_ms = self._clock.now_ms()
        # the secondary secret is as good as the primary one (IoTDA: tried when it fails)
        if not any(
            check_password(
                client, username, password, secret, now_ms=now_ms, tolerance_s=self._tolerance_s
            )
            for secret in device_secrets
        ):
            return AuthResult(
                None, AuthFailure.BAD_CREDENTIALS, "wrong password or stale timestamp"
            )
        if status not in _MAY_CONNECT:
            return AuthResult(None, AuthFailure.NOT_AUTHORIZED, f"device is {status.value}")
        return AuthResult(client.device_id)
