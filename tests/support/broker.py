"""The platform's external-broker client as tests make it: no credentials, TLS or share group."""

from __future__ import annotations

from typing import Any

from fleetbatch.clock import SystemClock
from fleetbatch.devices.broker import BrokerChannel


def plain_broker_channel(url: str, client_id: str, **options: Any) -> BrokerChannel:
    """A `BrokerChannel` to `url` (not started); `options` set or override its other arguments."""
    arguments: dict[str, Any] = {
        "username": None,
        "password": None,
        "share_group": None,
        "ca_file": None,
        "clock": SystemClock(),
    }
    return BrokerChannel(url, client_id=client_id, **(arguments | options))
