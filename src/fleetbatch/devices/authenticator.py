"""Decides whether a device may connect: the IoTDA password check against the registry.

The built-in transport calls it for each CONNECT; in external-broker mode the broker calls
it through the EMQX-shaped HTTP endpoint. Both therefore accept and refuse the same devices.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleetbatch.clock import Clock
from fleetbatch.devices.auth import AuthFailure, check_password, parse_client_id
from fleetbatch.domain.registry import DeviceStatus
from fleetbatch.registry import Registry

# statuses that may connect; FROZEN may not (spec: IoTDA freeze "device cannot connect")
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

    async def authenticate(
        self, client_id: str, username: str | None, password: bytes | None
    ) -> AuthResult:
        """The device id when the credentials prove it; else the CONNACK code and a reason."""
        client = parse_client_id(client_id)
        if client is None:
            return AuthResult(None, AuthFailure.BAD_CREDENTIALS, "client id is not the IoTDA form")
        if username != client.device_id:
            return AuthResult(None, AuthFailure.BAD_CREDENTIALS, "user name is not the device id")
        found = await self._registry.devices.credentials(client.device_id)
        if found is None:
            return AuthResult(None, AuthFailure.BAD_CREDENTIALS, "unknown device")
        status, secret = found
        now_ms = self._clock.now_ms()
        if not check_password(
            client, username, password, secret, now_ms=now_ms, tolerance_s=self._tolerance_s
        ):
            return AuthResult(
                None, AuthFailure.BAD_CREDENTIALS, "wrong password or stale timestamp"
            )
        if status not in _MAY_CONNECT:
            return AuthResult(None, AuthFailure.NOT_AUTHORIZED, f"device is {status.value}")
        return AuthResult(client.device_id)
