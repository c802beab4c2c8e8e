"""MQTT codec micro-benchmark: PUBLISH decode and encode rates on one core.

Decodes a stream of PUBLISH QoS 1 packets with 100-byte payloads, fed one packet per chunk
(one `data_received` per packet, the latency-bound case) and 20 per chunk (a busy
connection), then encodes the same packets, and does the same for PUBACK. Prints the best of
`--repeat` runs; the machine is shared, expect ±20%.

    python bench/codec.py --packets 200000
"""

from __future__ import annotations

import time
from collections.abc import Callable

from _support import bench_parser
from fleetbatch.devices.codec import PacketReader, encode_puback, encode_publish

TOPIC = "$oc/devices/6523a1b2c3d4e5f6a7b8c9d0_node000001/sys/commands/request_id=1234"
PAYLOAD = b"x" * 100


def best_rate(run: Callable[[], None], items: int, repeat: int) -> float:
    """Items per second of the fastest of `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return items / best


def decode_rate(packets: list[bytes], per_chunk: int, repeat: int) -> float:
    chunks = [b"".join(packets[i : i + per_chunk]) for i in range(0, len(packets), per_chunk)]

    def run() -> None:
        feed = PacketReader(server_side=True).feed
        for chunk in chunks:
            feed(chunk)

    return best_rate(run, len(packets), repeat)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ids = [i % 65_535 + 1 for i in range(args.packets)]
    publishes = [encode_publish(TOPIC, PAYLOAD, 1, i) for i in ids]
    pubacks = [encode_puback(i) for i in ids]

    def encode_publishes() -> None:
        for i in ids:
            encode_publish(TOPIC, PAYLOAD, 1, i)

    def encode_pubacks() -> None:
        for i in ids:
            encode_puback(i)

    rates = {
        "decode PUBLISH, 1 per chunk": decode_rate(publishes, 1, args.repeat),
        "decode PUBLISH, 20 per chunk": decode_rate(publishes, 20, args.repeat),
        "encode_publish": best_rate(encode_publishes, len(ids), args.repeat),
        "decode PUBACK, 1 per chunk": decode_rate(pubacks, 1, args.repeat),
        "encode_puback": best_rate(encode_pubacks, len(ids), args.repeat),
    }
    print(f"PUBLISH QoS 1: {len(publishes[0])} bytes on the wire, {len(PAYLOAD)}-byte payload")
    for name, rate in rates.items():
        print(f"{name:30} {rate:>12,.0f} packets/s {1e6 / rate:>8.2f} µs/packet")


if __name__ == "__main__":
    main()
