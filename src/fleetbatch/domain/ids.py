"""Identifier formats and generators.

Formats follow Huawei IoTDA's documented shapes (spec: iotda-v5 §6): project ids are 32
lowercase hex, task and record ids 24 lowercase hex that grow with creation order (so
descending-id "marker" paging returns newest first), device ids `{product_id}_{node_id}`.
"""

from __future__ import annotations

import os
import re
import secrets
import string
import threading
import time

# The v5 default marker: larger than every id, so the first page starts at the newest record.
MAX_MARKER = "f" * 24
# Record ids are stored as signed 64-bit integers and rendered as 24 hex digits.
MAX_RECORD_ID = 2**63 - 1

_HEX24 = re.compile(r"[0-9a-f]{1,24}")
_ALNUM = string.ascii_letters + string.digits


def new_project_id() -> str:
    """A new project (tenant) id: 32 lowercase hex."""
    return secrets.token_hex(16)


def new_app_id() -> str:
    """A new application id: 28 letters and digits, the shape OceanConnect appIds have."""
    return "".join(secrets.choice(_ALNUM) for _ in range(28))


def new_secret(length: int = 32) -> str:
    """A new random secret of `length` characters from `[A-Za-z0-9_-]` (device, app, SK)."""
    # base64url of 6 random bits per character: one urandom call instead of one per character
    return secrets.token_urlsafe(length)[:length]


def new_access_key() -> str:
    """A new access key id: 20 uppercase letters and digits, as Huawei Cloud AKs look."""
    alphabet = string.ascii_uppercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(20))


class ObjectIdGenerator:
    """24-hex ids that grow with creation order: 4 bytes of seconds, 5 random, 3 counter.

    Within one process ids strictly increase; across processes they increase with the
    clock second, like MongoDB ObjectIds (which IoTDA's ids resemble).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._random = os.urandom(5).hex()
        self._counter = int.from_bytes(os.urandom(3), "big")
        self._last_seconds = 0

    def new(self, now_s: float | None = None) -> str:
        seconds = int(time.time() if now_s is None else now_s)
        with self._lock:
            seconds = max(seconds, self._last_seconds)
            self._counter = (self._counter + 1) & 0xFFFFFF
            if self._counter == 0:
                # counter wrapped within one second: borrow the next second to stay ordered
                seconds += 1
            self._last_seconds = seconds
            counter = self._counter
        return f"{seconds & 0xFFFFFFFF:08x}{self._random}{counter:06x}"


_object_ids = ObjectIdGenerator()


def new_object_id() -> str:
    """A new 24-hex id from the process-wide generator (task ids, file ids)."""
    return _object_ids.new()


def format_record_id(record_id: int) -> str:
    """Render an integer record id (a subtask's) as the 24-hex id the APIs show."""
    return f"{record_id:024x}"


def parse_marker(marker: str) -> int:
    """The integer bound a 24-hex marker stands for; larger ids than a record's clamp to max.

    Raises ValueError when the marker is not 1–24 lowercase hex digits.
    """
    if not _HEX24.fullmatch(marker):
        raise ValueError("marker must be 1 to 24 lowercase hex digits")
    return min(int(marker, 16), MAX_RECORD_ID)


def is_hex24(value: str) -> bool:
    """True when `value` is exactly 24 lowercase hex digits."""
    return len(value) == 24 and _HEX24.fullmatch(value) is not None


def device_id_for(product_id: str, node_id: str) -> str:
    """The IoTDA default device id for a node of a product."""
    return f"{product_id}_{node_id}"
