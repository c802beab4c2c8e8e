"""Delivers the outbox's notifications to applications' URLs, at least once.

Rows are written by the engine in the transaction of the change they report
(`store/outbox.py`), so a crash loses none; this loop leases due rows, POSTs each body
with httpx, and marks it delivered on a 2xx answer or due again after an exponential
back-off otherwise. A crash between the POST and the mark repeats the delivery once the
lease runs out (at least once, never lost); receivers can tell repeats apart by the
`X-Fleetbatch-Delivery` header (the row id). Deliveries run in their own tasks, bounded
per URL and in total, so a slow application delays only its own notifications and never
the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass

import httpx

from fleetbatch.clock import Clock
from fleetbatch.domain.outbox import retry_delay_s
from fleetbatch.settings import Settings
from fleetbatch.store import outbox as outbox_rows
from fleetbatch.store.database import Store
from fleetbatch.store.outbox import OutboxRow

log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Fleetbatch-Delivery"
# rows leased per round; deliveries in flight at most
CLAIM_BATCH = 100
MAX_IN_FLIGHT = 200
# delivered rows are kept this long (for operators), then dropped, checked this often
KEEP_DELIVERED_MS = 24 * 3600 * 1000
PURGE_EVERY_MS = 60_000


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """How the delivery loop behaves (from `Settings.outbox_*`)."""

    poll_s: float = 0.2
    backoff_s: float = 1.0
    backoff_max_s: float = 300.0
    per_url: int = 4
    timeout_s: float = 10.0
    lease_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxConfig:
        return cls(
            poll_s=settings.outbox_poll_s,
            backoff_s=settings.outbox_backoff_s,
            backoff_max_s=settings.outbox_backoff_max_s,
            per_url=settings.outbox_per_url,
            timeout_s=settings.outbox_timeout_s,
            lease_s=settings.outbox_lease_s,
        )


@dataclass
class OutboxStats:
    """What the loop did (counters for tests and operators)."""

    delivered: int = 0
    failed_attempts: int = 0


class OutboxDelivery:
    """The delivery loop of one process: `await run()` until cancelled, or `close()`."""

    def __init__(self, store: Store, clock: Clock, config: OutboxConfig | None = None) -> None:
        self.store = store
        self.clock = clock
        self.config = config or OutboxConfig()
        self.worker_id = f"outbox-{socket.gethostname()}-{os.getpid()}-{id(self):x}"[:64]
        self.stats = OutboxStats()
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        # row ids this process holds (waiting for a URL slot or being sent)
        self._holding: set[int] = set()
        self._purged_at = 0
        self._http = httpx.AsyncClient(timeout=self.config.timeout_s, follow_redirects=False)

    async def run(self) -> None:
        """Lease and deliver due rows until cancelled; a store error is retried next round."""
        try:
            while True:
                try:
                    started = await self.deliver_due()
                except Exception as exc:  # the loop outlives a database hiccup
                    log.warning("outbox.round_failed error=%s", exc)
                    started = 0
                if not started:
                    await asyncio.sleep(self.config.poll_s)
        finally:
            await self._drain()

    async def deliver_due(self) -> int:
        """Lease the rows due now (as many as there is room for) and start their deliveries."""
        room = min(CLAIM_BATCH, MAX_IN_FLIGHT - len(self._in_flight))
        if room <= 0:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            return 0
        now = self.clock.now_ms()
        if now - self._purged_at >= PURGE_EVERY_MS:
            self._purged_at = now
            async with self.store.write() as conn:
                await outbox_rows.purge_delivered(conn, now - KEEP_DELIVERED_MS)
        async with self.store.read() as conn:
            if not await outbox_rows.any_due(conn, now):
                return 0
        # the lease covers the wait for a per-URL slot and the request itself
        lease_ms = int(self._lease_s * 1000)
        async with self.store.write() as conn:
            rows = await outbox_rows.claim_due(conn, self.worker_id, now, now + lease_ms, room)
        for row in rows:
            if row.id in self._holding:
                continue  # its lease ran out while it waited for a slot here: still ours
            self._holding.add(row.id)
            task = asyncio.create_task(self._deliver(row), name=f"outbox-{row.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(rows)

    async def _deliver(self, row: OutboxRow) -> None:
        try:
            await self._deliver_held(row)
        finally:
            self._holding.discard(row.id)

    async def _deliver_held(self, row: OutboxRow) -> None:
        limit = self._limits.setdefault(row.url, asyncio.Semaphore(self.config.per_url))
        async with limit:
            # the wait for a slot may have outlasted the lease: renew it, or leave the row
            # to whoever took it over meanwhile
            lease_until = self.clock.now_ms() + int(self._lease_s * 1000)
            async with self.store.write() as conn:
                if not await outbox_rows.renew(conn, row.id, self.worker_id, lease_until):
                    return
            error = await self._post(row)
        try:
            async with self.store.write() as conn:
                if error is None:
                    await outbox_rows.mark_delivered(
                        conn, row.id, self.worker_id, self.clock.now_ms()
                    )
                    self.stats.delivered += 1
                else:
                    delay = retry_delay_s(
                        row.attempts + 1, self.config.backoff_s, self.config.backoff_max_s
                    )
                    due = self.clock.now_ms() + int(delay * 1000)
                    await outbox_rows.mark_failed(conn, row.id, self.worker_id, due, error)
                    self.stats.failed_attempts += 1
        except Exception as exc:
            # the lease runs out and the row is delivered again: at least once
            log.warning("outbox.mark_failed row=%s error=%s", row.id, exc)
        finally:
            if len(self._limits) > 10_000 and not limit.locked():
                self._limits.pop(row.url, None)

    @property
    def _lease_s(self) -> float:
        # a lease shorter than one request would hand a row out again while it is sent
        return max(self.config.lease_s, self.config.timeout_s * 2)

    async def _post(self, row: OutboxRow) -> str | None:
        """None when the URL answered 2xx; otherwise why not."""
        try:
            response = await self._http.post(
                row.url,
                content=row.body.encode(),
                headers={"Content-Type": "application/json", DELIVERY_HEADER: str(row.id)},
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _drain(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self._http.aclose()
