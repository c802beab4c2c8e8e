"""Device reports into the shadows: what each service reported last, written in batches.

Devices report their properties (T5, spec: device-mqtt §2.3) every few seconds each; a
write per report would put a transaction behind every one of them. The recorder merges
what each (device, service) reported since the last flush, latest values winning, and one
task writes them every `flush_s` in one transaction (as `devices.presence` does for
connects). Only services that have a shadow row (something was desired for them) are kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import DBAPIError

from fleetbatch.devices.topics import PropertiesReport, Uplink
from fleetbatch.domain.errors import FleetbatchError
from fleetbatch.store import shadows as shadow_rows
from fleetbatch.store.database import Store

log = logging.getLogger(__name__)

# (device, service) pairs held between flushes; beyond, new pairs are dropped and counted
MAX_PENDING = 200_000


class ShadowRecorder:
    """Buffers property reports (sync, from the channel) and writes them in batches."""

    def __init__(self, store: Store, *, flush_s: float, max_pending: int = MAX_PENDING) -> None:
        self._store = store
        self._flush_s = flush_s
        self._max_pending = max_pending
        self._reports: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        self._lock = asyncio.Lock()
        self.written = 0  # shadow rows updated so far, for tests and metrics
        self.dropped = 0  # reports not kept because the buffer was full

    def on_uplink(self, uplink: Uplink) -> None:
        """Take the services of a property report; anything else is not this recorder's."""
        if not isinstance(uplink, PropertiesReport):
            return
        for service in uplink.services:
            if not isinstance(service, dict):
                continue
            service_id = service.get("service_id")
            properties = service.get("properties")
            if not isinstance(service_id, str) or not isinstance(properties, dict):
                continue
            self.record(uplink.device_id, service_id, properties, uplink.received_ms)

    def record(
        self, device_id: str, service_id: str, properties: dict[str, Any], at_ms: int
    ) -> None:
        """Merge one service's reported properties into what waits for the next flush."""
        key = (device_id, service_id)
        waiting = self._reports.get(key)
        if waiting is None:
            if len(self._reports) >= self._max_pending:
                self.dropped += 1
                return
            self._reports[key] = (dict(properties), at_ms)
        else:
            waiting[0].update(properties)
            self._reports[key] = (waiting[0], max(waiting[1], at_ms))

    @property
    def pending(self) -> int:
        """(device, service) pairs not written yet."""
        return len(self._reports)

    async def flush(self) -> None:
        """Write what is buffered now, in one transaction."""
        async with self._lock:
            reports, self._reports = self._reports, {}
            if not reports:
                return
            rows = [(d, s, props, at) for (d, s), (props, at) in reports.items()]
            try:
                async with self._store.write() as conn:
                    written = await shadow_rows.record_reported(conn, rows)
            except BaseException:
                # back under anything newer that arrived meanwhile: tried again next time
                for key, (properties, at_ms) in reports.items():
                    newer = self._reports.get(key)
                    if newer is None:
                        self._reports[key] = (properties, at_ms)
                    else:
                        self._reports[key] = ({**properties, **newer[0]}, newer[1])
                raise
            self.written += written

    async def run(self) -> None:
        """Flush every `flush_s` until cancelled; a failed write is logged and retried."""
        dropped = 0
        while True:
            await asyncio.sleep(self._flush_s)
            if self.dropped != dropped:
                log.warning("shadow.reports_dropped count=%d", self.dropped - dropped)
                dropped = self.dropped
            try:
                await self.flush()
            except (DBAPIError, OSError, FleetbatchError) as exc:
                log.warning("shadow.flush_failed pending=%d error=%s", self.pending, exc)
