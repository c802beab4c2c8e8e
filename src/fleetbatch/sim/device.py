"""One simulated device: a raw-protocol MQTT 3.1.1 client on `asyncio.Protocol`.

The simulator is the load generator of every benchmark, so answering a command is kept to a
couple of microseconds of Python: the device frames the byte stream itself, recognises a
command by one `bytes.startswith` on the raw PUBLISH, slices the request id out, builds the
response topic from pre-encoded bytes, takes the response body from a cache keyed by the
command name (found with `find`, not `json.loads`), and writes the PUBACK and the response
in one `write`. Every other packet goes whole to the codec (`PacketReader`), which validates
it. Zero-latency answers go out inline from `data_received`; delayed ones ride
`loop.call_later`, never a task per reply.

One `SimDevice` object lives for the whole run and is the protocol of each of its successive
connections; what every device shares (counters, options, caches, the reader) is in
`DeviceHub`, which keeps a connected device near 1.6 kB of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any, Final, cast

from fleetbatch.devices.auth import make_client_id, sign_password
from fleetbatch.devices.codec import (
    DISCONNECT_BYTES,
    MQTT_DEFAULT_MAX_PACKET,
    PINGREQ_BYTES,
    Connack,
    Connect,
    MalformedPacket,
    Packet,
    PacketReader,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    encode,
    read_long_remaining_length,
    remaining_length_bytes,
)
from fleetbatch.devices.topics import REQUEST_ID_MARK, device_prefix
from fleetbatch.domain.timefmt import to_compact, to_hour_stamp
from fleetbatch.sim.behavior import Behavior, draw_key, draws
from fleetbatch.sim.stats import SimStats

# connection states
OFFLINE: Final = 0  # no connection; a reconnect may be scheduled
CONNECTING: Final = 1  # TCP/TLS up or coming, waiting for CONNACK (and SUBACK)
READY: Final = 2
STOPPED: Final = 3  # refused for good, or the simulator is closing

LOST: Final = -1  # connect outcome: the connection failed or went away before it was ready

# what the device answers with (spec: device-mqtt §2.1, §2.4, §2.7)
SUBSCRIBE_SUFFIXES = (
    "sys/commands/#",
    "sys/messages/down",
    "sys/properties/set/#",
    "sys/properties/get/#",
    "sys/shadow/get/response/#",
    "sys/events/down",
)
FIRMWARE_VERSION = "1.0.0"
SOFTWARE_VERSION = "1.0.0"
REPORT_SERVICE_ID = "sim"  # the service reported when nothing was ever set
_COMMAND_NAME = re.compile(rb'"command_name"\s*:\s*"([^"\\]{0,256})"')
_RESPONSE_CACHE_MAX = 4096

# routing: the part of a downlink topic after `$oc/devices/{device_id}/`
_CMD: Final = "sys/commands/" + REQUEST_ID_MARK
_MSG_DOWN: Final = "sys/messages/down"
_PROP_SET: Final = "sys/properties/set/" + REQUEST_ID_MARK
_PROP_GET: Final = "sys/properties/get/" + REQUEST_ID_MARK
_SHADOW_RESPONSE: Final = "sys/shadow/get/response"
_EVENTS_DOWN: Final = "sys/events/down"

_PUBACK = struct.Struct(">BBH").pack
_PUBACK_HEAD = b"\x40\x02"
_PLUS: Final = ord("+")
_HASH: Final = ord("#")
_EQUALS: Final = ord("=")
_HEAD_RL2 = struct.Struct(">BBBH").pack  # first byte, 2-byte remaining length, topic length
_U16 = struct.Struct(">H").pack
_SUBSCRIBE_PACKET_ID = 1

# what an answer counts as once it is written
_COMMAND: Final = 0
_FAILED_COMMAND: Final = 1
_PROPERTY_ANSWER: Final = 2


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _now_compact() -> str:
    return to_compact(int(time.time() * 1000))


def _fixed_header(b0: int, rl: int) -> bytes:
    """First byte plus the remaining length as a variable byte integer (MQTT-2.2.3)."""
    return bytes((b0,)) + remaining_length_bytes(rl)


def publish_packet(topic: bytes, payload: bytes, qos: int, packet_id: int) -> bytes:
    """A PUBLISH built from parts known to be valid (no topic checks, unlike the codec's)."""
    tl = len(topic)
    rl = tl + 2 + len(payload)
    b0 = 0x30
    if qos:
        rl += 2
        b0 = 0x32
        tail = _U16(packet_id) + payload
    else:
        tail = payload
    return _fixed_header(b0, rl) + _U16(tl) + topic + tail


class DeviceHub:
    """What the devices of one simulator share: loop, counters, options, response caches."""

    __slots__ = (
        "_command_responses",
        "closing",
        "connect_timeout_s",
        "enqueue",
        "host",
        "keepalive_s",
        "loop",
        "ok_responses",
        "on_closed",
        "on_ready",
        "open_transports",
        "port",
        "qos",
        "reader",
        "seed",
        "sign_type",
        "ssl",
        "stats",
        "subscribe",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stats: SimStats,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        qos: int,
        subscribe: bool,
        keepalive_s: int,
        sign_type: str,
        seed: int,
        connect_timeout_s: float,
        enqueue: Callable[[SimDevice], None],
        on_ready: Callable[[], None],
        on_closed: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.qos = qos
        self.subscribe = subscribe
        self.keepalive_s = keepalive_s
        self.sign_type = sign_type
        self.seed = seed
        self.connect_timeout_s = connect_timeout_s
        self.enqueue = enqueue
        self.on_ready = on_ready
        self.on_closed = on_closed
        self.closing = False
        self.open_transports = 0
        # devices frame the stream themselves and feed it whole packets, so one reader
        # serves them all and never holds a partial packet
        self.reader = PacketReader(server_side=False)
        self._command_responses: dict[tuple[bytes, int], bytes] = {}
        # success bodies by the raw name bytes, for the fast path (names without escapes)
        self.ok_responses: dict[bytes, bytes] = {}

    def malformed(self) -> None:
        """A device got bytes that are not MQTT: count it; the failed reader is replaced."""
        self.stats.errors += 1
        self.reader = PacketReader(server_side=False)

    def command_response(self, payload: bytes, result_code: int) -> bytes:
        """The response body to a command, echoing its `command_name` (cached per name)."""
        # find() first: platforms write compact JSON; the regex, then json, handle the rest
        at = payload.find(b'"command_name":"')
        name = b""
        if at >= 0:
            at += 16
            stop = payload.find(b'"', at)
            name = payload[at:stop]
            if stop < 0 or b"\\" in name:
                name = _command_name_slow(payload)
        elif b'"command_name"' in payload:
            match = _COMMAND_NAME.search(payload)
            name = match[1] if match is not None else _command_name_slow(payload)
        key = (name, result_code)
        body = self._command_responses.get(key)
        if body is None:
            response: dict[str, Any] = {"result_code": result_code}
            if name:
                response["response_name"] = name.decode(errors="replace")
            response["paras"] = {"result": "ok" if result_code == 0 else "failed"}
            body = _json(response)
            if len(self._command_responses) >= _RESPONSE_CACHE_MAX:
                self._command_responses.clear()
                self.ok_responses.clear()
            self._command_responses[key] = body
            if result_code == 0 and name and b"\\" not in name:
                self.ok_responses[name] = body
        return body


def _command_name_slow(payload: bytes) -> bytes:
    """`command_name` of a payload the regex could not read (escapes, odd spacing)."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return b""
    name = body.get("command_name") if isinstance(body, dict) else None
    return name.encode() if isinstance(name, str) else b""


def _loads_object(payload: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


class SimDevice(asyncio.Protocol):
    """A device of the fleet file behaving as the spec's device: connects, answers, reports."""

    __slots__ = (
        "_attempt",
        "_behavior",
        "_cmd_response_prefix",
        "_cmd_topic",
        "_draw_key",
        "_drop_timer",
        "_ever_ready",
        "_fast",
        "_gen",
        "_hub",
        "_partial",
        "_pid",
        "_ping_pending",
        "_prefix",
        "_properties",
        "_report_seq",
        "_report_timer",
        "_state",
        "_timer",
        "_transport",
        "_waiter",
        "_wrote",
        "device_id",
        "secret",
    )

    def __init__(self, hub: DeviceHub, device_id: str, secret: str, behavior: Behavior) -> None:
        self._hub = hub
        self.device_id = device_id
        self.secret = secret
        self._behavior = behavior
        self._fast = not behavior.silent and not behavior.needs_draws
        self._prefix = device_prefix(device_id)
        self._cmd_topic = f"{self._prefix}{_CMD}".encode()
        self._cmd_response_prefix = (
            f"{self._prefix}sys/commands/response/{REQUEST_ID_MARK}".encode()
        )
        self._draw_key: bytes | None = None
        self._transport: asyncio.Transport | None = None
        self._partial = b""  # the start of a packet whose end has not arrived
        self._state = OFFLINE
        self._gen = 0  # bumped per lost connection: a delayed answer of an old one is dropped
        self._pid = 0
        self._wrote = False
        self._ping_pending = False
        self._waiter: asyncio.Future[int] | None = None
        self._ever_ready = False
        self._attempt = 0
        self._timer: asyncio.TimerHandle | None = None  # the scheduled reconnect
        self._drop_timer: asyncio.TimerHandle | None = None
        self._report_timer: asyncio.TimerHandle | None = None
        self._report_seq = 0
        self._properties: dict[str, dict[str, Any]] | None = None

    @property
    def behavior(self) -> Behavior:
        """How this device behaves."""
        return self._behavior

    @behavior.setter
    def behavior(self, behavior: Behavior) -> None:
        self._behavior = behavior
        self._fast = not behavior.silent and not behavior.needs_draws

    @property
    def state(self) -> int:
        """OFFLINE, CONNECTING, READY or STOPPED."""
        return self._state

    @property
    def properties(self) -> dict[str, dict[str, Any]]:
        """The property values set so far, by service id."""
        return self._properties or {}

    # --- connecting -------------------------------------------------------------------------

    async def connect(self) -> None:
        """One connect attempt: TCP (TLS), CONNECT, CONNACK (and SUBACK); schedules what follows.

        Called by the simulator's connect workers, which bound how many run at once.
        """
        hub = self._hub
        if hub.closing or self._state in (READY, STOPPED):
            return
        self._state = CONNECTING
        waiter: asyncio.Future[int] = hub.loop.create_future()
        self._waiter = waiter
        returned = False
        try:
            async with asyncio.timeout(hub.connect_timeout_s):
                await hub.loop.create_connection(
                    self._self,
                    hub.host,
                    hub.port,
                    ssl=hub.ssl,
                    server_hostname=hub.host if hub.ssl is not None else None,
                )
                returned = True
                code = await waiter
        except OSError:  # refused, unreachable, TLS failure, timeout (TimeoutError is one)
            code = LOST
        finally:
            self._waiter = None
            if not returned and self._transport is not None:
                # cancelled or timed out after connection_made but before create_connection
                # returned: the loop closes that transport itself, and uvloop then never
                # calls connection_lost, so run it here (a later real call does nothing)
                self._transport.abort()
                self.connection_lost(None)
        if code == 0:
            return
        stats = hub.stats
        if hub.closing:
            return
        if code == LOST:
            stats.connect_errors += 1
            if self._transport is not None:
                self._transport.abort()  # connection_lost schedules the retry
            elif self._state != STOPPED:
                self._state = OFFLINE
                self.schedule_reconnect()
            return
        stats.refused[code] = stats.refused.get(code, 0) + 1

    def _self(self) -> SimDevice:
        return self

    def schedule_reconnect(self) -> None:
        """Connect again after the back-off (1 s doubling to 30 s by default, with jitter)."""
        hub = self._hub
        if hub.closing or self._timer is not None or self._state == STOPPED:
            return
        jitter = self._uniform(f"backoff/{self._gen}/{self._attempt}")
        delay = self.behavior.backoff_s(self._attempt, jitter)
        self._attempt += 1
        self._timer = hub.loop.call_later(delay, self._reconnect_due)

    def _reconnect_due(self) -> None:
        self._timer = None
        if not self._hub.closing and self._state == OFFLINE:
            self._hub.enqueue(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but they are one
        transport = cast(asyncio.Transport, transport)
        hub = self._hub
        hub.open_transports += 1
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # asyncio and uvloop set it already; say so, so that no loop can leave it off
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._partial = b""
        self._ping_pending = False
        stamp = to_hour_stamp(int(time.time() * 1000))
        packet = Connect(
            client_id=make_client_id(self.device_id, stamp, hub.sign_type),
            username=self.device_id,
            password=sign_password(self.secret, stamp).encode(),
            keepalive_s=hub.keepalive_s,
            clean_session=True,
            protocol_level=4,
        )
        transport.write(encode(packet))
        self._wrote = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return  # already handled for a connection abandoned mid-connect (see connect)
        hub = self._hub
        hub.open_transports -= 1
        was = self._state
        self._transport = None
        self._partial = b""
        self._gen += 1
        self._cancel_timers()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(LOST)
        if was == READY:
            hub.stats.connected -= 1
            if not hub.closing:  # our own shutdown is not a disconnect worth counting
                hub.stats.disconnects += 1
        if hub.closing:
            self._state = STOPPED
            if hub.open_transports == 0:
                hub.on_closed()
        elif was != STOPPED:
            self._state = OFFLINE
            self.schedule_reconnect()

    def _cancel_timers(self) -> None:
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        if self._report_timer is not None:
            self._report_timer.cancel()
            self._report_timer = None

    def _on_connack(self, packet: Connack, out: list[bytes]) -> None:
        if self._state != CONNECTING:
            self._hub.stats.errors += 1
            return
        code = packet.return_code
        if code != 0:
            # Huawei's SDK gives up on a refusal; a flaky device keeps trying
            if self.behavior.flaky_s <= 0:
                self._state = STOPPED
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(code)
            if self._transport is not None:
                self._transport.close()
            return
        if self._hub.subscribe:
            prefix = self._prefix
            topics = [(prefix + suffix, 1) for suffix in SUBSCRIBE_SUFFIXES]
            out.append(encode(Subscribe(_SUBSCRIBE_PACKET_ID, topics)))
            return
        self._become_ready(out)

    def _become_ready(self, out: list[bytes]) -> None:
        hub = self._hub
        stats = hub.stats
        self._state = READY
        stats.connected += 1
        stats.connects += 1
        if self._ever_ready:
            stats.reconnects += 1
        self._ever_ready = True
        self._attempt = 0
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(0)
        behavior = self.behavior
        if behavior.flaky_s > 0:
            uptime_s = -behavior.flaky_s * math.log1p(-self._uniform(f"drop/{self._gen}"))
            self._drop_timer = hub.loop.call_later(uptime_s, self._drop)
        if behavior.report_interval_s > 0:
            self._report_timer = hub.loop.call_later(behavior.report_interval_s, self._report)
        if behavior.shadow_on_connect:
            self._report_seq += 1
            topic = f"{self._prefix}sys/shadow/get/{REQUEST_ID_MARK}sim-{self._report_seq}"
            out.append(self._publish(topic.encode(), _json({"object_device_id": self.device_id})))
        hub.on_ready()

    def _drop(self) -> None:
        """Flaky behaviour: the network goes away (no DISCONNECT), the device reconnects."""
        self._drop_timer = None
        if self._transport is not None:
            self._transport.abort()

    # --- receiving --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        n = len(data)
        if n == 4 and data[0] == 0x40 and data[1] == 2 and not self._partial:
            # the platform's PUBACK for a response: half of all reads, so short-cut first
            self._hub.stats.publish_acks_received += 1
            return
        if self._transport is None:
            return
        if self._partial:
            data = self._partial + data
            self._partial = b""
            n = len(data)
        pos = 0
        out: list[bytes] = []
        try:
            # frame the stream here; the two hot packets are handled inline, the rest goes
            # whole to the codec (so its reader, shared by every device, never buffers)
            while n - pos >= 2:
                b0 = data[pos]
                rl = data[pos + 1]
                start = pos + 2
                if rl > 127:
                    if n - pos > 2 and data[pos + 2] < 128:
                        rl = (rl & 0x7F) | (data[pos + 2] << 7)
                        start = pos + 3
                    else:
                        rl, start = read_long_remaining_length(data, pos, n)
                        if start < 0:
                            break
                end = start + rl
                if end > n:
                    if end - pos > MQTT_DEFAULT_MAX_PACKET:
                        raise MalformedPacket(f"packet of {end - pos} bytes is too large")
                    break
                if b0 == 0x32 and self._fast:
                    # a QoS 1 PUBLISH to a plain device: a command? (spec §2.1)
                    if not self._answer_command(data, start, end, out):
                        self._on_packets(self._hub.reader.feed(data[pos:end]), out)
                elif b0 == 0x40 and rl == 2:
                    self._hub.stats.publish_acks_received += 1
                else:
                    self._on_packets(self._hub.reader.feed(data[pos:end]), out)
                pos = end
        except MalformedPacket:
            self._hub.malformed()
            if self._transport is not None:
                self._transport.abort()
            return
        if pos < n:
            self._partial = data[pos:]
        if out and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            self._wrote = True

    def _answer_command(self, data: bytes, start: int, end: int, out: list[bytes]) -> bool:
        """The fast path: PUBACK and a success response in one buffer, no JSON parsing.

        `data[start:end]` is the body of a QoS 1 PUBLISH; False when it is not a plain
        command (the codec then decodes it, and validates what this skips).
        """
        ts = start + 2
        te = ts + ((data[start] << 8) | data[start + 1])
        cmd = self._cmd_topic
        if te + 2 > end or not data.startswith(cmd, ts, te):
            return False
        request_id = data[ts + len(cmd) : te]
        # ints, not b"+": `int in bytes` skips the buffer protocol (10x faster). A request id
        # that is not plain ASCII, holds a wildcard, NUL or "=" (maybe a second "request_id=")
        # goes to the codec's path, which validates it and takes the part after the last mark.
        if (
            not request_id.isascii()
            or _PLUS in request_id
            or _HASH in request_id
            or _EQUALS in request_id
            or 0 in request_id
        ):
            return False
        hub = self._hub
        # the body by the command's name, found without JSON (spec §2.1: echo it)
        body = None
        at = data.find(b'"command_name":"', te + 2, end)
        if at >= 0:
            at += 16
            stop = data.find(b'"', at, end)
            if stop >= 0:
                body = hub.ok_responses.get(data[at:stop])
        if body is None:
            body = hub.command_response(data[te + 2 : end], 0)
        topic_prefix = self._cmd_response_prefix
        tl = len(topic_prefix) + len(request_id)
        puback = _PUBACK_HEAD + data[te : te + 2]  # echoes the command's packet id
        if hub.qos:
            self._pid = pid = self._pid % 65535 + 1
            rl = tl + 4 + len(body)
            head = (
                _HEAD_RL2(0x32, rl & 0x7F | 0x80, rl >> 7, tl)
                if 127 < rl < 16_384
                else _fixed_header(0x32, rl) + _U16(tl)
            )
            parts: tuple[bytes, ...] = (puback, head, topic_prefix, request_id, _U16(pid), body)
        else:
            head = _fixed_header(0x30, tl + 2 + len(body)) + _U16(tl)
            parts = (puback, head, topic_prefix, request_id, body)
        out.append(b"".join(parts))
        stats = hub.stats
        stats.commands_received += 1
        stats.commands_answered += 1
        return True

    def _on_packets(self, packets: list[Packet], out: list[bytes]) -> None:
        for packet in packets:
            if type(packet) is Publish:
                if packet.qos:
                    if packet.qos == 2:  # fleetbatch speaks QoS 0 and 1 only
                        self._hub.stats.errors += 1
                        continue
                    out.append(_PUBACK(0x40, 2, packet.packet_id))
                topic = packet.topic
                if topic.startswith(_CMD, len(self._prefix)) and topic.startswith(self._prefix):
                    self._on_command(topic, packet.payload, out)
                else:
                    self._on_other_publish(topic, packet.payload, out)
            elif type(packet) is Puback:
                self._hub.stats.publish_acks_received += 1
            elif type(packet) is Pingresp:
                self._ping_pending = False
            elif type(packet) is Connack:
                self._on_connack(packet, out)
            elif type(packet) is Suback:
                if self._state == CONNECTING and packet.packet_id == _SUBSCRIBE_PACKET_ID:
                    if 0x80 in packet.return_codes:
                        self._hub.stats.errors += 1  # the broker refused a filter
                    self._become_ready(out)
            else:
                self._hub.stats.errors += 1

    def _publish(self, topic: bytes, payload: bytes) -> bytes:
        qos = self._hub.qos
        if qos:
            self._pid = pid = self._pid % 65535 + 1
            return publish_packet(topic, payload, qos, pid)
        return publish_packet(topic, payload, 0, 0)

    def _on_command(self, topic: str, payload: bytes, out: list[bytes]) -> None:
        hub = self._hub
        stats = hub.stats
        stats.commands_received += 1
        behavior = self.behavior
        if behavior.silent:
            stats.requests_ignored += 1
            return
        request_id = topic.rpartition(REQUEST_ID_MARK)[2]
        response_topic = self._cmd_response_prefix + request_id.encode()
        if not behavior.needs_draws:
            out.append(self._publish(response_topic, hub.command_response(payload, 0)))
            stats.commands_answered += 1
            return
        u_latency, u_fail = draws(self._key(), request_id)
        failed = u_fail < behavior.fail_rate
        body = hub.command_response(payload, behavior.fail_code if failed else 0)
        self._answer(
            self._publish(response_topic, body),
            behavior.latency.sample_s(u_latency),
            _FAILED_COMMAND if failed else _COMMAND,
            out,
        )

    def _uniform(self, label: str) -> float:
        """A seeded draw in [0, 1) for this device and `label` (timing of flaky behaviour)."""
        return draws(self._key(), label)[0]

    def _key(self) -> bytes:
        key = self._draw_key
        if key is None:
            key = self._draw_key = draw_key(self._hub.seed, self.device_id)
        return key

    def _answer(self, packet: bytes, delay_s: float, kind: int, out: list[bytes]) -> None:
        if delay_s <= 0.0:
            out.append(packet)
            _count_answer(self._hub.stats, kind)
        else:
            self._hub.loop.call_later(delay_s, self._send_later, packet, self._gen, kind)

    def _send_later(self, packet: bytes, gen: int, kind: int) -> None:
        stats = self._hub.stats
        if gen != self._gen or self._transport is None:
            stats.answers_lost += 1  # the connection it was for went away meanwhile
            return
        self._transport.write(packet)
        self._wrote = True
        _count_answer(stats, kind)

    def _on_other_publish(self, topic: str, payload: bytes, out: list[bytes]) -> None:
        at = len(self._prefix)
        if not topic.startswith(self._prefix):
            return  # a custom subscription's topic: nothing to do
        stats = self._hub.stats
        if topic.startswith(_MSG_DOWN, at):
            stats.messages_received += 1  # the PUBACK is the acknowledgement (spec §2.2)
        elif topic.startswith(_PROP_SET, at):
            stats.properties_set += 1
            self._on_properties_set(topic, payload, out)
        elif topic.startswith(_PROP_GET, at):
            stats.properties_get += 1
            self._on_properties_get(topic, payload, out)
        elif topic.startswith(_SHADOW_RESPONSE, at):
            stats.shadow_responses += 1
        elif topic.startswith(_EVENTS_DOWN, at):
            stats.events_received += 1
            self._on_events(payload, out)
        # anything else (our own responses echoed by a broker, custom topics) is ignored

    def _request_outcome(self, request_id: str) -> tuple[float, bool]:
        """(delay in seconds, failed?) of a property request."""
        behavior = self.behavior
        if not behavior.needs_draws:
            return 0.0, False
        u_latency, u_fail = draws(self._key(), request_id)
        return behavior.latency.sample_s(u_latency), u_fail < behavior.fail_rate

    def _on_properties_set(self, topic: str, payload: bytes, out: list[bytes]) -> None:
        behavior = self.behavior
        if behavior.silent:
            self._hub.stats.requests_ignored += 1
            return
        request_id = topic.rpartition(REQUEST_ID_MARK)[2]
        delay_s, failed = self._request_outcome(request_id)
        body = _loads_object(payload)
        services = body.get("services") if body is not None else None
        if failed or not isinstance(services, list):
            code = behavior.fail_code if failed else 1  # 1: a set request we cannot read
            response = {"result_code": code, "result_desc": "failed"}
        else:
            store = self._properties
            if store is None:
                store = self._properties = {}
            for service in services:
                if not isinstance(service, dict):
                    continue
                service_id = service.get("service_id")
                values = service.get("properties")
                if isinstance(service_id, str) and isinstance(values, dict):
                    store.setdefault(service_id, {}).update(values)
            response = {"result_code": 0, "result_desc": "success"}
        response_topic = f"{self._prefix}sys/properties/set/response/{REQUEST_ID_MARK}{request_id}"
        packet = self._publish(response_topic.encode(), _json(response))
        self._answer(packet, delay_s, _PROPERTY_ANSWER, out)

    def _on_properties_get(self, topic: str, payload: bytes, out: list[bytes]) -> None:
        behavior = self.behavior
        if behavior.silent:
            self._hub.stats.requests_ignored += 1
            return
        request_id = topic.rpartition(REQUEST_ID_MARK)[2]
        delay_s, failed = self._request_outcome(request_id)
        if failed:
            # a get response has no result code (spec §2.4): a failing device does not answer
            self._hub.stats.requests_ignored += 1
            return
        body = _loads_object(payload) or {}
        wanted = body.get("service_id")
        event_time = _now_compact()
        services = [
            {"service_id": service_id, "properties": values, "event_time": event_time}
            for service_id, values in (self._properties or {}).items()
            if not isinstance(wanted, str) or not wanted or wanted == service_id
        ]
        response_topic = f"{self._prefix}sys/properties/get/response/{REQUEST_ID_MARK}{request_id}"
        packet = self._publish(response_topic.encode(), _json({"services": services}))
        self._answer(packet, delay_s, _PROPERTY_ANSWER, out)

    def _on_events(self, payload: bytes, out: list[bytes]) -> None:
        if self.behavior.silent:
            return
        body = _loads_object(payload) or {}
        services = body.get("services")
        if not isinstance(services, list):
            return
        for service in services:
            if (
                isinstance(service, dict)
                and service.get("service_id") == "$ota"
                and service.get("event_type") == "version_query"
            ):
                report = {
                    "object_device_id": body.get("object_device_id") or self.device_id,
                    "services": [
                        {
                            "service_id": "$ota",
                            "event_type": "version_report",
                            "event_time": _now_compact(),
                            "paras": {
                                "fw_version": FIRMWARE_VERSION,
                                "sw_version": SOFTWARE_VERSION,
                            },
                        }
                    ],
                }
                topic = f"{self._prefix}sys/events/up".encode()
                out.append(self._publish(topic, _json(report)))
                self._hub.stats.version_reports += 1

    # --- timers -----------------------------------------------------------------------------

    def _report(self) -> None:
        """Periodic property report (spec §2.3): the values set so far, or a counter."""
        self._report_timer = None
        transport = self._transport
        if transport is None or self._state != READY:
            return
        self._report_seq += 1
        event_time = _now_compact()
        if self._properties:
            services = [
                {"service_id": service_id, "properties": values, "event_time": event_time}
                for service_id, values in self._properties.items()
            ]
        else:
            services = [
                {
                    "service_id": REPORT_SERVICE_ID,
                    "properties": {"seq": self._report_seq},
                    "event_time": event_time,
                }
            ]
        topic = f"{self._prefix}sys/properties/report".encode()
        transport.write(self._publish(topic, _json({"services": services})))
        self._wrote = True
        self._hub.stats.reports_sent += 1
        interval_s = self.behavior.report_interval_s
        self._report_timer = self._hub.loop.call_later(interval_s, self._report)

    def keepalive_tick(self) -> None:
        """Called every half keepalive: PINGREQ when idle, drop a peer that stopped answering."""
        transport = self._transport
        if transport is None or self._state != READY:
            return
        if self._ping_pending:
            self._hub.stats.errors += 1  # no PINGRESP within half a keepalive: a dead peer
            transport.abort()
            return
        if not self._wrote:
            transport.write(PINGREQ_BYTES)
            self._ping_pending = True
            self._hub.stats.pings_sent += 1
        self._wrote = False

    def abort(self) -> None:
        """Drop the connection at once (a close that did not finish in time)."""
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Simulator shutdown: DISCONNECT and close; no reconnect follows."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._cancel_timers()
        transport = self._transport
        if transport is not None:
            if self._state == READY:
                transport.write(DISCONNECT_BYTES)
            transport.close()
        if self._state != READY:
            self._state = STOPPED


def _count_answer(stats: SimStats, kind: int) -> None:
    if kind == _COMMAND:
        stats.commands_answered += 1
    elif kind == _FAILED_COMMAND:
        stats.commands_answered += 1
        stats.commands_failed += 1
