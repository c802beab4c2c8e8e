"""External-broker mode: fleetbatch as an MQTT client of a broker cluster (EMQX; Mosquitto in CI).

Devices connect to the broker. The broker asks fleetbatch whether they may connect, publish and
subscribe (the EMQX-shaped endpoints in `api/emqx.py`), delivers their system topics by
auto-subscribe, and reports connects and disconnects by webhook. This client only subscribes to
the uplink topics (never to downlinks, or it would hear its own publishes), shared across
fleetbatch nodes with `$share/{group}/` when a group is set, and publishes downlinks.

One gmqtt client per broker connection, always a clean session: when the connection drops, the
requests waiting for answers simply time out, unacknowledged sends are reported unacknowledged,
and a new client connects with back-off and subscribes again. Nothing is replayed, so a broker
restart never makes the engine count anything twice.

QoS 1 publishes are paced by the broker's Receive Maximum (Mosquitto's default is 20, EMQX's
32): beyond it they wait in a queue that each PUBACK drains, instead of failing. Incoming
messages are handled in gmqtt's synchronous callback, with no task per message; deadlines are
expired by sweeps, not a timer each (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.handler import MQTTError
from gmqtt.storage import PersistentStorage

from fleetbatch.clock import Clock
from fleetbatch.devices.channel import (
    Delivery,
    ExpiryWheel,
    Listeners,
    PendingReplies,
    PresenceHandler,
    UplinkHandler,
    answer_topic,
)
from fleetbatch.devices.topics import Downlink, Uplink, device_id_of, parse_uplink
from fleetbatch.domain.errors import Unavailable
from fleetbatch.settings import parse_broker_url

if TYPE_CHECKING:
    from fleetbatch.devices.channel import DeviceChannel

log = logging.getLogger(__name__)

# What devices publish (spec: device-mqtt §2.0). `shadow/get/+` is T10 only: `request_id=...`
# is one level, so the platform's own answers on `shadow/get/response/...` do not match.
UPLINK_FILTERS = (
    "$oc/devices/+/sys/commands/response/#",
    "$oc/devices/+/sys/properties/set/response/#",
    "$oc/devices/+/sys/properties/get/response/#",
    "$oc/devices/+/sys/shadow/get/+",
    "$oc/devices/+/sys/messages/up",
    "$oc/devices/+/sys/properties/report",
    "$oc/devices/+/sys/events/up",
    "$oc/devices/+/sys/gateway/sub_devices/properties/report",
    "$oc/devices/+/user/#",
)
KEEPALIVE_S = 30
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 10.0
CLOSE_TIMEOUT_S = 2.0
PROBE_TIMEOUT_S = 1.0
MAX_QUEUED_PUBLISHES = 50_000
DEFAULT_RECEIVE_MAXIMUM = 65_535  # MQTT 5 §3.2.2.3.3: absent means 65,535
_SUBACK_FAILURE = 0x80  # any granted code from 0x80 up is a refusal
# CONNACK codes that say "not now" rather than "never": unavailable, busy, quota, rate
_TRANSIENT_CONNACK_CODES = frozenset({3, 136, 137, 151, 159})


def subscription_filters(share_group: str | None) -> list[str]:
    """The uplink filters, each as `$share/{group}/...` when a share group is given."""
    if not share_group:
        return list(UPLINK_FILTERS)
    return [f"$share/{share_group}/{topic_filter}" for topic_filter in UPLINK_FILTERS]


class _Refused(Unavailable):
    """The broker refused fleetbatch's CONNECT or SUBSCRIBE: only reconfiguring it helps."""


class _Dropped(Unavailable):
    """The broker closed the connection before the handshake finished."""


class _NoConnack(_Dropped):
    """The broker hung up on the CONNECT without accepting it (as MQTT 3.1.1 brokers do to 5)."""


class _Unacknowledged(Exception):
    """No PUBACK within the send's timeout (internal: becomes Delivery.UNACKNOWLEDGED)."""


@dataclass(slots=True)
class BrokerStats:
    """Counters of one channel, for metrics and tests."""

    connects: int = 0  # successful connections, the first one included
    uplinks: int = 0  # messages received on the uplink subscriptions
    replies: int = 0  # of those, answers a request was waiting for
    published: int = 0  # downlinks written to the broker
    queued: int = 0  # downlinks that waited for a free slot of the Receive Maximum


class _Acks(PersistentStorage):  # type: ignore[misc]
    """gmqtt's store of unacknowledged publishes, used only to learn of each PUBACK.

    Nothing is kept for a replay: each connection is a clean session, and a publish the
    broker did not acknowledge is reported so, never resent later.
    """

    def __init__(self, on_ack: Callable[[int], None]) -> None:
        super().__init__()
        self.last_mid = 0
        self._on_ack = on_ack

    def push_message(self, mid: int, raw_package: bytes) -> None:
        self.last_mid = mid

    def remove_message_by_mid(self, mid: int) -> None:
        self._on_ack(mid)


class _Client(gmqtt.Client):  # type: ignore[misc]
    """A gmqtt client for one broker connection, and what the channel learned about it."""

    def __init__(self, client_id: str, on_ack: Callable[[_Client, int], None]) -> None:
        self.acks = _Acks(lambda mid: on_ack(self, mid))
        super().__init__(client_id, clean_session=True, persistent_storage=self.acks)
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.suback: asyncio.Future[tuple[int, ...]] | None = None
        self.connack: dict[str, Any] = {}
        self.probe_topic = f"$oc/fleetbatch/probe/{uuid.uuid4().hex}"
        self.probe: asyncio.Future[None] = loop.create_future()

    async def reconnect(self, delay: bool = False) -> None:
        # gmqtt would reconnect this client in place, with a fixed delay, its old packet ids
        # and a resumed session; the channel instead backs off and starts a fresh client
        return None


class BrokerChannel:
    """The device channel over an external MQTT broker (the `--broker mqtt://...` mode).

    Weaker than the built-in transport in three ways, all from what a generic broker offers:
    `send()` reports DELIVERED on the broker's PUBACK, not the device's; `is_online()` cannot
    tell (presence arrives through the broker's webhook instead); `disconnect()` cannot close a
    device's connection (a frozen device is refused at its next CONNECT by the auth endpoint).

    With a share group and several fleetbatch nodes, the answer to a `request()` may be
    delivered to another node: there it reaches the uplink handlers, which hand it to the
    engine (matched by request id in the store), and this node's `request()` times out.
    `request()` is therefore reliable with one node, or when callers rely on the uplink
    handlers for answers.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        username: str | None,
        password: str | None,
        share_group: str | None,
        ca_file: Path | None,
        clock: Clock,
        connect_timeout_s: float = 10.0,
    ) -> None:
        scheme, self._host, self._port = parse_broker_url(url)
        if ca_file is not None and scheme != "mqtts":
            raise ValueError("a broker CA file needs an mqtts:// broker URL")
        if share_group and any(char in share_group for char in "/+#"):
            raise ValueError(f"a share group cannot contain '/', '+' or '#': {share_group!r}")
        self._tls = scheme == "mqtts"
        self._ca_file = ca_file
        self._ssl: ssl.SSLContext | bool = False
        self._client_id = client_id
        self._username = username
        self._password = password
        self._share_group = share_group or None
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self.stats = BrokerStats()
        self._pending = PendingReplies()
        self._listeners = Listeners()
        self._ack_deadlines = ExpiryWheel()
        self._client: _Client | None = None
        self._ready = False
        # QoS 1 publishes the broker has not acknowledged: packet id -> the send() waiting
        self._inflight: dict[int, asyncio.Future[Delivery] | None] = {}
        # publishes waiting for a free slot: (downlink, its send's ack, its request's reply)
        self._queued: deque[
            tuple[Downlink, asyncio.Future[Delivery] | None, asyncio.Future[Uplink] | None]
        ] = deque()
        self._window = DEFAULT_RECEIVE_MAXIMUM - 1
        self._shares_work: bool | None = None  # learned on the first connection
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether the channel is connected and subscribed, so downlinks can be sent."""
        return self._ready

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe, retrying for up to `connect_timeout_s`.

        Raises Unavailable when the broker cannot be reached in that time, or refuses the
        platform's account or its subscriptions. Once started, a lost connection is
        re-established in the background for as long as the channel is open.
        """
        if self._started:
            raise RuntimeError("this BrokerChannel was started already")
        self._started = True
        if self._tls:
            # reads the CA file and the system's trust store
            self._ssl = await asyncio.to_thread(_tls_context, self._ca_file)
        client = await self._first_connection()
        self._own(self._pending.run_sweeper(), "broker-replies")
        self._own(self._ack_deadlines.run(), "broker-acks")
        self._own(self._keep_connected(client), "broker-connection")

    async def close(self) -> None:
        """Disconnect; requests still waiting fail with NoResponse, sends as unacknowledged."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        client, self._client = self._client, None
        self._connection_lost()
        self._pending.fail_all()
        self._ack_deadlines.fail_all()
        if client is not None:
            await _discard(client)
        log.info("broker.closed host=%s port=%d", self._host, self._port)

    def _own(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _first_connection(self) -> _Client:
        delay = RECONNECT_MIN_S
        last_error: BaseException | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                while True:
                    try:
                        return await self._connect()
                    except _Refused:
                        raise
                    except (OSError, MQTTError, Unavailable) as exc:
                        last_error = exc
                        log.info("broker.connect_failed host=%s reason=%s", self._host, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_S)
        except TimeoutError as exc:
            raise Unavailable(
                f"could not connect to the broker {self._host}:{self._port} within "
                f"{self._connect_timeout_s:g} s: {last_error or 'no answer'}"
            ) from exc

    async def _keep_connected(self, client: _Client) -> None:
        """Replace each lost connection with a new one, backing off while the broker is away."""
        while True:
            await client.lost
            if client is self._client:  # lost before it became current: settle it here
                self._client = None
                self._connection_lost()
            down_at = time.monotonic()
            log.warning("broker.disconnected host=%s port=%d", self._host, self._port)
            client = await self._reconnect()
            log.warning(
                "broker.reconnected host=%s port=%d down_s=%.1f",
                self._host,
                self._port,
                time.monotonic() - down_at,
            )

    async def _reconnect(self) -> _Client:
        delay = RECONNECT_MIN_S
        attempt = 0
        while True:
            # jitter: several fleetbatch nodes must not storm a broker that just came back
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            attempt += 1
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    return await self._connect()
            except _Refused as exc:
                log.error("broker.refused attempt=%d reason=%s", attempt, exc)
            except (OSError, TimeoutError, MQTTError, Unavailable) as exc:
                log.info("broker.reconnect_failed attempt=%d reason=%s", attempt, exc)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _connect(self) -> _Client:
        try:
            return await self._open(MQTTv50)
        except _NoConnack:
            # an MQTT 3.1.1 broker answers an MQTT 5 CONNECT with return code 1 and hangs up
            log.info("broker.mqtt5_refused host=%s retrying=mqtt3.1.1", self._host)
        return await self._open(MQTTv311)

    async def _open(self, version: int) -> _Client:
        """One connection: CONNECT, then SUBACK of every uplink filter; then it is current."""
        client = _Client(self._client_id, self._acked)
        client.on_connect = _on_connect
        client.on_subscribe = _on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        if self._username is not None:
            client.set_auth_credentials(self._username, self._password)
        try:
            connecting = client.connect(
                self._host, self._port, ssl=self._ssl, keepalive=KEEPALIVE_S, version=version
            )
            try:
                await _until_lost(client, connecting)
            except _Dropped as exc:
                raise _NoConnack(str(exc)) from None
            share_group = await self._usable_share_group(client, version)
            # MQTT-3.8.3-4: No Local is a protocol error on a shared subscription
            no_local = version == MQTTv50 and share_group is None
            await _subscribe(client, subscription_filters(share_group), no_local=no_local)
        except gmqtt.MQTTConnectError as exc:
            await _discard(client)
            # gmqtt keeps the CONNACK code private; "busy"-like codes are worth retrying
            if getattr(exc, "_code", None) in _TRANSIENT_CONNACK_CODES:
                raise Unavailable(f"the broker turned the connection down: {exc}") from exc
            raise _Refused(f"the broker refused the connection: {exc}") from exc
        except BaseException:
            await _discard(client)
            raise
        if client.lost.done():
            raise _Dropped("the broker closed the connection right after subscribing")
        receive_maximum = client.connack.get("receive_maximum", [DEFAULT_RECEIVE_MAXIMUM])[0]
        # gmqtt hands out at most receive_maximum - 1 packet ids
        self._window = max(1, int(receive_maximum) - 1)
        self._client = client
        self._ready = True
        self.stats.connects += 1
        log.info(
            "broker.connected host=%s port=%d mqtt=%s shared=%s window=%d",
            self._host,
            self._port,
            "5" if version == MQTTv50 else "3.1.1",
            share_group is not None,
            self._window,
        )
        return client

    @property
    def shared(self) -> bool | None:
        """Whether the uplinks are shared with other nodes; None before the first connection."""
        return self._shares_work if self._share_group else False

    async def _usable_share_group(self, client: _Client, version: int) -> str | None:
        """The share group, unless this broker cannot share the uplink topics.

        A broker may accept `$share/...` and still never deliver topics that start with `$`
        to it (Mosquitto 2.0.11 does so): one message to a private probe topic tells, once.
        """
        share_group = self._share_group
        if share_group is None:
            return None
        if version == MQTTv50 and client.connack.get("shared_subscription_available") == [0]:
            self._shares_work = False
        if self._shares_work is None:
            self._shares_work = await _probe_shares(client, share_group)
        if not self._shares_work:
            log.warning(
                "broker.shared_subscriptions_unusable host=%s fallback=plain_subscriptions",
                self._host,
            )
            return None
        return share_group

    # --- gmqtt callbacks (synchronous, on the event loop) ----------------------------------

    def _on_disconnect(self, client: _Client, packet: Any, exc: Any = None) -> None:
        if not client.lost.done():
            client.lost.set_result(None)
        if client is self._client:
            self._client = None
            self._connection_lost()

    def _connection_lost(self) -> None:
        """Settle what depended on the connection; waiting requests time out on their own."""
        self._ready = False
        for ack in self._inflight.values():
            if ack is not None and not ack.done():
                ack.set_result(Delivery.UNACKNOWLEDGED)
        self._inflight.clear()
        for _downlink, ack, _reply in self._queued:
            if ack is not None and not ack.done():
                ack.set_result(Delivery.UNACKNOWLEDGED)
        self._queued.clear()

    def _on_message(
        self, client: _Client, topic: str, payload: bytes, qos: int, properties: Any
    ) -> None:
        device_id = device_id_of(topic)
        if device_id is None:
            # not under $oc/devices/: only the probe of shared subscriptions is
            if topic == client.probe_topic and not client.probe.done():
                client.probe.set_result(None)
            return
        self.stats.uplinks += 1
        uplink = parse_uplink(device_id, topic, payload, self._clock.now_ms())
        if self._pending.resolve(uplink):
            self.stats.replies += 1
        else:
            self._listeners.uplink_received(uplink)

    def _acked(self, client: _Client, mid: int) -> None:
        if client is not self._client:
            return
        ack = self._inflight.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(Delivery.DELIVERED)
        queued = self._queued
        while queued and len(self._inflight) < self._window:
            downlink, ack, reply = queued.popleft()
            # a send or request that gave up while queued is not sent late
            if (ack is not None and ack.done()) or (reply is not None and reply.done()):
                continue
            self._write(client, downlink, ack)

    # --- publishing ----------------------------------------------------------------------

    def _publish(
        self,
        downlink: Downlink,
        ack: asyncio.Future[Delivery] | None,
        reply: asyncio.Future[Uplink] | None,
    ) -> None:
        client = self._client
        if client is None or not self._ready:
            raise Unavailable(f"not connected to the broker {self._host}:{self._port}")
        if downlink.qos == 0:
            client.publish(downlink.topic, downlink.payload, qos=0)
            self.stats.published += 1
            return
        if len(self._inflight) < self._window and not self._queued:
            self._write(client, downlink, ack)
            return
        if len(self._queued) >= MAX_QUEUED_PUBLISHES:
            raise Unavailable(f"{MAX_QUEUED_PUBLISHES} publishes wait for the broker already")
        self._queued.append((downlink, ack, reply))
        self.stats.queued += 1

    def _write(
        self, client: _Client, downlink: Downlink, ack: asyncio.Future[Delivery] | None
    ) -> None:
        # QoS 2 is not part of the device protocol (spec: device-mqtt §1.1): send it as QoS 1
        client.publish(downlink.topic, downlink.payload, qos=1)
        # gmqtt numbered the packet and "stored" it for its PUBACK just now, synchronously
        self._inflight[client.acks.last_mid] = ack
        self.stats.published += 1

    # --- DeviceChannel -------------------------------------------------------------------

    def add_uplink_handler(self, handler: UplinkHandler) -> None:
        """Call `handler` with every uplink no request is waiting for. It must not block."""
        self._listeners.uplink.append(handler)

    def add_presence_handler(self, handler: PresenceHandler) -> None:
        """Call `handler` with what `report_presence` is told (the broker's webhook)."""
        self._listeners.presence.append(handler)

    def report_presence(self, device_id: str, online: bool, at_ms: int) -> None:
        """Pass a connect or disconnect the broker reported to the presence handlers."""
        self._listeners.presence_changed(device_id, online, at_ms)

    def is_online(self, device_id: str) -> bool | None:
        """None: only the broker knows who is connected."""
        return None

    async def send(self, downlink: Downlink, *, timeout_s: float) -> Delivery:
        """Publish; for QoS 1 wait up to `timeout_s` for the broker's PUBACK.

        DELIVERED means the broker took the message (QoS 0: it was written to the broker),
        not that the device received it. Raises Unavailable when not connected to the broker.
        """
        if downlink.qos == 0:
            self._publish(downlink, None, None)
            return Delivery.DELIVERED
        ack: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._publish(downlink, ack, None)
        self._ack_deadlines.add(ack, timeout_s, _Unacknowledged)
        try:
            return await ack
        except _Unacknowledged:
            return Delivery.UNACKNOWLEDGED

    async def request(self, downlink: Downlink, *, timeout_s: float) -> Uplink:
        """Publish a downlink and return the device's answer on `downlink.response_topic`.

        Raises Unavailable when not connected to the broker, NoResponse after `timeout_s`
        (whether the device is offline cannot be told here). See the class docstring for
        several fleetbatch nodes sharing the uplinks.
        """
        return await self._pending.wait(downlink, self.submit(downlink, timeout_s=timeout_s))

    def submit(
        self,
        downlink: Downlink,
        *,
        timeout_s: float,
        on_delivered: Callable[[], None] | None = None,
    ) -> asyncio.Future[Uplink]:
        """Publish now; the future resolves to the device's answer (see `request`).

        `on_delivered` is called on the broker's PUBACK (see `send`), if one comes.
        """
        topic = answer_topic(downlink)
        # expect before publishing: the answer may arrive before publish() returns to us
        reply = self._pending.expect(topic, downlink.device_id, timeout_s)
        ack: asyncio.Future[Delivery] | None = None
        if on_delivered is not None and downlink.qos:
            ack = asyncio.get_running_loop().create_future()
        try:
            self._publish(downlink, ack, reply)
        except BaseException:
            self._pending.forget(topic, reply)
            reply.cancel()
            if ack is not None:
                ack.cancel()
            raise
        if ack is not None and on_delivered is not None:
            notify = on_delivered
            self._ack_deadlines.add(ack, timeout_s, _Unacknowledged)
            _when_settled(
                ack, lambda delivery: notify() if delivery is Delivery.DELIVERED else None
            )
        elif on_delivered is not None:
            on_delivered()  # QoS 0: written to the broker is all there is
        return reply

    def post(self, downlink: Downlink, *, timeout_s: float) -> asyncio.Future[Delivery]:
        """Publish now; the future tells DELIVERED on the broker's PUBACK (see `send`)."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Delivery] = loop.create_future()
        if downlink.qos == 0:
            self._publish(downlink, None, None)
            result.set_result(Delivery.DELIVERED)
            return result
        ack: asyncio.Future[Delivery] = loop.create_future()
        self._publish(downlink, ack, None)
        self._ack_deadlines.add(ack, timeout_s, _Unacknowledged)

        def settle(delivery: Delivery) -> None:
            if not result.done():
                result.set_result(delivery)

        _when_settled(ack, settle)
        return result

    async def disconnect(self, device_id: str) -> None:
        """Cannot be done through MQTT on a generic broker: logged only.

        A frozen or deleted device keeps its connection until it drops; the auth endpoint
        refuses its next CONNECT. (EMQX's REST API could kick it; see docs/emqx.md.)
        """
        log.info("broker.disconnect_unsupported device_id=%s", device_id)


def _when_settled(ack: asyncio.Future[Delivery], then: Callable[[Delivery], object]) -> None:
    """Call `then` with the delivery once `ack` settles; an expired wait is UNACKNOWLEDGED."""

    def settled(future: asyncio.Future[Delivery]) -> None:
        if future.cancelled() or future.exception() is not None:
            then(Delivery.UNACKNOWLEDGED)
        else:
            then(future.result())

    ack.add_done_callback(settled)


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verify the broker's certificate against `ca_file`, else the system's trust store."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def _on_connect(client: _Client, flags: int, rc: int, properties: dict[str, Any]) -> None:
    client.connack = properties


def _on_subscribe(client: _Client, mid: int, granted: tuple[int, ...], properties: Any) -> None:
    if client.suback is not None and not client.suback.done():
        client.suback.set_result(tuple(granted))


async def _subscribe(client: _Client, filters: list[str], *, no_local: bool = False) -> None:
    """Subscribe at QoS 1 and wait for the SUBACK; _Refused when any filter is refused."""
    client.suback = asyncio.get_running_loop().create_future()
    client.subscribe([gmqtt.Subscription(f, qos=1, no_local=no_local) for f in filters])
    granted = await _until_lost(client, client.suback)
    refused = [f for f, code in zip(filters, granted, strict=False) if code >= _SUBACK_FAILURE]
    if refused or len(granted) != len(filters):
        raise _Refused(f"the broker refused the subscriptions {refused or filters}")


async def _probe_shares(client: _Client, share_group: str) -> bool:
    """Whether a message on a `$oc/...` topic reaches a shared subscription to it."""
    await _subscribe(client, [f"$share/{share_group}/{client.probe_topic}"])
    client.publish(client.probe_topic, b"probe", qos=0)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await _until_lost(client, client.probe)
    except TimeoutError:
        return False
    return True


async def _until_lost(client: _Client, awaitable: Any) -> Any:
    """Await `awaitable`, or raise _Dropped if the connection closes first."""
    step = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({step, client.lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not step.done():
            step.cancel()
            await asyncio.wait({step})  # let it unwind; its outcome no longer matters
            if not step.cancelled():
                step.exception()  # retrieved, so asyncio does not report it as lost
    if step.done() and not step.cancelled():
        return step.result()
    raise _Dropped("the broker closed the connection during the handshake")


async def _discard(client: _Client) -> None:
    """Close a client's connection, quietly and within CLOSE_TIMEOUT_S."""
    if client.lost.done():
        return  # the transport is closed already
    with contextlib.suppress(OSError, MQTTError, TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await client.disconnect()


if TYPE_CHECKING:
    _conforms: type[DeviceChannel] = BrokerChannel
