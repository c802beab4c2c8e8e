"""The MQTT 3.1.1 codec: spec byte vectors, round trips, arbitrary chunking, malformed input."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetbatch.devices.codec import (
    DISCONNECT_BYTES,
    MQTT_DEFAULT_MAX_PACKET,
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    SUBACK_FAILURE,
    Connack,
    ConnackCode,
    Connect,
    Disconnect,
    MalformedPacket,
    Packet,
    PacketReader,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
    encode_connack,
    encode_puback,
    encode_publish,
    remaining_length_bytes,
)

SERVER = True  # a reader on the server side, decoding what clients send
CLIENT = False


def decode(
    data: bytes, *, server_side: bool, max_packet_size: int = MQTT_DEFAULT_MAX_PACKET
) -> list[Packet]:
    return PacketReader(server_side=server_side, max_packet_size=max_packet_size).feed(data)


# --- spec byte vectors -------------------------------------------------------------------

# CONNECT with every field: user name, password, will (QoS 1, retained), clean session,
# keepalive 60 s (MQTT-3.1, figures 3.2-3.6).
CONNECT_ALL = (
    b"\x10\x21"  # CONNECT, remaining length 33
    b"\x00\x04MQTT\x04"  # protocol name and level
    b"\xee"  # user name, password, will retain, will QoS 1, will flag, clean session
    b"\x00\x3c"  # keepalive 60
    b"\x00\x04dev1"
    b"\x00\x03w/t\x00\x03bye"
    b"\x00\x01u\x00\x02pw"
)
CONNECT_ALL_PACKET = Connect(
    client_id="dev1",
    username="u",
    password=b"pw",
    keepalive_s=60,
    clean_session=True,
    protocol_level=4,
    will=Will(topic="w/t", message=b"bye", qos=1, retain=True),
)

CLIENT_VECTORS = [
    pytest.param(CONNECT_ALL, CONNECT_ALL_PACKET, id="connect-all-fields"),
    pytest.param(
        b"\x10\x0d\x00\x04MQTT\x04\x00\x00\x00\x00\x01c",
        Connect(client_id="c", keepalive_s=0, clean_session=False),
        id="connect-minimal",
    ),
    pytest.param(
        b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x0a\x00\x04dev1",
        Connect(client_id="dev1", keepalive_s=10, protocol_level=3),
        id="connect-mqtt-3.1",
    ),
    # figure 3.11: topic "a/b", packet id 10
    pytest.param(
        b"\x32\x09\x00\x03a/b\x00\x0ahi",
        Publish(topic="a/b", payload=b"hi", qos=1, packet_id=10),
        id="publish-qos1",
    ),
    pytest.param(
        b"\x31\x05\x00\x03a/b", Publish(topic="a/b", payload=b"", retain=True), id="publish-empty"
    ),
    pytest.param(
        b"\x3c\x07\x00\x03a/b\xff\xff",
        Publish(topic="a/b", payload=b"", qos=2, packet_id=65535, dup=True),
        id="publish-qos2-dup",
    ),
    pytest.param(b"\x40\x02\x00\x01", Puback(packet_id=1), id="puback"),
    # figure 3.22: packet id 10, "a/b" QoS 1, "c/d" QoS 2
    pytest.param(
        b"\x82\x0e\x00\x0a\x00\x03a/b\x01\x00\x03c/d\x02",
        Subscribe(packet_id=10, topics=[("a/b", 1), ("c/d", 2)]),
        id="subscribe",
    ),
    pytest.param(
        b"\x82\x0c\x00\x01\x00\x01#\x00\x00\x03+/+\x01",
        Subscribe(packet_id=1, topics=[("#", 0), ("+/+", 1)]),
        id="subscribe-wildcards",
    ),
    # figure 3.30
    pytest.param(
        b"\xa2\x0c\x00\x0a\x00\x03a/b\x00\x03c/d",
        Unsubscribe(packet_id=10, topics=["a/b", "c/d"]),
        id="unsubscribe",
    ),
    pytest.param(b"\xc0\x00", Pingreq(), id="pingreq"),
    pytest.param(b"\xe0\x00", Disconnect(), id="disconnect"),
]

SERVER_VECTORS = [
    pytest.param(b"\x20\x02\x00\x00", Connack(return_code=0), id="connack"),
    pytest.param(
        b"\x20\x02\x01\x00", Connack(return_code=0, session_present=True), id="connack-session"
    ),
    pytest.param(b"\x20\x02\x00\x05", Connack(return_code=5), id="connack-not-authorized"),
    pytest.param(
        b"\x30\x09\x00\x01t\x00\x01\x02\x03\x04\x05",
        Publish(topic="t", payload=bytes(range(6))),
        id="publish-qos0",
    ),
    pytest.param(b"\x40\x02\xff\xff", Puback(packet_id=65535), id="puback"),
    # figure 3.26: max QoS 0, max QoS 2, failure
    pytest.param(
        b"\x90\x05\x00\x0a\x00\x02\x80",
        Suback(packet_id=10, return_codes=[0, 2, SUBACK_FAILURE]),
        id="suback",
    ),
    pytest.param(b"\xb0\x02\x00\x0a", Unsuback(packet_id=10), id="unsuback"),
    pytest.param(b"\xd0\x00", Pingresp(), id="pingresp"),
]


@pytest.mark.parametrize(("data", "packet"), CLIENT_VECTORS)
def test_client_packet_vectors_decode_and_encode(data: bytes, packet: Packet) -> None:
    assert decode(data, server_side=SERVER) == [packet]
    assert encode(packet) == data


@pytest.mark.parametrize(("data", "packet"), SERVER_VECTORS)
def test_server_packet_vectors_decode_and_encode(data: bytes, packet: Packet) -> None:
    assert decode(data, server_side=CLIENT) == [packet]
    assert encode(packet) == data


def test_fast_path_encoders_and_constants() -> None:
    assert PINGREQ_BYTES == b"\xc0\x00"
    assert PINGRESP_BYTES == b"\xd0\x00"
    assert DISCONNECT_BYTES == b"\xe0\x00"
    assert encode_puback(1) == b"\x40\x02\x00\x01"
    assert encode_connack(ConnackCode.ACCEPTED, session_present=True) == b"\x20\x02\x01\x00"
    assert encode_connack(ConnackCode.UNACCEPTABLE_PROTOCOL) == b"\x20\x02\x00\x01"
    assert encode_publish("a/b", b"hi", qos=1, packet_id=10) == b"\x32\x09\x00\x03a/b\x00\x0ahi"
    assert encode_publish("a/b", b"", retain=True) == b"\x31\x05\x00\x03a/b"


# table 2.4: remaining length boundaries and their encodings
REMAINING_LENGTHS = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("value", "encoded"), REMAINING_LENGTHS)
def test_remaining_length_encoding(value: int, encoded: bytes) -> None:
    assert remaining_length_bytes(value) == encoded


@pytest.mark.parametrize(("value", "encoded"), REMAINING_LENGTHS[1:])
def test_remaining_length_decoding_is_exact(value: int, encoded: bytes) -> None:
    # The size limit check sees the whole announced size: one byte more than the limit fails.
    header = b"\x30" + encoded
    whole = len(header) + value
    assert decode(header, server_side=SERVER, max_packet_size=whole) == []
    with pytest.raises(MalformedPacket):
        decode(header, server_side=SERVER, max_packet_size=whole - 1)


@pytest.mark.parametrize("value", [127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_publish_at_remaining_length_boundaries(value: int) -> None:
    packet = Publish(topic="t", payload=b"p" * (value - 3))
    data = encode(packet)
    assert data[1 : 1 + len(remaining_length_bytes(value))] == remaining_length_bytes(value)
    assert decode(data, server_side=SERVER, max_packet_size=4 * 1024 * 1024) == [packet]


def test_remaining_length_beyond_the_maximum_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="maximum"):
        remaining_length_bytes(268_435_456)


def test_non_minimal_remaining_length_is_accepted() -> None:
    assert decode(b"\x40\x82\x00\x00\x07", server_side=SERVER) == [Puback(packet_id=7)]


def test_connect_with_unsupported_level_decodes_its_header_only() -> None:
    # an MQTT 5 CONNECT: the property length byte follows the keepalive (MQTT-3.1.2-2)
    data = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc"
    assert decode(data, server_side=SERVER) == [
        Connect(client_id="", keepalive_s=60, clean_session=True, protocol_level=5)
    ]


def test_mqtt_3_1_allows_a_password_without_user_name() -> None:
    data = b"\x10\x13\x00\x06MQIsdp\x03\x42\x00\x00\x00\x01c\x00\x02pw"
    packet = Connect(client_id="c", password=b"pw", protocol_level=3)
    assert decode(data, server_side=SERVER) == [packet]
    assert encode(packet) == data


def test_empty_client_id_is_left_to_the_server() -> None:
    data = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00"
    assert decode(data, server_side=SERVER) == [Connect(client_id="")]


# --- round trips -------------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
topic_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00+#"), min_size=1, max_size=40
)
plain_levels = st.text(st.characters(codec="utf-8", exclude_characters="\x00+#/"), max_size=8)
packet_ids = st.integers(1, 65_535)
payloads = st.binary(max_size=300)


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(plain_levels, st.just("+")), min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "#"


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        topic=draw(topic_names),
        payload=draw(payloads),
        qos=qos,
        packet_id=draw(packet_ids) if qos else 0,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
    )


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    level = draw(st.sampled_from([3, 4]))
    username = draw(st.none() | texts)
    password = draw(st.none() | st.binary(max_size=20))
    if level == 4 and username is None:
        password = None  # MQTT-3.1.2-22
    return Connect(
        client_id=draw(texts),
        username=username,
        password=password,
        keepalive_s=draw(st.integers(0, 65_535)),
        clean_session=draw(st.booleans()),
        protocol_level=level,
        will=draw(
            st.none()
            | st.builds(
                Will,
                topic=topic_names,
                message=st.binary(max_size=20),
                qos=st.integers(0, 2),
                retain=st.booleans(),
            )
        ),
    )


client_packets: st.SearchStrategy[Packet] = st.one_of(
    connects(),
    publishes(),
    st.builds(Puback, packet_id=packet_ids),
    st.builds(
        Subscribe,
        packet_id=packet_ids,
        topics=st.lists(st.tuples(topic_filters(), st.integers(0, 2)), min_size=1, max_size=4),
    ),
    st.builds(Unsubscribe, packet_id=packet_ids, topics=st.lists(topic_filters(), min_size=1)),
    st.builds(Pingreq),
    st.builds(Disconnect),
)
server_packets: st.SearchStrategy[Packet] = st.one_of(
    st.builds(Connack, return_code=st.integers(1, 5)),
    st.builds(Connack, return_code=st.just(0), session_present=st.booleans()),
    publishes(),
    st.builds(Puback, packet_id=packet_ids),
    st.builds(
        Suback,
        packet_id=packet_ids,
        return_codes=st.lists(st.sampled_from([0, 1, 2, SUBACK_FAILURE]), min_size=1),
    ),
    st.builds(Unsuback, packet_id=packet_ids),
    st.builds(Pingresp),
)
by_side = {SERVER: client_packets, CLIENT: server_packets}


@settings(max_examples=400)
@given(client_packets)
def test_client_packets_round_trip(packet: Packet) -> None:
    data = encode(packet)
    assert decode(data, server_side=SERVER) == [packet]


@settings(max_examples=400)
@given(server_packets)
def test_server_packets_round_trip(packet: Packet) -> None:
    data = encode(packet)
    assert decode(data, server_side=CLIENT) == [packet]


@settings(max_examples=200)
@given(
    side=st.sampled_from([SERVER, CLIENT]),
    data=st.data(),
)
def test_arbitrary_chunking_gives_the_same_packets(side: bool, data: st.DataObject) -> None:
    packets = data.draw(st.lists(by_side[side], max_size=12))
    stream = b"".join(encode(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    reader = PacketReader(server_side=side)
    got: list[Packet] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += reader.feed(stream[a:b])
    assert got == packets


def test_large_packet_fed_in_small_chunks() -> None:
    packet = Publish(topic="big", payload=bytes(range(256)) * 4000, qos=1, packet_id=3)
    stream = encode(packet) + PINGREQ_BYTES
    reader = PacketReader(server_side=SERVER)
    got: list[Packet] = []
    for i in range(0, len(stream), 4096):
        got += reader.feed(stream[i : i + 4096])
    assert got == [packet, Pingreq()]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    reader = PacketReader(server_side=SERVER)
    assert reader.feed(bytearray(b"\x30\x04\x00\x01tx")) == [Publish(topic="t", payload=b"x")]
    packet = reader.feed(memoryview(b"\x30\x04\x00\x01ty"))[0]
    assert isinstance(packet, Publish)
    assert type(packet.payload) is bytes


# --- fuzzing -----------------------------------------------------------------------------


def assert_decodes_or_rejects(data: bytes, *, server_side: bool) -> None:
    """Either MalformedPacket, or packets that re-encode to bytes decoding to the same."""
    try:
        packets = decode(data, server_side=server_side, max_packet_size=4096)
    except MalformedPacket:
        return
    for packet in packets:
        assert decode(encode(packet), server_side=server_side) == [packet]


# random bodies behind a consistent fixed header reach the per-type decoders
framed_random = st.builds(
    lambda b0, body: bytes((b0,)) + remaining_length_bytes(len(body)) + body,
    st.integers(0, 255),
    st.binary(max_size=40),
)


@settings(max_examples=1000, deadline=timedelta(seconds=1))
@given(st.binary(max_size=64) | framed_random, st.sampled_from([SERVER, CLIENT]))
def test_random_bytes_decode_or_are_malformed(data: bytes, side: bool) -> None:
    assert_decodes_or_rejects(data, server_side=side)


@settings(max_examples=500, deadline=timedelta(seconds=1))
@given(side=st.sampled_from([SERVER, CLIENT]), data=st.data())
def test_mutated_packets_decode_or_are_malformed(side: bool, data: st.DataObject) -> None:
    packets = data.draw(st.lists(by_side[side], min_size=1, max_size=3))
    stream = bytearray(b"".join(encode(p) for p in packets))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(stream) - 1))
        mutation = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if mutation == "flip":
            stream[at] ^= 1 << data.draw(st.integers(0, 7))
        elif mutation == "truncate":
            del stream[at:]
        elif mutation == "insert":
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del stream[at]
        if not stream:
            break
    assert_decodes_or_rejects(bytes(stream), server_side=side)


# --- malformed input ---------------------------------------------------------------------


def connect_bytes(flags: int, payload: bytes, name: bytes = b"\x00\x04MQTT\x04") -> bytes:
    body = name + bytes((flags,)) + b"\x00\x3c" + payload
    return bytes((0x10, len(body))) + body


MALFORMED = [
    # fixed header (MQTT-2.2)
    pytest.param(SERVER, b"\x30\xff\xff\xff\xff\x01", id="remaining-length-5-bytes"),
    pytest.param(SERVER, b"\x30\x80\x80\x80\x80", id="remaining-length-5th-byte-pending"),
    pytest.param(SERVER, b"\x00\x00", id="reserved-type-0"),
    pytest.param(CLIENT, b"\xf0\x00", id="reserved-type-15"),
    pytest.param(SERVER, b"\x80\x08\x00\x01\x00\x03a/b\x00", id="subscribe-flags-0000"),
    pytest.param(SERVER, b"\xa0\x05\x00\x01\x00\x01a", id="unsubscribe-flags-0000"),
    pytest.param(SERVER, b"\x42\x02\x00\x01", id="puback-flags"),
    pytest.param(SERVER, b"\xc1\x00", id="pingreq-flags"),
    pytest.param(SERVER, b"\xe8\x00", id="disconnect-flags"),
    pytest.param(CLIENT, b"\x21\x02\x00\x00", id="connack-flags"),
    # direction (MQTT-2.2.1)
    pytest.param(CLIENT, CONNECT_ALL, id="connect-to-client"),
    pytest.param(SERVER, b"\x20\x02\x00\x00", id="connack-to-server"),
    pytest.param(SERVER, b"\x90\x03\x00\x01\x00", id="suback-to-server"),
    pytest.param(SERVER, b"\xb0\x02\x00\x01", id="unsuback-to-server"),
    pytest.param(SERVER, b"\xd0\x00", id="pingresp-to-server"),
    pytest.param(CLIENT, b"\x82\x06\x00\x01\x00\x01a\x00", id="subscribe-to-client"),
    pytest.param(CLIENT, b"\xa2\x05\x00\x01\x00\x01a", id="unsubscribe-to-client"),
    pytest.param(CLIENT, b"\xc0\x00", id="pingreq-to-client"),
    pytest.param(CLIENT, b"\xe0\x00", id="disconnect-to-client"),
    # QoS 2 flow: not supported
    pytest.param(SERVER, b"\x50\x02\x00\x01", id="pubrec"),
    pytest.param(SERVER, b"\x62\x02\x00\x01", id="pubrel"),
    pytest.param(CLIENT, b"\x70\x02\x00\x01", id="pubcomp"),
    # PUBLISH (MQTT-3.3)
    pytest.param(SERVER, b"\x36\x05\x00\x01a\x00\x01", id="publish-qos3"),
    pytest.param(SERVER, b"\x38\x03\x00\x01a", id="publish-qos0-dup"),
    pytest.param(SERVER, b"\x30\x05\x00\x03a/+", id="publish-topic-plus"),
    pytest.param(CLIENT, b"\x30\x05\x00\x03a/#", id="publish-topic-hash"),
    pytest.param(SERVER, b"\x30\x04\x00\x02\xc3\x28", id="publish-topic-invalid-utf8"),
    pytest.param(SERVER, b"\x30\x05\x00\x03\xed\xa0\x80", id="publish-topic-surrogate"),
    pytest.param(SERVER, b"\x30\x04\x00\x02\xc0\xaf", id="publish-topic-overlong"),
    pytest.param(SERVER, b"\x30\x05\x00\x03a\x00b", id="publish-topic-nul"),
    pytest.param(SERVER, b"\x30\x03\x00\x00x", id="publish-topic-empty"),
    pytest.param(SERVER, b"\x30\x03\x00\x05a", id="publish-topic-beyond-packet"),
    pytest.param(SERVER, b"\x30\x01\x00", id="publish-no-topic-length"),
    pytest.param(SERVER, b"\x30\x00", id="publish-empty"),
    pytest.param(SERVER, b"\x32\x04\x00\x01a\x00", id="publish-qos1-no-packet-id"),
    pytest.param(CLIENT, b"\x32\x05\x00\x01a\x00\x00", id="publish-packet-id-0"),
    # acks and pings: exact lengths
    pytest.param(SERVER, b"\x40\x03\x00\x01\x00", id="puback-trailing-byte"),
    pytest.param(SERVER, b"\x40\x01\x00", id="puback-short"),
    pytest.param(CLIENT, b"\x40\x02\x00\x00", id="puback-packet-id-0"),
    pytest.param(CLIENT, b"\xb0\x03\x00\x01\x00", id="unsuback-trailing-byte"),
    pytest.param(SERVER, b"\xc0\x01\x00", id="pingreq-with-body"),
    pytest.param(CLIENT, b"\xd0\x01\x00", id="pingresp-with-body"),
    pytest.param(SERVER, b"\xe0\x01\x00", id="disconnect-with-body"),
    # CONNACK (MQTT-3.2)
    pytest.param(CLIENT, b"\x20\x03\x00\x00\x00", id="connack-trailing-byte"),
    pytest.param(CLIENT, b"\x20\x02\x00\x06", id="connack-code-6"),
    pytest.param(CLIENT, b"\x20\x02\x02\x00", id="connack-reserved-ack-flag"),
    pytest.param(CLIENT, b"\x20\x02\x01\x05", id="connack-refused-with-session"),
    # SUBSCRIBE, SUBACK, UNSUBSCRIBE (MQTT-3.8 - 3.10, 4.7)
    pytest.param(SERVER, b"\x82\x02\x00\x01", id="subscribe-empty"),
    pytest.param(SERVER, b"\x82\x06\x00\x00\x00\x01a\x00", id="subscribe-packet-id-0"),
    pytest.param(SERVER, b"\x82\x0a\x00\x01\x00\x05a/#/b\x00", id="filter-hash-not-last"),
    pytest.param(SERVER, b"\x82\x07\x00\x01\x00\x02a+\x00", id="filter-plus-in-level"),
    pytest.param(SERVER, b"\x82\x08\x00\x01\x00\x03a/b#\x00", id="filter-hash-in-level"),
    pytest.param(SERVER, b"\x82\x05\x00\x01\x00\x00\x00", id="filter-empty"),
    pytest.param(SERVER, b"\x82\x06\x00\x01\x00\x01a\x03", id="subscribe-qos-3"),
    pytest.param(SERVER, b"\x82\x06\x00\x01\x00\x01a\x41", id="subscribe-qos-upper-bits"),
    pytest.param(SERVER, b"\x82\x05\x00\x01\x00\x01a", id="subscribe-no-qos-byte"),
    pytest.param(SERVER, b"\x82\x07\x00\x01\x00\x02\xff\xfe\x00", id="filter-invalid-utf8"),
    pytest.param(SERVER, b"\x82\x06\x00\x01\x00\x01\x00\x00", id="filter-nul"),
    pytest.param(SERVER, b"\xa2\x02\x00\x01", id="unsubscribe-empty"),
    pytest.param(SERVER, b"\xa2\x06\x00\x01\x00\x02a+", id="unsubscribe-bad-filter"),
    pytest.param(SERVER, b"\xa2\x05\x00\x01\x00\x05a", id="unsubscribe-filter-beyond-packet"),
    pytest.param(CLIENT, b"\x90\x02\x00\x01", id="suback-empty"),
    pytest.param(CLIENT, b"\x90\x03\x00\x01\x03", id="suback-code-3"),
    # CONNECT (MQTT-3.1)
    pytest.param(SERVER, connect_bytes(0x03, b"\x00\x01c"), id="connect-reserved-flag"),
    pytest.param(SERVER, connect_bytes(0x42, b"\x00\x01c\x00\x01p"), id="password-no-username"),
    pytest.param(SERVER, connect_bytes(0x0A, b"\x00\x01c"), id="will-qos-without-will"),
    pytest.param(SERVER, connect_bytes(0x22, b"\x00\x01c"), id="will-retain-without-will"),
    pytest.param(SERVER, connect_bytes(0x1E, b"\x00\x01c\x00\x01w\x00\x00"), id="will-qos-3"),
    pytest.param(
        SERVER, connect_bytes(0x06, b"\x00\x01c\x00\x01#\x00\x00"), id="will-topic-wildcard"
    ),
    pytest.param(
        SERVER, connect_bytes(0x02, b"\x00\x01c", name=b"\x00\x04MQTX\x04"), id="protocol-name"
    ),
    pytest.param(
        SERVER, connect_bytes(0x02, b"\x00\x01c", name=b"\x00\x06MQIsdq\x03"), id="protocol-3.1"
    ),
    pytest.param(SERVER, connect_bytes(0x02, b"\x00\x01c\x00"), id="connect-trailing-byte"),
    pytest.param(SERVER, connect_bytes(0x02, b"\x00\x05c"), id="client-id-beyond-packet"),
    pytest.param(SERVER, connect_bytes(0x82, b"\x00\x01c"), id="username-missing"),
    pytest.param(SERVER, connect_bytes(0x02, b"\x00\x01\x00"), id="client-id-nul"),
    pytest.param(SERVER, b"\x10\x08\x00\x04MQTT\x04\x02", id="connect-short-header"),
]


@pytest.mark.parametrize(("side", "data"), MALFORMED)
def test_malformed_packets_are_rejected(side: bool, data: bytes) -> None:
    reader = PacketReader(server_side=side)
    with pytest.raises(MalformedPacket):
        reader.feed(data)
    with pytest.raises(MalformedPacket):
        reader.feed(PINGREQ_BYTES if side else PINGRESP_BYTES)  # the reader stays failed


def test_oversized_packet_is_rejected_before_its_body_arrives() -> None:
    reader = PacketReader(server_side=SERVER, max_packet_size=1000)
    assert reader.feed(b"\x30") == []
    with pytest.raises(MalformedPacket):
        reader.feed(b"\xe6\x07")  # remaining length 998: 1001 bytes in all


def test_default_limit_rejects_a_2_mib_announcement() -> None:
    with pytest.raises(MalformedPacket):
        decode(b"\x30" + remaining_length_bytes(2 * 1024 * 1024), server_side=CLIENT)


def test_malformed_packet_split_across_chunks_is_rejected_once_complete() -> None:
    reader = PacketReader(server_side=SERVER)
    assert reader.feed(PINGREQ_BYTES + b"\x40\x03") == [Pingreq()]
    with pytest.raises(MalformedPacket):
        reader.feed(b"\x00\x01\x00")


# --- encoder arguments -------------------------------------------------------------------

BAD_ENCODES: list[Callable[[], bytes]] = [
    lambda: encode_publish("", b""),
    lambda: encode_publish("a/+", b""),
    lambda: encode_publish("a/#", b""),
    lambda: encode_publish("a\x00", b""),
    lambda: encode_publish("t", b"", qos=3, packet_id=1),
    lambda: encode_publish("t", b"", qos=-1, packet_id=1),
    lambda: encode_publish("t", b"", qos=1),
    lambda: encode_publish("t", b"", qos=1, packet_id=65_536),
    lambda: encode_publish("t", b"", packet_id=1),
    lambda: encode_publish("t", b"", dup=True),
    lambda: encode_publish("t" * 65_536, b""),
    lambda: encode_publish("\ud800", b""),
    lambda: encode_puback(0),
    lambda: encode_puback(65_536),
    lambda: encode_connack(6),
    lambda: encode_connack(1, session_present=True),
    lambda: encode(Connect(client_id="c", password=b"p")),
    lambda: encode(Connect(client_id="c" * 65_536)),
    lambda: encode(Connect(client_id="c", keepalive_s=65_536)),
    lambda: encode(Connect(client_id="c", will=Will("w", b"", 3, False))),
    lambda: encode(Connect(client_id="c", will=Will("w/+", b"", 0, False))),
    lambda: encode(Subscribe(packet_id=1, topics=[])),
    lambda: encode(Subscribe(packet_id=0, topics=[("a", 0)])),
    lambda: encode(Subscribe(packet_id=1, topics=[("a/#/b", 0)])),
    lambda: encode(Subscribe(packet_id=1, topics=[("a", 3)])),
    lambda: encode(Unsubscribe(packet_id=1, topics=[])),
    lambda: encode(Unsubscribe(packet_id=1, topics=["a+"])),
    lambda: encode(Suback(packet_id=1, return_codes=[])),
    lambda: encode(Suback(packet_id=1, return_codes=[3])),
    lambda: encode(Unsuback(packet_id=0)),
]


@pytest.mark.parametrize("call", BAD_ENCODES)
def test_encoding_an_invalid_packet_raises_value_error(call: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - ValueError is the contract
        call()
