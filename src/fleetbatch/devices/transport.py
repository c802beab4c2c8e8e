"""The built-in device transport: fleetbatch's own MQTT 3.1.1 endpoint for devices.

Devices of Huawei's SDKs never SUBSCRIBE to their system topics and sign their password with
the current hour, so the platform terminates MQTT itself (as IoTDA's device access does):

- CONNECT is checked by `DeviceAuthenticator` (spec: device-mqtt §1.2); a refusal is
  CONNACK 4 or 5 and the socket closed.
- System downlinks (`$oc/devices/{id}/sys/...`) reach a connected device without any
  SUBSCRIBE; explicit subscriptions inside the device's own prefix are granted (they also
  enable its `user/...` topics), any other filter gets 0x80.
- A device publishes only under its own prefix; anything else closes its connection.
- One connection per device: a second CONNECT of the same device replaces the first.
- Keepalive is enforced at 1.5 x (MQTT-3.1.2-24); malformed or out-of-order packets close
  that connection only.

One `asyncio.Protocol` per connection on one buffer, no streams and no task per packet; a
request waits on one dict entry keyed by its answer's topic, and deadlines (replies, PUBACKs,
keepalives, CONNECT) are expired by periodic sweeps, never a timer each (DESIGN.md: both cost
15-25% of the round-trip rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from fleetbatch.clock import Clock
from fleetbatch.devices.authenticator import AuthResult, DeviceAuthenticator
from fleetbatch.devices.channel import (
    Delivery,
    DeviceOffline,
    ExpiryWheel,
    Listeners,
    PendingReplies,
    PresenceHandler,
    UplinkHandler,
    answer_topic,
)
from fleetbatch.devices.codec import (
    PINGRESP_BYTES,
    SUBACK_FAILURE,
    ConnackCode,
    Connect,
    Disconnect,
    MalformedPacket,
    PacketReader,
    Pingreq,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode,
    encode_connack,
    encode_puback,
    encode_publish,
)
from fleetbatch.devices.presence import PresenceRecorder
from fleetbatch.devices.topics import (
    Downlink,
    Uplink,
    device_prefix,
    is_system_topic,
    may_subscribe,
    parse_uplink,
    topic_matches,
)

log = logging.getLogger(__name__)

KEEPALIVE_FACTOR = 1.5  # MQTT-3.1.2-24
WATCH_INTERVAL_S = 0.5
CLOSE_TIMEOUT_S = 2.0
# a device that stops reading while downlinks pile up is cut off past this many buffered bytes
MAX_WRITE_BUFFER = 4 * 1024 * 1024
SUPPORTED_PROTOCOL_LEVELS = (3, 4)  # MQTT 3.1 and 3.1.1
# bounds on what one connection can make us hold
MAX_EARLY_PACKETS = 64  # packets pipelined behind CONNECT while it is checked
MAX_SUBSCRIPTIONS = 100  # filters per device (its own topics only, so a few suffice)
MAX_TRACKED_ACKS = 65_535 // 2  # QoS 1 sends awaiting PUBACK; leaves ids for the rest


# connection states: plain ints, compared on every packet
NEW = 0  # waiting for CONNECT
AUTHENTICATING = 1
CONNECTED = 2
CLOSED = 3


@dataclass(slots=True)
class TransportStats:
    """Counters of what the transport did since it started."""

    accepted: int = 0
    refused: int = 0
    replaced: int = 0
    malformed: int = 0
    protocol_violations: int = 0
    keepalive_timeouts: int = 0
    uplinks: int = 0
    downlinks: int = 0


class _Unacknowledged(Exception):
    """A QoS 1 downlink got no PUBACK in time (internal: becomes Delivery.UNACKNOWLEDGED)."""


LISTEN_BACKLOG = 2048


class BuiltinTransport:
    """Devices connect to fleetbatch itself; implements the `DeviceChannel` interface."""

    def __init__(
        self,
        authenticator: DeviceAuthenticator,
        clock: Clock,
        *,
        presence: PresenceRecorder | None = None,
        max_packet_bytes: int = 1024 * 1024,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.authenticator = authenticator
        self.clock = clock
        self.presence = presence
        self.max_packet_bytes = max_packet_bytes
        self.connect_timeout_s = connect_timeout_s
        self.stats = TransportStats()
        self.sessions: dict[str, MqttConnection] = {}
        self.connections: set[MqttConnection] = set()
        self.pending = PendingReplies()
        self.listeners = Listeners()
        self._acks = ExpiryWheel()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closing = False
        self._drained = asyncio.Event()
        self._dirty_connections: list[MqttConnection] = []
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self.now = time.monotonic()  # coarse, refreshed by the watcher: activity stamps

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sweepers; `listen()` then adds listening sockets."""
        if self._started:
            return
        self._started = True
        # looked up once: asyncio.get_running_loop() costs a getpid() syscall per call
        self.loop = asyncio.get_running_loop()
        self._own(self.pending.run_sweeper(), "mqtt-replies")
        self._own(self._acks.run(), "mqtt-acks")
        self._own(self._watch(), "mqtt-watch")

    async def listen(self, sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> None:
        """Accept device connections on an already bound, listening socket."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: MqttConnection(self),
            sock=sock,
            ssl=ssl_context,
            # create_server listens again with its own backlog (100 unless told): keep a
            # connect storm's queue as deep as the socket was made
            backlog=LISTEN_BACKLOG,
            ssl_handshake_timeout=self.connect_timeout_s if ssl_context else None,
        )
        self._servers.append(server)

    async def close(self) -> None:
        """Stop accepting, close every connection, fail what still waits."""
        if self._closing:
            return
        self._closing = True
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.close()
        if self.connections:
            # connection_lost runs on later loop turns: wait so every disconnect is recorded
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self._drained.wait()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self.pending.fail_all()
        self._acks.fail_all()
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()

    def _own(self, coroutine: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _watch(self) -> None:
        """Close connections that never sent CONNECT or went silent past their keepalive."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = self.now = time.monotonic()
            for connection in list(self.connections):
                if connection.state == CONNECTED:
                    limit = connection.keepalive_s * KEEPALIVE_FACTOR
                    if limit and now - connection.last_rx > limit:
                        self.stats.keepalive_timeouts += 1
                        log.debug("mqtt.keepalive_expired device_id=%s", connection.device_id)
                        # the peer is gone: a graceful close would wait on its unread bytes
                        connection.abort()
                elif connection.state == CLOSED:
                    # closed gracefully but the peer never took the last bytes: drop it
                    if now - connection.closed_at > CLOSE_TIMEOUT_S:
                        connection.abort()
                elif now - connection.opened_at > self.connect_timeout_s:
                    connection.abort()  # no complete TLS handshake + CONNECT in time

    # --- DeviceChannel -----------------------------------------------------------------

    def add_uplink_handler(self, handler: UplinkHandler) -> None:
        """Call `handler` with every uplink no request is waiting for."""
        self.listeners.uplink.append(handler)

    def add_presence_handler(self, handler: PresenceHandler) -> None:
        """Call `handler(device_id, online, at_ms)` on every connect and disconnect."""
        self.listeners.presence.append(handler)

    def is_online(self, device_id: str) -> bool | None:
        """Whether the device holds a connection to this server."""
        return device_id in self.sessions

    async def send(self, downlink: Downlink, *, timeout_s: float) -> Delivery:
        """Write the downlink to the device's socket; QoS 1 waits for the device's PUBACK."""
        connection = self.sessions.get(downlink.device_id)
        if connection is None:
            return Delivery.OFFLINE
        if not connection.accepts(downlink.topic):
            return Delivery.UNACKNOWLEDGED
        if downlink.qos == 0:
            delivered = connection.publish(downlink.topic, downlink.payload, 0)
            return Delivery.DELIVERED if delivered else Delivery.OFFLINE
        future = connection.publish_tracked(downlink.topic, downlink.payload)
        if future is None:
            return Delivery.OFFLINE
        self._acks.add(future, timeout_s, _Unacknowledged)
        try:
            acked = await future
        except _Unacknowledged:
            connection.forget_ack(future)
            return Delivery.UNACKNOWLEDGED
        except BaseException:
            # cancelled: free the packet id, and let the wheel find the future done
            connection.forget_ack(future)
            future.cancel()
            raise
        return Delivery.DELIVERED if acked else Delivery.UNACKNOWLEDGED

    async def request(self, downlink: Downlink, *, timeout_s: float) -> Uplink:
        """Send a downlink and return the device's answer on `downlink.response_topic`."""
        return await self.pending.wait(downlink, self.submit(downlink, timeout_s=timeout_s))

    def submit(
        self,
        downlink: Downlink,
        *,
        timeout_s: float,
        on_delivered: Callable[[], None] | None = None,
    ) -> asyncio.Future[Uplink]:
        """Write the downlink now; the future resolves to the device's answer.

        `on_delivered` is called on the device's PUBACK (QoS 0: once written).
        """
        topic = answer_topic(downlink)
        connection = self.sessions.get(downlink.device_id)
        if connection is None:
            raise DeviceOffline(downlink.device_id)
        # wait before writing: the answer can come back before the write returns
        future = self.pending.expect(topic, downlink.device_id, timeout_s)
        if on_delivered is None or downlink.qos == 0:
            # the plain path: no PUBACK is tracked (a command's answer says enough)
            written = connection.publish(downlink.topic, downlink.payload, downlink.qos)
            if written and on_delivered is not None:
                on_delivered()
        else:
            notify = on_delivered
            written = self._publish_tracked(
                connection, downlink, timeout_s, lambda acked: notify() if acked else None
            )
        if not written:
            self.pending.forget(topic, future)
            future.cancel()
            raise DeviceOffline(downlink.device_id)
        return future

    def post(self, downlink: Downlink, *, timeout_s: float) -> asyncio.Future[Delivery]:
        """Write the downlink now; the future tells what became of it (see `send`)."""
        loop = self.loop or asyncio.get_running_loop()
        result: asyncio.Future[Delivery] = loop.create_future()
        connection = self.sessions.get(downlink.device_id)
        if connection is None:
            result.set_result(Delivery.OFFLINE)
        elif not connection.accepts(downlink.topic):
            result.set_result(Delivery.UNACKNOWLEDGED)
        elif downlink.qos == 0:
            written = connection.publish(downlink.topic, downlink.payload, 0)
            result.set_result(Delivery.DELIVERED if written else Delivery.OFFLINE)
        else:

            def settle(acked: bool) -> None:
                if not result.done():
                    result.set_result(Delivery.DELIVERED if acked else Delivery.UNACKNOWLEDGED)

            if not self._publish_tracked(connection, downlink, timeout_s, settle):
                result.set_result(Delivery.OFFLINE)
        return result

    def _publish_tracked(
        self,
        connection: MqttConnection,
        downlink: Downlink,
        timeout_s: float,
        then: Callable[[bool], object],
    ) -> bool:
        """Publish at QoS 1 and call `then(acked)` once, without a task; False if not written.

        `then(False)` comes when no PUBACK arrives within `timeout_s` (the wheel expires
        the wait and frees its packet id) or the connection ends first.
        """
        acked = connection.publish_tracked(downlink.topic, downlink.payload)
        if acked is None:
            return False
        self._acks.add(acked, timeout_s, _Unacknowledged)

        def settled(future: asyncio.Future[bool]) -> None:
            if future.cancelled():
                then(False)
            elif future.exception() is not None:
                connection.forget_ack(future)
                then(False)
            else:
                then(future.result())

        acked.add_done_callback(settled)
        return True

    async def disconnect(self, device_id: str) -> None:
        """Close the device's connection, if it has one."""
        connection = self.sessions.get(device_id)
        if connection is not None:
            connection.close()

    # --- called by connections ---------------------------------------------------------

    def _dirty(self, connection: MqttConnection) -> None:
        # writes are gathered per loop turn and flushed together: the same number of send
        # calls, but the devices' side is woken once per burst instead of once per write
        if not self._dirty_connections:
            (self.loop or asyncio.get_running_loop()).call_soon(self._flush)
        self._dirty_connections.append(connection)

    def _flush(self) -> None:
        dirty, self._dirty_connections = self._dirty_connections, []
        for connection in dirty:
            connection.flush()

    def _authenticate(self, connection: MqttConnection, packet: Connect) -> None:
        self._own(connection.authenticate(packet), "mqtt-auth")

    def _session_opened(self, connection: MqttConnection) -> None:
        device_id = connection.device_id
        assert device_id is not None
        previous = self.sessions.get(device_id)
        self.sessions[device_id] = connection
        if previous is not None and previous is not connection:
            # MQTT-3.1.4-2: the newer connection of a client id wins
            self.stats.replaced += 1
            previous.close()
        self.stats.accepted += 1
        at_ms = self.clock.now_ms()
        if self.presence is not None:
            self.presence.record(device_id, True, at_ms)
        self.listeners.presence_changed(device_id, True, at_ms)

    def _session_closed(self, connection: MqttConnection) -> None:
        device_id = connection.device_id
        if device_id is None or self.sessions.get(device_id) is not connection:
            return  # never authenticated, or already replaced by a newer connection
        del self.sessions[device_id]
        at_ms = self.clock.now_ms()
        if self.presence is not None:
            self.presence.record(device_id, False, at_ms)
        self.listeners.presence_changed(device_id, False, at_ms)

    def _uplink(self, connection: MqttConnection, topic: str, payload: bytes) -> None:
        device_id = connection.device_id
        assert device_id is not None
        self.stats.uplinks += 1
        now_ms = self.clock.now_ms()
        uplink = parse_uplink(device_id, topic, payload, now_ms)
        if self.presence is not None:
            self.presence.touch(device_id, now_ms)
        if not self.pending.resolve(uplink):
            self.listeners.uplink_received(uplink)


class MqttConnection(asyncio.Protocol):
    """One device's connection: parses its packets and writes its downlinks."""

    __slots__ = (
        "_acks",
        "_early",
        "_next_packet_id",
        "_outbox",
        "_reader",
        "_subscriptions",
        "_will",
        "closed_at",
        "device_id",
        "keepalive_s",
        "last_rx",
        "opened_at",
        "prefix",
        "server",
        "state",
        "transport",
    )

    def __init__(self, server: BuiltinTransport) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.state = NEW
        self.device_id: str | None = None
        self.prefix = ""
        self.keepalive_s = 0
        self.opened_at = self.last_rx = server.now
        self.closed_at = 0.0
        self._reader = PacketReader(server_side=True, max_packet_size=server.max_packet_bytes)
        self._early: list[Any] | None = None
        self._subscriptions: list[str] | None = None
        self._acks: dict[int, asyncio.Future[bool]] | None = None
        self._next_packet_id = 0
        self._will: Publish | None = None
        self._outbox: list[bytes] | None = None

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.opened_at = self.last_rx = time.monotonic()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # small request/response packets: never wait for Nagle
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.server._closing:
            self.transport.abort()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # device_id is set only once the device was accepted
        was_connected = self.device_id is not None
        self.state = CLOSED
        server = self.server
        server.connections.discard(self)
        if server._closing and not server.connections:
            server._drained.set()
        if self._acks:
            for future in self._acks.values():
                if not future.done():
                    future.set_result(False)
            self._acks = None
        if was_connected:
            if self._will is not None:
                # an unexpected end publishes the will (MQTT-3.1.2-8); it is an uplink here
                will, self._will = self._will, None
                server._uplink(self, will.topic, will.payload)
            server._session_closed(self)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.server.now
        try:
            packets = self._reader.feed(data)
        except MalformedPacket as exc:
            self.server.stats.malformed += 1
            log.debug("mqtt.malformed device_id=%s reason=%s", self.device_id, exc)
            self.close()
            return
        if self.state == CONNECTED:
            # the hot path: a connected device's packets, PUBLISH first
            for packet in packets:
                if type(packet) is Publish:
                    self._publish_received(packet)
                else:
                    self._handle(packet)
                if self.state != CONNECTED:
                    return
            return
        # authentication is asynchronous: nothing here becomes CONNECTED within this call
        for packet in packets:
            if self.state == AUTHENTICATING:
                # a client may send packets right behind its CONNECT, before our CONNACK
                assert self._early is not None
                if isinstance(packet, Connect):
                    self._violation("second CONNECT")
                    return
                if len(self._early) >= MAX_EARLY_PACKETS:
                    self._violation("too many packets before CONNACK")
                    return
                self._early.append(packet)
            elif self.state == NEW:
                if not isinstance(packet, Connect):
                    self._violation("first packet is not CONNECT")  # MQTT-3.1.0-1
                    return
                self._connect(packet)
            else:
                return

    # --- packets -----------------------------------------------------------------------

    def _handle(self, packet: Any) -> None:
        kind = type(packet)
        if kind is Publish:
            self._publish_received(packet)
        elif kind is Puback:
            if self._acks is not None:
                future = self._acks.pop(packet.packet_id, None)
                if future is not None and not future.done():
                    future.set_result(True)
        elif kind is Pingreq:
            self._write(PINGRESP_BYTES)
            presence = self.server.presence
            if presence is not None and self.device_id is not None:
                presence.touch(self.device_id, self.server.clock.now_ms())
        elif kind is Subscribe:
            self._subscribe(packet)
        elif kind is Unsubscribe:
            if self._subscriptions:
                for topic_filter in packet.topics:
                    with contextlib.suppress(ValueError):
                        self._subscriptions.remove(topic_filter)
            self._write(encode(Unsuback(packet.packet_id)))
        elif kind is Disconnect:
            self._will = None  # MQTT-3.14.4-3: a clean end discards the will
            self.close()
        elif kind is Connect:
            self._violation("second CONNECT")  # MQTT-3.1.0-2
        else:
            self._violation(f"unexpected {kind.__name__}")

    def _publish_received(self, packet: Publish) -> None:
        topic = packet.topic
        if not topic.startswith(self.prefix):
            self._violation("publish outside the device's own topics")
            return
        qos = packet.qos
        if qos == 1:
            self._send(encode_puback(packet.packet_id))
        elif qos == 2:
            # IoTDA supports QoS 0 and 1 only
            self._violation("QoS 2 is not supported")
            return
        self.server._uplink(self, topic, packet.payload)

    def _subscribe(self, packet: Subscribe) -> None:
        device_id = self.device_id
        assert device_id is not None
        codes: list[int] = []
        for topic_filter, qos in packet.topics:
            if may_subscribe(device_id, topic_filter):
                if self._subscriptions is None:
                    self._subscriptions = []
                if topic_filter not in self._subscriptions:
                    if len(self._subscriptions) >= MAX_SUBSCRIPTIONS:
                        codes.append(SUBACK_FAILURE)
                        continue
                    self._subscriptions.append(topic_filter)
                codes.append(min(qos, 1))
            else:
                codes.append(SUBACK_FAILURE)
        self._write(encode(Suback(packet.packet_id, codes)))

    def _connect(self, packet: Connect) -> None:
        self.state = AUTHENTICATING
        self._early = []
        if packet.protocol_level not in SUPPORTED_PROTOCOL_LEVELS:
            self._refuse(ConnackCode.UNACCEPTABLE_PROTOCOL, "protocol level")
            return
        self.keepalive_s = packet.keepalive_s
        self.server._authenticate(self, packet)

    async def authenticate(self, packet: Connect) -> None:
        """Check the CONNECT's credentials, then accept or refuse the connection."""
        server = self.server
        try:
            result: AuthResult = await server.authenticator.authenticate(
                packet.client_id, packet.username, packet.password
            )
        except Exception:
            log.exception("mqtt.auth_failed")
            self._refuse(ConnackCode.SERVER_UNAVAILABLE, "authentication error")
            return
        if self.state != AUTHENTICATING:
            return  # the socket closed while we looked the device up
        if not result.ok:
            assert result.failure is not None
            self._refuse(int(result.failure), result.reason)
            return
        device_id = result.device_id
        assert device_id is not None
        prefix = device_prefix(device_id)
        if packet.will is not None:
            if not packet.will.topic.startswith(prefix):
                self._refuse(ConnackCode.NOT_AUTHORIZED, "will topic outside own topics")
                return
            self._will = Publish(packet.will.topic, packet.will.message, packet.will.qos)
        self.device_id = device_id
        self.prefix = prefix
        self.state = CONNECTED
        self._write(encode_connack(ConnackCode.ACCEPTED))
        server._session_opened(self)
        early, self._early = self._early or [], None
        for queued in early:
            if self.state != CONNECTED:
                break
            self._handle(queued)

    def _refuse(self, code: int, reason: str) -> None:
        self.server.stats.refused += 1
        log.debug("mqtt.refused code=%s reason=%s", code, reason)
        self._write(encode_connack(code))
        self.close()

    def _violation(self, reason: str) -> None:
        self.server.stats.protocol_violations += 1
        log.debug("mqtt.protocol_violation device_id=%s reason=%s", self.device_id, reason)
        self.close()

    # --- downlinks ---------------------------------------------------------------------

    def accepts(self, topic: str) -> bool:
        """System topics always reach the device; other topics need a matching subscription."""
        assert self.device_id is not None
        if is_system_topic(self.device_id, topic):
            return True
        return any(topic_matches(f, topic) for f in self._subscriptions or ())

    def _packet_id(self) -> int:
        # at most MAX_TRACKED_ACKS ids are taken, so this finds a free one quickly
        packet_id = self._next_packet_id % 65535 + 1
        acks = self._acks
        if acks:
            while packet_id in acks:
                packet_id = packet_id % 65535 + 1
        self._next_packet_id = packet_id
        return packet_id

    def publish(self, topic: str, payload: bytes, qos: int) -> bool:
        """Queue a PUBLISH; False when the connection is gone (or closing)."""
        if self.state != CONNECTED:
            return False
        packet_id = self._packet_id() if qos else 0
        self._send(encode_publish(topic, payload, qos, packet_id))
        self.server.stats.downlinks += 1
        return True

    def publish_tracked(self, topic: str, payload: bytes) -> asyncio.Future[bool] | None:
        """Publish at QoS 1; the future is True on PUBACK, False if the connection ends first."""
        transport = self.transport
        if self.state != CONNECTED or transport is None or transport.is_closing():
            return None
        if self._acks is None:
            self._acks = {}
        elif len(self._acks) >= MAX_TRACKED_ACKS:
            # the device stopped acknowledging: it is of no use to wait on more
            log.warning("mqtt.acks_exhausted device_id=%s", self.device_id)
            self.close()
            return None
        packet_id = self._packet_id()
        loop = self.server.loop or asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._acks[packet_id] = future
        self._send(encode_publish(topic, payload, 1, packet_id))
        self.server.stats.downlinks += 1
        return future

    def forget_ack(self, future: asyncio.Future[bool]) -> None:
        """Drop an expired PUBACK wait so its packet id can be reused."""
        if self._acks:
            for packet_id, waiting in self._acks.items():
                if waiting is future:
                    del self._acks[packet_id]
                    return

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(data)

    def _send(self, data: bytes) -> None:
        """Queue bytes for this loop turn's flush (one write per connection per turn)."""
        outbox = self._outbox
        if outbox is None:
            self._outbox = [data]
            self.server._dirty(self)
        else:
            outbox.append(data)

    def flush(self) -> None:
        """Write what this turn queued; a device that stopped reading is cut off."""
        outbox, self._outbox = self._outbox, None
        transport = self.transport
        if not outbox or transport is None or transport.is_closing():
            return
        transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("mqtt.slow_consumer device_id=%s", self.device_id)
            self.abort()

    def abort(self) -> None:
        """Drop the connection now, with whatever is still unwritten (the peer is not reading)."""
        self.state = CLOSED
        self._outbox = None
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close the socket after what was written; connection_lost cleans up.

        The state turns CLOSED at once, so nothing else read in the same chunk is handled.
        """
        if self.state != CLOSED:
            self.state = CLOSED
            self.closed_at = self.server.now
        if self.transport is not None and not self.transport.is_closing():
            self.flush()  # a refusal's CONNACK goes out before the close
            self.transport.close()
