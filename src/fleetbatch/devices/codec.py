"""MQTT 3.1.1 packet codec: bytes to packets and back, no I/O.

Both ends of the device link use it: the built-in transport decodes what clients send
(`PacketReader(server_side=True)`), the device simulator decodes what the server sends
(`server_side=False`). Section numbers (`MQTT-x.y.z-n`) refer to the OASIS MQTT 3.1.1
standard. PUBLISH and PUBACK are the hot path and are decoded and encoded inline; everything
else goes through one validating function per packet type.

fleetbatch speaks QoS 0 and 1 only: a PUBLISH with QoS 2 decodes (the server decides what to
do with it), but PUBREC, PUBREL and PUBCOMP raise `MalformedPacket`, which closes the
connection, since no QoS 2 flow can ever have been started.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

__all__ = [
    "DISCONNECT_BYTES",
    "MQTT_DEFAULT_MAX_PACKET",
    "PINGREQ_BYTES",
    "PINGRESP_BYTES",
    "SUBACK_FAILURE",
    "Connack",
    "ConnackCode",
    "Connect",
    "Disconnect",
    "MalformedPacket",
    "Packet",
    "PacketReader",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Puback",
    "Publish",
    "Suback",
    "Subscribe",
    "Unsuback",
    "Unsubscribe",
    "Will",
    "encode",
    "encode_connack",
    "encode_puback",
    "encode_publish",
]

MQTT_DEFAULT_MAX_PACKET = 1024 * 1024  # bytes, whole packet incl. fixed header
MAX_REMAINING_LENGTH = 268_435_455  # four 7-bit groups, MQTT-2.2.3
SUBACK_FAILURE = 0x80

PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


class MalformedPacket(ValueError):
    """The bytes are not a valid MQTT 3.1.1 packet; the connection must be closed."""


class PacketType(IntEnum):
    """Control packet types, the high nibble of the first byte (MQTT-2.2.1)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ConnackCode(IntEnum):
    """CONNACK return codes (MQTT-3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


@dataclass(slots=True)
class Will:
    """The message the server publishes when the client goes away uncleanly."""

    topic: str
    message: bytes
    qos: int
    retain: bool


@dataclass(slots=True)
class Connect:
    """CONNECT. For a protocol level other than 3 or 4 only the header fields are decoded."""

    client_id: str
    username: str | None = None
    password: bytes | None = None
    keepalive_s: int = 0
    clean_session: bool = True
    protocol_level: int = 4
    will: Will | None = None


@dataclass(slots=True)
class Connack:
    """CONNACK; `return_code` is a `ConnackCode` value."""

    return_code: int
    session_present: bool = False


@dataclass(slots=True)
class Publish:
    """PUBLISH; `packet_id` is 0 exactly when `qos` is 0."""

    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int = 0
    retain: bool = False
    dup: bool = False


@dataclass(slots=True)
class Puback:
    """PUBACK."""

    packet_id: int


@dataclass(slots=True)
class Subscribe:
    """SUBSCRIBE: (topic filter, requested QoS) pairs."""

    packet_id: int
    topics: list[tuple[str, int]]


@dataclass(slots=True)
class Suback:
    """SUBACK: one granted QoS or `SUBACK_FAILURE` per requested filter."""

    packet_id: int
    return_codes: list[int]


@dataclass(slots=True)
class Unsubscribe:
    """UNSUBSCRIBE."""

    packet_id: int
    topics: list[str]


@dataclass(slots=True)
class Unsuback:
    """UNSUBACK."""

    packet_id: int


@dataclass(slots=True)
class Pingreq:
    """PINGREQ."""


@dataclass(slots=True)
class Pingresp:
    """PINGRESP."""


@dataclass(slots=True)
class Disconnect:
    """DISCONNECT."""


Packet: TypeAlias = (
    Connect
    | Connack
    | Publish
    | Puback
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
)

# --- decoding ------------------------------------------------------------------------------

# Which packet types each side may receive (MQTT-2.2.1 table 2.1, "direction of flow").
_FROM_CLIENT = frozenset({1, 3, 4, 5, 6, 7, 8, 10, 12, 14})
_FROM_SERVER = frozenset({2, 3, 4, 5, 6, 7, 9, 11, 13})
_SUBACK_CODES = frozenset({0, 1, 2, SUBACK_FAILURE})


class PacketReader:
    """Incremental parser: feed() the bytes as they arrive, get the complete packets back."""

    __slots__ = ("_allowed", "_buf", "_failed", "_max", "_need")

    def __init__(
        self, *, server_side: bool, max_packet_size: int = MQTT_DEFAULT_MAX_PACKET
    ) -> None:
        self._allowed = _FROM_CLIENT if server_side else _FROM_SERVER
        self._max = max_packet_size
        self._buf = bytearray()
        # bytes the buffered packet needs in all; 0 while its fixed header is incomplete
        self._need = 0
        self._failed = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Decode every packet `data` completes; keep any partial packet for the next call.

        Raises `MalformedPacket` on the first violation; the reader then refuses all input,
        and packets earlier in the same chunk are dropped with the connection.
        """
        chunk: bytes
        if self._buf or self._failed:
            if self._failed:
                raise MalformedPacket("reader failed earlier; the connection must be closed")
            buf = self._buf
            buf += data
            if len(buf) < self._need:
                return []  # a large packet trickling in is not re-parsed per chunk
            chunk = bytes(buf)
            buf.clear()
        elif type(data) is bytes:
            chunk = data  # the common case: parse in place, slice out only topic and payload
        else:
            chunk = bytes(data)
        out: list[Packet] = []
        pos = 0
        n = len(chunk)
        need = 0  # the size of a trailing partial packet, once its fixed header is complete
        try:
            while pos + 1 < n:
                b0 = chunk[pos]
                rl = chunk[pos + 1]
                start = pos + 2
                if rl > 127:
                    if pos + 2 < n and chunk[pos + 2] < 128:
                        # two length bytes: what a PUBLISH with a 100-byte payload has
                        rl = (rl & 0x7F) | (chunk[pos + 2] << 7)
                        start = pos + 3
                    else:
                        rl, start = read_long_remaining_length(chunk, pos, n)
                        if start < 0:
                            break  # the length's continuation bytes have not all arrived
                end = start + rl
                if end - pos > self._max:
                    raise MalformedPacket(
                        f"packet of {end - pos} bytes exceeds the {self._max}-byte limit"
                    )
                if end > n:
                    need = end - pos
                    break
                if b0 & 0xF0 == 0x30:
                    # PUBLISH inline: the hot path on both sides (MQTT-3.3)
                    qos = (b0 >> 1) & 3
                    if end - start < 2:
                        raise MalformedPacket("PUBLISH too short for its topic length")
                    ts = start + 2
                    te = ts + ((chunk[start] << 8) | chunk[start + 1])
                    if te > end or te == ts:
                        raise MalformedPacket("PUBLISH topic empty or beyond the packet")
                    try:
                        topic = chunk[ts:te].decode()
                    except UnicodeDecodeError:
                        raise MalformedPacket("PUBLISH topic is not UTF-8") from None
                    # checked on the str: three `in` on bytes cost 10x more
                    if "+" in topic or "#" in topic or "\x00" in topic:
                        # MQTT-3.3.2-2 wildcards; MQTT-1.5.3-2 U+0000
                        raise MalformedPacket("PUBLISH topic holds a wildcard or U+0000")
                    if qos:
                        if qos == 3:
                            raise MalformedPacket("PUBLISH QoS 3")  # MQTT-3.3.1-4
                        if te + 2 > end:
                            raise MalformedPacket("PUBLISH too short for its packet id")
                        pid = (chunk[te] << 8) | chunk[te + 1]
                        if not pid:
                            raise MalformedPacket("PUBLISH packet id 0")  # MQTT-2.3.1-1
                        out.append(
                            Publish(topic, chunk[te + 2 : end], qos, pid, bool(b0 & 1), b0 & 8 > 0)
                        )
                    elif b0 & 8:
                        raise MalformedPacket("PUBLISH QoS 0 with DUP set")  # MQTT-3.3.1-2
                    else:
                        out.append(Publish(topic, chunk[te:end], 0, 0, bool(b0 & 1), False))
                elif b0 == 0x40 and rl == 2:
                    pid = (chunk[start] << 8) | chunk[start + 1]
                    if not pid:
                        raise MalformedPacket("PUBACK packet id 0")
                    out.append(Puback(pid))
                else:
                    out.append(self._decode_other(b0, chunk, start, end))
                pos = end
        except MalformedPacket:
            self._failed = True
            raise
        if pos < n:
            self._need = need
            self._buf += memoryview(chunk)[pos:] if pos else chunk
        return out

    def _decode_other(self, b0: int, data: bytes, start: int, end: int) -> Packet:
        kind = b0 >> 4
        if kind not in self._allowed:
            if 1 <= kind <= 14:
                raise MalformedPacket(f"{PacketType(kind).name} must not be sent to this side")
            raise MalformedPacket(f"reserved packet type {kind}")  # MQTT-2.2.1
        flags = b0 & 0x0F
        # MQTT-2.2.2: PUBREL, SUBSCRIBE and UNSUBSCRIBE carry 0b0010, the others 0b0000
        if flags != (2 if kind in (6, 8, 10) else 0):
            raise MalformedPacket(f"{PacketType(kind).name} with fixed-header flags {flags:#06b}")
        return _DECODERS[kind](data, start, end)


def read_long_remaining_length(data: bytes, pos: int, n: int) -> tuple[int, int]:
    """Decode a remaining length of 2 to 4 bytes at data[pos + 1]: (value, body start).

    Returns (0, -1) while continuation bytes are still missing.
    """
    value = 0
    shift = 0
    for i in range(pos + 1, pos + 5):
        if i >= n:
            return 0, -1
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 128:
            return value, i + 1
        shift += 7
    raise MalformedPacket("remaining length longer than 4 bytes")  # MQTT-2.2.3


def _read_u16(data: bytes, pos: int, end: int, what: str) -> int:
    if pos + 2 > end:
        raise MalformedPacket(f"packet too short for its {what}")
    return (data[pos] << 8) | data[pos + 1]


def _read_packet_id(data: bytes, pos: int, end: int) -> int:
    packet_id = _read_u16(data, pos, end, "packet id")
    if not packet_id:
        raise MalformedPacket("packet id 0")  # MQTT-2.3.1-1
    return packet_id


def _read_bytes(data: bytes, pos: int, end: int, what: str) -> tuple[bytes, int]:
    """A 2-byte length then that many bytes (MQTT-1.5.3 strings, binary fields)."""
    stop = pos + 2 + _read_u16(data, pos, end, f"{what} length")
    if stop > end:
        raise MalformedPacket(f"{what} runs beyond the packet")
    return data[pos + 2 : stop], stop


def _read_str(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    raw, stop = _read_bytes(data, pos, end, what)
    try:
        text = raw.decode()  # strict: rejects overlong forms and surrogates (MQTT-1.5.3-1)
    except UnicodeDecodeError:
        raise MalformedPacket(f"{what} is not UTF-8") from None
    if "\x00" in text:
        raise MalformedPacket(f"{what} holds U+0000")  # MQTT-1.5.3-2
    return text, stop


def _exact(start: int, end: int, size: int, kind: str) -> None:
    if end - start != size:
        raise MalformedPacket(f"{kind} remaining length {end - start}, must be {size}")


def _decode_connect(data: bytes, start: int, end: int) -> Connect:
    # MQTT-3.1.2.1: "MQTT" for 3.1.1, "MQIsdp" for 3.1; the level decides the layout.
    if data.startswith(b"\x00\x04MQTT", start, end):
        pos = start + 6
    elif data.startswith(b"\x00\x06MQIsdp", start, end):
        pos = start + 8
    else:
        raise MalformedPacket("CONNECT protocol name is neither MQTT nor MQIsdp")
    if pos + 4 > end:
        raise MalformedPacket("CONNECT too short for its variable header")
    level = data[pos]
    flags = data[pos + 1]
    keepalive_s = (data[pos + 2] << 8) | data[pos + 3]
    pos += 4
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag set")  # MQTT-3.1.2-3
    clean_session = bool(flags & 0x02)
    if level not in (3, 4):
        # The payload layout is another version's (MQTT 5 adds properties); the server only
        # needs the level to answer CONNACK 1 (MQTT-3.1.2-2).
        return Connect("", None, None, keepalive_s, clean_session, level, None)
    will_qos = (flags >> 3) & 3
    if not flags & 0x04 and flags & 0x38:
        raise MalformedPacket("CONNECT will QoS or retain without will flag")  # 3.1.2-11/13/15
    if will_qos == 3:
        raise MalformedPacket("CONNECT will QoS 3")  # MQTT-3.1.2-14
    if level == 4 and flags & 0xC0 == 0x40:
        raise MalformedPacket("CONNECT password without user name")  # MQTT-3.1.2-22
    client_id, pos = _read_str(data, pos, end, "client id")
    will = None
    if flags & 0x04:
        will_topic, pos = _read_str(data, pos, end, "will topic")
        # the will is published under this name, so it must be a valid topic name
        if not will_topic or "+" in will_topic or "#" in will_topic:
            raise MalformedPacket("will topic empty or holds a wildcard")  # MQTT-3.3.2-2
        message, pos = _read_bytes(data, pos, end, "will message")
        will = Will(will_topic, message, will_qos, bool(flags & 0x20))
    username = password = None
    if flags & 0x80:
        username, pos = _read_str(data, pos, end, "user name")
    if flags & 0x40:
        password, pos = _read_bytes(data, pos, end, "password")
    if pos != end:
        raise MalformedPacket("CONNECT has trailing bytes")
    return Connect(client_id, username, password, keepalive_s, clean_session, level, will)


def _decode_connack(data: bytes, start: int, end: int) -> Connack:
    _exact(start, end, 2, "CONNACK")
    ack_flags = data[start]
    code = data[start + 1]
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK reserved ack flags set")  # MQTT-3.2.2.1
    if code > 5:
        raise MalformedPacket(f"CONNACK return code {code}")  # MQTT-3.2.2.3
    if code and ack_flags:
        raise MalformedPacket("CONNACK refusal with session present")  # MQTT-3.2.2-4
    return Connack(code, bool(ack_flags))


def _decode_puback(data: bytes, start: int, end: int) -> Puback:
    _exact(start, end, 2, "PUBACK")
    return Puback(_read_packet_id(data, start, end))


def _decode_qos2(data: bytes, start: int, end: int) -> Packet:
    raise MalformedPacket("QoS 2 flow not supported")


def _decode_subscribe(data: bytes, start: int, end: int) -> Subscribe:
    packet_id = _read_packet_id(data, start, end)
    pos = start + 2
    topics: list[tuple[str, int]] = []
    while pos < end:
        topic_filter, pos = _read_str(data, pos, end, "topic filter")
        _check_filter(topic_filter)
        if pos >= end:
            raise MalformedPacket("SUBSCRIBE filter without its QoS byte")
        qos = data[pos]
        if qos > 2:
            raise MalformedPacket(f"SUBSCRIBE requested QoS byte {qos:#04x}")  # MQTT-3.8.3-4
        topics.append((topic_filter, qos))
        pos += 1
    if not topics:
        raise MalformedPacket("SUBSCRIBE without topic filters")  # MQTT-3.8.3-3
    return Subscribe(packet_id, topics)


def _decode_suback(data: bytes, start: int, end: int) -> Suback:
    packet_id = _read_packet_id(data, start, end)
    codes = list(data[start + 2 : end])
    if not codes:
        raise MalformedPacket("SUBACK without return codes")
    if not _SUBACK_CODES.issuperset(codes):
        raise MalformedPacket("SUBACK return code not 0, 1, 2 or 0x80")  # MQTT-3.9.3-2
    return Suback(packet_id, codes)


def _decode_unsubscribe(data: bytes, start: int, end: int) -> Unsubscribe:
    packet_id = _read_packet_id(data, start, end)
    pos = start + 2
    topics: list[str] = []
    while pos < end:
        topic_filter, pos = _read_str(data, pos, end, "topic filter")
        _check_filter(topic_filter)
        topics.append(topic_filter)
    if not topics:
        raise MalformedPacket("UNSUBSCRIBE without topic filters")  # MQTT-3.10.3-2
    return Unsubscribe(packet_id, topics)


def _decode_unsuback(data: bytes, start: int, end: int) -> Unsuback:
    _exact(start, end, 2, "UNSUBACK")
    return Unsuback(_read_packet_id(data, start, end))


def _decode_pingreq(data: bytes, start: int, end: int) -> Pingreq:
    _exact(start, end, 0, "PINGREQ")
    return Pingreq()


def _decode_pingresp(data: bytes, start: int, end: int) -> Pingresp:
    _exact(start, end, 0, "PINGRESP")
    return Pingresp()


def _decode_disconnect(data: bytes, start: int, end: int) -> Disconnect:
    _exact(start, end, 0, "DISCONNECT")
    return Disconnect()


# PUBLISH (3) is decoded inline in PacketReader.feed.
_DECODERS: dict[int, Callable[[bytes, int, int], Packet]] = {
    1: _decode_connect,
    2: _decode_connack,
    4: _decode_puback,
    5: _decode_qos2,
    6: _decode_qos2,
    7: _decode_qos2,
    8: _decode_subscribe,
    9: _decode_suback,
    10: _decode_unsubscribe,
    11: _decode_unsuback,
    12: _decode_pingreq,
    13: _decode_pingresp,
    14: _decode_disconnect,
}


def _filter_error(topic_filter: str) -> str | None:
    """Why `topic_filter` is not a valid topic filter (MQTT-4.7.1), or None."""
    if not topic_filter:
        return "topic filter is empty"  # MQTT-4.7.3-1
    if "#" not in topic_filter and "+" not in topic_filter:
        return None
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return "'#' must be a whole level and the last"  # MQTT-4.7.1-2
        if "+" in level and level != "+":
            return "'+' must be a whole level"  # MQTT-4.7.1-3
    return None


def _check_filter(topic_filter: str) -> None:
    error = _filter_error(topic_filter)
    if error is not None:
        raise MalformedPacket(f"{error}: {topic_filter!r}")


# --- encoding ------------------------------------------------------------------------------
# Encoders raise ValueError for arguments no valid packet has: that is a programming error.

_HEAD_U16 = struct.Struct(">BBH").pack  # first byte, 1-byte remaining length, 16-bit field
_RL_ONE_BYTE = [bytes((n,)) for n in range(128)]


def remaining_length_bytes(n: int) -> bytes:
    """The variable byte integer for a remaining length (MQTT-2.2.3)."""
    if n < 128:
        return _RL_ONE_BYTE[n]
    if n < 16_384:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 2_097_152:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14))
    if n <= MAX_REMAINING_LENGTH:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, (n >> 14) & 0x7F | 0x80, n >> 21))
    raise ValueError(f"packet body of {n} bytes exceeds the MQTT maximum")


def _packet(b0: int, body: bytes) -> bytes:
    return bytes((b0,)) + remaining_length_bytes(len(body)) + body


def _check_packet_id(packet_id: int) -> None:
    if not 0 < packet_id < 65_536:
        raise ValueError(f"packet id {packet_id} outside 1..65535")


def _check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise ValueError(f"QoS {qos} outside 0..2")


def _field(raw: bytes, what: str) -> bytes:
    if len(raw) > 65_535:
        raise ValueError(f"{what} longer than 65535 bytes")
    return len(raw).to_bytes(2) + raw


def _str_field(text: str, what: str) -> bytes:
    if "\x00" in text:
        raise ValueError(f"{what} holds U+0000")
    return _field(text.encode(), what)


def _check_topic_name(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"invalid topic name {topic!r}")


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """One PUBLISH packet; `packet_id` must be 1..65535 for QoS 1 and 2, and 0 for QoS 0."""
    # _check_topic_name inlined: a call is a tenth of this function's time
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"invalid topic name {topic!r}")  # MQTT-3.3.2-2, MQTT-1.5.3-2
    raw_topic = topic.encode()
    topic_len = len(raw_topic)
    if qos:
        if qos not in (1, 2) or not 0 < packet_id < 65_536:
            raise ValueError(f"QoS {qos} with packet id {packet_id}")
        b0 = 0x30 | qos << 1 | (8 if dup else 0) | (1 if retain else 0)
        rl = topic_len + 4 + len(payload)
        if rl < 128:
            return _HEAD_U16(b0, rl, topic_len) + raw_topic + packet_id.to_bytes(2) + payload
        tail = packet_id.to_bytes(2)
    else:
        if packet_id or dup:
            raise ValueError("QoS 0 PUBLISH carries neither packet id nor DUP")  # MQTT-3.3.1-2
        b0 = 0x31 if retain else 0x30
        rl = topic_len + 2 + len(payload)
        if rl < 128:
            return _HEAD_U16(b0, rl, topic_len) + raw_topic + payload
        tail = b""
    if topic_len > 65_535:
        raise ValueError("topic longer than 65535 bytes")
    head = bytes((b0,)) + remaining_length_bytes(rl) + topic_len.to_bytes(2)
    return b"".join((head, raw_topic, tail, payload))


def encode_puback(packet_id: int) -> bytes:
    """One PUBACK packet."""
    if not 0 < packet_id < 65_536:
        raise ValueError(f"packet id {packet_id} outside 1..65535")
    return _HEAD_U16(0x40, 2, packet_id)


def encode_connack(return_code: int, session_present: bool = False) -> bytes:
    """One CONNACK packet."""
    if not 0 <= return_code <= 5:
        raise ValueError(f"CONNACK return code {return_code} outside 0..5")
    if return_code and session_present:
        raise ValueError("a refused CONNACK cannot have session present")  # MQTT-3.2.2-4
    return bytes((0x20, 2, 1 if session_present else 0, return_code))


def _encode_connect(packet: Connect) -> bytes:
    level = packet.protocol_level
    if not 0 <= level <= 255 or not 0 <= packet.keepalive_s <= 65_535:
        raise ValueError("protocol level or keepalive out of range")
    name = b"\x00\x06MQIsdp" if level == 3 else b"\x00\x04MQTT"
    flags = 0x02 if packet.clean_session else 0
    parts = [b"", _str_field(packet.client_id, "client id")]
    will = packet.will
    if will is not None:
        _check_topic_name(will.topic)
        _check_qos(will.qos)
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        parts += (_str_field(will.topic, "will topic"), _field(will.message, "will message"))
    if packet.username is not None:
        flags |= 0x80
        parts.append(_str_field(packet.username, "user name"))
    if packet.password is not None:
        if packet.username is None and level == 4:
            raise ValueError("password without user name")  # MQTT-3.1.2-22
        flags |= 0x40
        parts.append(_field(packet.password, "password"))
    parts[0] = name + bytes((level, flags)) + packet.keepalive_s.to_bytes(2)
    return _packet(0x10, b"".join(parts))


def _encode_subscribe(packet: Subscribe) -> bytes:
    _check_packet_id(packet.packet_id)
    if not packet.topics:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    parts = [packet.packet_id.to_bytes(2)]
    for topic_filter, qos in packet.topics:
        _check_filter_arg(topic_filter)
        _check_qos(qos)
        parts += (_str_field(topic_filter, "topic filter"), bytes((qos,)))
    return _packet(0x82, b"".join(parts))


def _encode_suback(packet: Suback) -> bytes:
    _check_packet_id(packet.packet_id)
    if not packet.return_codes or not _SUBACK_CODES.issuperset(packet.return_codes):
        raise ValueError(f"SUBACK return codes {packet.return_codes}")
    return _packet(0x90, packet.packet_id.to_bytes(2) + bytes(packet.return_codes))


def _encode_unsubscribe(packet: Unsubscribe) -> bytes:
    _check_packet_id(packet.packet_id)
    if not packet.topics:
        raise ValueError("UNSUBSCRIBE needs at least one topic filter")
    parts = [packet.packet_id.to_bytes(2)]
    for topic_filter in packet.topics:
        _check_filter_arg(topic_filter)
        parts.append(_str_field(topic_filter, "topic filter"))
    return _packet(0xA2, b"".join(parts))


def _encode_unsuback(packet: Unsuback) -> bytes:
    _check_packet_id(packet.packet_id)
    return _HEAD_U16(0xB0, 2, packet.packet_id)


def _check_filter_arg(topic_filter: str) -> None:
    error = _filter_error(topic_filter)
    if error is not None:
        raise ValueError(f"{error}: {topic_filter!r}")


def encode(packet: Packet) -> bytes:
    """The wire bytes of any packet; raises ValueError for a field no valid packet has."""
    if isinstance(packet, Publish):
        return encode_publish(
            packet.topic, packet.payload, packet.qos, packet.packet_id, packet.retain, packet.dup
        )
    if isinstance(packet, Puback):
        return encode_puback(packet.packet_id)
    if isinstance(packet, Connect):
        return _encode_connect(packet)
    if isinstance(packet, Connack):
        return encode_connack(packet.return_code, packet.session_present)
    if isinstance(packet, Subscribe):
        return _encode_subscribe(packet)
    if isinstance(packet, Suback):
        return _encode_suback(packet)
    if isinstance(packet, Unsubscribe):
        return _encode_unsubscribe(packet)
    if isinstance(packet, Unsuback):
        return _encode_unsuback(packet)
    if isinstance(packet, Pingreq):
        return PINGREQ_BYTES
    if isinstance(packet, Pingresp):
        return PINGRESP_BYTES
    if isinstance(packet, Disconnect):
        return DISCONNECT_BYTES
    raise TypeError(f"not an MQTT packet: {packet!r}")
