"""The device channel: the one interface the platform uses to reach devices.

Two modes implement it: the built-in transport (devices connect to fleetbatch itself) and
the external-broker client (devices connect to a broker, fleetbatch is a client of it).
Nothing above this interface knows which one runs.

Waiting for a device's answer costs one dict entry keyed by the exact topic the answer
will arrive on, and one entry in a coarse expiry wheel swept by a single task: a timer
or `asyncio.wait_for` per request cost 17-25% of the round-trip rate (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from fleetbatch.devices.topics import Downlink, Uplink
from fleetbatch.domain.errors import FleetbatchError, Unavailable

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.05


class Delivery(StrEnum):
    """What became of one downlink."""

    DELIVERED = "delivered"  # QoS 1: acknowledged (PUBACK); QoS 0: written to the connection
    OFFLINE = "offline"  # no connection for that device
    UNACKNOWLEDGED = "unacknowledged"  # no PUBACK in time, or the connection closed first


class DeviceOffline(Unavailable):
    """The device has no connection, so nothing was sent."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id} is offline")
        self.device_id = device_id


class NoResponse(FleetbatchError):
    """The device did not answer a request within its timeout."""

    def __init__(self, device_id: str, timeout_s: float) -> None:
        super().__init__(f"device {device_id} did not answer within {timeout_s:g} s")
        self.device_id = device_id
        self.timeout_s = timeout_s


UplinkHandler = Callable[[Uplink], None]
PresenceHandler = Callable[[str, bool, int], None]  # (device_id, online, at_ms)


class DeviceChannel(Protocol):
    """Send downlinks, await answers, receive uplinks and presence changes."""

    async def start(self) -> None:
        """Begin serving or connect to the broker."""

    async def close(self) -> None:
        """Stop; requests still waiting fail with NoResponse."""

    def add_uplink_handler(self, handler: UplinkHandler) -> None:
        """Call `handler` with every uplink no request is waiting for. It must not block."""

    def add_presence_handler(self, handler: PresenceHandler) -> None:
        """Call `handler` when a device connects or disconnects, as far as the mode can tell."""

    def is_online(self, device_id: str) -> bool | None:
        """Whether the device is connected; None when this mode cannot tell."""

    async def send(self, downlink: Downlink, *, timeout_s: float) -> Delivery:
        """Deliver one downlink; for QoS 1, wait up to `timeout_s` for its acknowledgement."""

    async def request(self, downlink: Downlink, *, timeout_s: float) -> Uplink:
        """Send a downlink that has a `response_topic` and return the device's answer.

        Raises DeviceOffline when nothing could be sent and NoResponse after `timeout_s`.
        A late answer, after the timeout, reaches the uplink handlers instead.
        """

    def submit(
        self,
        downlink: Downlink,
        *,
        timeout_s: float,
        on_delivered: Callable[[], None] | None = None,
    ) -> asyncio.Future[Uplink]:
        """`request` without a coroutine: send now, return the future of the answer.

        For callers that keep many requests in flight (the engine's dispatcher): a done
        callback costs less than a task resuming. DeviceOffline (or Unavailable) is raised
        at once; the future fails with NoResponse after `timeout_s`. `on_delivered` is
        called once the downlink is acknowledged (as `send` tells DELIVERED), if it is.
        """

    def post(self, downlink: Downlink, *, timeout_s: float) -> asyncio.Future[Delivery]:
        """`send` without a coroutine: write now, return the future of what became of it.

        For callers with many downlinks in flight and no answer to wait for (the engine's
        messages): the future always gets a `Delivery`, never an exception, within
        `timeout_s` (or when the channel closes). Unavailable is raised at once when this
        mode cannot send at all (not connected to the broker).
        """

    async def disconnect(self, device_id: str) -> None:
        """Close the device's connection (a frozen or deleted device), where the mode can."""


class ExpiryWheel:
    """Deadlines for many futures, expired by one periodic sweep instead of a timer each.

    A deadline falls into a slot of `resolution_s`; `sweep()` fails the futures of every
    slot that has passed with the exception `expire` builds, unless they finished first.
    """

    def __init__(self, *, resolution_s: float = SWEEP_INTERVAL_S) -> None:
        self._resolution_s = resolution_s
        self._slots: dict[
            int, list[tuple[asyncio.Future[Any], Callable[[Any], BaseException], Any]]
        ] = {}
        self._swept_slot = math.floor(time.monotonic() / resolution_s)

    def _slot(self, at: float) -> int:
        return math.ceil(at / self._resolution_s)

    def add(
        self,
        future: asyncio.Future[Any],
        timeout_s: float,
        expire: Callable[[Any], BaseException],
        key: Any = None,
    ) -> None:
        """Fail `future` with `expire(key)` once `timeout_s` has passed (to one resolution)."""
        slot = max(self._slot(time.monotonic() + timeout_s), self._swept_slot + 1)
        entry = (future, expire, key)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [entry]
        else:
            bucket.append(entry)

    def sweep(self, now: float | None = None) -> int:
        """Expire every future whose deadline passed; returns how many were still pending."""
        # a slot expires once its end has passed, never early
        now_slot = math.floor((time.monotonic() if now is None else now) / self._resolution_s)
        expired = 0
        due = _due_slots(self._slots, self._swept_slot, now_slot)
        for slot in due:
            for future, expire, key in self._slots.pop(slot, ()):
                if not future.done():
                    future.set_exception(expire(key))
                    expired += 1
        self._swept_slot = max(self._swept_slot, now_slot)
        return expired

    async def run(self) -> None:
        """Sweep every `resolution_s` until cancelled."""
        while True:
            await asyncio.sleep(self._resolution_s)
            self.sweep()

    def fail_all(self) -> None:
        """Fail every pending future now, as if its deadline had passed (the owner is closing)."""
        for slot in sorted(self._slots):
            for future, expire, key in self._slots[slot]:
                if not future.done():
                    future.set_exception(expire(key))
        self._slots.clear()


def answer_topic(downlink: Downlink) -> str:
    """The topic `downlink`'s answer arrives on; ValueError for a downlink nobody answers."""
    topic = downlink.response_topic
    if topic is None:
        raise ValueError("submit() needs a downlink with a response_topic")
    return topic


class PendingReplies:
    """Futures waiting for an answer on an exact topic, expired by one sweeper task.

    The expiry slots hold (topic, sequence number), not the futures: an answered request's
    future, and the answer it carries, are released as soon as it is answered instead of
    living on in the wheel until its deadline (at 25,000 answers/s and a 10 s timeout,
    a quarter of a million of them).
    """

    def __init__(self, *, resolution_s: float = SWEEP_INTERVAL_S) -> None:
        self._resolution_s = resolution_s
        self._waiting: dict[str, tuple[asyncio.Future[Uplink], int, str, float]] = {}
        self._slots: dict[int, list[tuple[str, int]]] = {}
        self._swept_slot = math.floor(time.monotonic() / resolution_s)
        self._sequence = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, topic: str, device_id: str, timeout_s: float) -> asyncio.Future[Uplink]:
        """A future for the next uplink on `topic`, failing with NoResponse after `timeout_s`."""
        if topic in self._waiting:
            raise ValueError(f"an answer on {topic} is awaited already")
        loop = self._loop
        if loop is None:
            # asyncio.get_running_loop() costs a getpid() syscall each time: look it up once
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Uplink] = loop.create_future()
        self._sequence += 1
        self._waiting[topic] = (future, self._sequence, device_id, timeout_s)
        deadline = math.ceil((time.monotonic() + timeout_s) / self._resolution_s)
        slot = max(deadline, self._swept_slot + 1)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [(topic, self._sequence)]
        else:
            bucket.append((topic, self._sequence))
        return future

    async def wait(self, downlink: Downlink, reply: asyncio.Future[Uplink]) -> Uplink:
        """Await `reply`, the future `expect` gave for `downlink`'s answer.

        A cancelled wait stops waiting: the entry is removed, a late answer goes to the
        uplink handlers.
        """
        try:
            return await reply
        except asyncio.CancelledError:
            self.forget(answer_topic(downlink), reply)
            raise

    def waiting_for(self, topic: str) -> bool:
        """Whether a request awaits an answer on `topic`."""
        return topic in self._waiting

    def resolve(self, uplink: Uplink) -> bool:
        """Hand `uplink` to the request waiting on its topic; False when none is."""
        waiting = self._waiting.pop(uplink.topic, None)
        if waiting is None or waiting[0].done():
            return False
        waiting[0].set_result(uplink)
        return True

    def forget(self, topic: str, future: asyncio.Future[Uplink]) -> None:
        """Stop waiting (the request was cancelled or could not be sent)."""
        waiting = self._waiting.get(topic)
        if waiting is not None and waiting[0] is future:
            del self._waiting[topic]

    def sweep(self, now: float | None = None) -> int:
        """Fail every request whose deadline passed; returns how many expired."""
        # a slot expires once its end has passed, never early
        now_slot = math.floor((time.monotonic() if now is None else now) / self._resolution_s)
        expired = 0
        for slot in _due_slots(self._slots, self._swept_slot, now_slot):
            for topic, sequence in self._slots.pop(slot, ()):
                waiting = self._waiting.get(topic)
                if waiting is None or waiting[1] != sequence:
                    continue  # answered, forgotten, or a newer request on the same topic
                del self._waiting[topic]
                future, _, device_id, timeout_s = waiting
                if not future.done():
                    future.set_exception(NoResponse(device_id, timeout_s))
                    expired += 1
        self._swept_slot = max(self._swept_slot, now_slot)
        return expired

    async def run_sweeper(self) -> None:
        """Sweep every `resolution_s` until cancelled."""
        while True:
            await asyncio.sleep(self._resolution_s)
            self.sweep()

    def fail_all(self) -> None:
        """Fail every waiting request (the channel is closing)."""
        for future, _, device_id, timeout_s in self._waiting.values():
            if not future.done():
                future.set_exception(NoResponse(device_id, timeout_s))
        self._waiting.clear()
        self._slots.clear()


def _due_slots(slots: dict[int, Any], swept_slot: int, now_slot: int) -> list[int]:
    """The slots from just after `swept_slot` up to `now_slot` that hold entries."""
    if now_slot - swept_slot > len(slots):
        # a long pause (or a test's clock far ahead): look at the filled slots only
        return sorted(slot for slot in slots if slot <= now_slot)
    return [slot for slot in range(swept_slot + 1, now_slot + 1) if slot in slots]


class Listeners:
    """The uplink and presence handlers of a channel; a failing handler is logged, not fatal."""

    def __init__(self) -> None:
        self.uplink: list[UplinkHandler] = []
        self.presence: list[PresenceHandler] = []

    def uplink_received(self, uplink: Uplink) -> None:
        """Pass an unclaimed uplink to every uplink handler."""
        for handler in self.uplink:
            try:
                handler(uplink)
            except Exception:
                log.exception("channel.uplink_handler_failed topic=%s", uplink.topic)

    def presence_changed(self, device_id: str, online: bool, at_ms: int) -> None:
        """Tell every presence handler that a device came or went."""
        for handler in self.presence:
            try:
                handler(device_id, online, at_ms)
            except Exception:
                log.exception("channel.presence_handler_failed device_id=%s", device_id)
