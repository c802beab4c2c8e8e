"""Time representations: epoch milliseconds inside, Huawei's wire formats at the edges."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_COMPACT = "%Y%m%dT%H%M%SZ"
# strptime alone accepts short fields ("2015121T...") and lower-case letters
_COMPACT_SHAPE = re.compile(r"\d{8}T\d{6}Z")


def to_compact(epoch_ms: int) -> str:
    """`yyyyMMdd'T'HHmmss'Z'` in UTC, e.g. `20151212T121212Z` (task and command times)."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime(_COMPACT)


def from_compact(text: str) -> int:
    """Parse `yyyyMMdd'T'HHmmss'Z'`; raises ValueError on any other shape."""
    if not _COMPACT_SHAPE.fullmatch(text):
        raise ValueError(f"time must look like 20151212T121212Z, not {text!r}")
    moment = datetime.strptime(text, _COMPACT).replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def to_iso_ms(epoch_ms: int) -> str:
    """`yyyy-MM-dd'T'HH:mm:ss.SSS'Z'` in UTC (device active and status-change times)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def to_hour_stamp(epoch_ms: int) -> str:
    """`yyyyMMddHH` in UTC: the timestamp in a device's MQTT client id (spec: device-mqtt §1.2)."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y%m%d%H")
