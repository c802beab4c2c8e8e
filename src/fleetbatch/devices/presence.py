"""Presence: which devices are connected, persisted in batches.

Connects and disconnects arrive at thousands per second in a reconnect storm; each one
written on its own would serialise the transport behind the database. The recorder keeps
the latest change per device and a single task writes them every `flush_s`, in one
transaction. Activity (`touch`) only moves the last-seen time, written less often.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fleetbatch.registry import Registry

log = logging.getLogger(__name__)

# last-seen times ride along every this many flushes: they matter to people, not to tasks
TOUCH_EVERY_FLUSHES = 20


@dataclass(slots=True)
class _Change:
    online: bool
    at_ms: int
    connected_at_ms: int | None  # when it also connected within this batch


class PresenceRecorder:
    """Buffers presence changes (sync, from the transport) and writes them in batches."""

    def __init__(self, registry: Registry, *, flush_s: float) -> None:
        self._registry = registry
        self._flush_s = flush_s
        self._changes: dict[str, _Change] = {}
        self._seen: dict[str, int] = {}
        self._flushes = 0
        self._lock = asyncio.Lock()
        self.written = 0  # changes persisted so far, for tests and metrics

    def record(self, device_id: str, online: bool, at_ms: int) -> None:
        """A device connected (`online`) or disconnected at `at_ms`; the latest change wins."""
        previous = self._changes.get(device_id)
        if previous is not None and at_ms < previous.at_ms:
            return  # an older event arriving late (broker webhooks are not ordered)
        connected_at = at_ms if online else None
        if not online and previous is not None and previous.online:
            connected_at = previous.at_ms
        elif not online and previous is not None:
            connected_at = previous.connected_at_ms
        self._changes[device_id] = _Change(online, at_ms, connected_at)

    def touch(self, device_id: str, at_ms: int) -> None:
        """The device was active at `at_ms` (a publish, a ping)."""
        self._seen[device_id] = at_ms

    @property
    def pending(self) -> int:
        """Changes not written yet."""
        return len(self._changes)

    async def flush(self, *, include_touches: bool = True) -> None:
        """Write what is buffered now, in one transaction."""
        async with self._lock:
            changes, self._changes = self._changes, {}
            seen: dict[str, int] = {}
            if include_touches:
                seen, self._seen = self._seen, {}
            if not changes and not seen:
                return
            online = [(i, c.at_ms) for i, c in changes.items() if c.online]
            offline = [(i, c.at_ms, c.connected_at_ms) for i, c in changes.items() if not c.online]
            try:
                await self._registry.devices.record_presence(online, offline, list(seen.items()))
            except BaseException:
                # put them back under anything newer that arrived meanwhile: try again later
                for device_id, change in changes.items():
                    self._changes.setdefault(device_id, change)
                for device_id, at_ms in seen.items():
                    self._seen.setdefault(device_id, at_ms)
                raise
            self.written += len(changes)

    async def run(self) -> None:
        """Flush every `flush_s` until cancelled; a failed write is logged and retried."""
        while True:
            await asyncio.sleep(self._flush_s)
            self._flushes += 1
            try:
                await self.flush(include_touches=self._flushes % TOUCH_EVERY_FLUSHES == 0)
            except Exception:
                log.exception("presence.flush_failed pending=%d", len(self._changes))
