"""Device authentication of the IoTDA device protocol (spec: device-mqtt §1.2). Pure: no I/O.

A device connects with client id `{device_id}_0_{sign_type}_{yyyyMMddHH}`, user name
`{device_id}` and password = hex HMAC-SHA256(key=timestamp, msg=secret). Sign type 1 also
asks the platform to check the timestamp against its own clock.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

AUTH_TYPE_DEVICE_ID = "0"
SIGN_TYPE_UNCHECKED = "0"
SIGN_TYPE_CHECKED = "1"
DEFAULT_TIMESTAMP_TOLERANCE_S = 3600
_HOUR_MS = 3_600_000


class AuthFailure(IntEnum):
    """Why a CONNECT is refused; the value is the MQTT 3.1.1 CONNACK return code."""

    BAD_CREDENTIALS = 4  # malformed client id, unknown device, wrong password, stale timestamp
    NOT_AUTHORIZED = 5  # the device exists and signed correctly but may not connect (frozen)


@dataclass(frozen=True, slots=True)
class ClientId:
    """The four parts of an IoTDA device client id."""

    device_id: str
    auth_type: str
    sign_type: str
    timestamp: str


def parse_client_id(client_id: str) -> ClientId | None:
    """Split from the right (a device id may contain `_`); None when it is not the IoTDA form."""
    parts = client_id.rsplit("_", 3)
    if len(parts) != 4:
        return None
    device_id, auth_type, sign_type, timestamp = parts
    if not device_id or auth_type != AUTH_TYPE_DEVICE_ID:
        return None
    if sign_type not in (SIGN_TYPE_UNCHECKED, SIGN_TYPE_CHECKED):
        return None
    if len(timestamp) != 10 or not timestamp.isascii() or not timestamp.isdigit():
        return None
    return ClientId(device_id, auth_type, sign_type, timestamp)


def sign_password(secret: str, timestamp: str) -> str:
    """The connect password: lowercase hex HMAC-SHA256 keyed by the timestamp over the secret."""
    return hmac.new(timestamp.encode(), secret.encode(), hashlib.sha256).hexdigest()


def make_client_id(device_id: str, timestamp: str, sign_type: str = SIGN_TYPE_CHECKED) -> str:
    """The client id a device of Huawei's SDK presents."""
    return f"{device_id}_{AUTH_TYPE_DEVICE_ID}_{sign_type}_{timestamp}"


def timestamp_is_current(timestamp: str, now_ms: int, tolerance_s: int) -> bool:
    """Whether the hour `timestamp` names lies within `tolerance_s` of `now_ms`.

    The stamp names a whole hour, so it is current while `now` is inside that hour widened by
    the tolerance on both sides (IoTDA's own tolerance is unconfirmed; spec §1.2 step 3).
    """
    try:
        hour = datetime.strptime(timestamp, "%Y%m%d%H").replace(tzinfo=UTC)
    except ValueError:
        return False
    start_ms = int(hour.timestamp() * 1000)
    tolerance_ms = tolerance_s * 1000
    return start_ms - tolerance_ms <= now_ms < start_ms + _HOUR_MS + tolerance_ms


def check_password(
    client: ClientId,
    username: str | None,
    password: bytes | None,
    secret: str,
    *,
    now_ms: int,
    tolerance_s: int = DEFAULT_TIMESTAMP_TOLERANCE_S,
) -> bool:
    """Whether a CONNECT's credentials prove the device knows `secret` (constant-time compare)."""
    if username is not None and username != client.device_id:
        return False
    if password is None:
        return False
    expected = sign_password(secret, client.timestamp).encode()
    # SDKs send lowercase hex; accepting either case reveals nothing
    ok = hmac.compare_digest(expected, password.lower())
    if client.sign_type == SIGN_TYPE_CHECKED and not timestamp_is_current(
        client.timestamp, now_ms, tolerance_s
    ):
        return False
    return ok
