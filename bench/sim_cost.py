"""CPU per answered command and memory per connected device of the device simulator.

A minimal raw MQTT "server" runs here on uvloop: it answers CONNECT with CONNACK 0, then keeps
`--in-flight` commands outstanding across all connections (round robin), acknowledging each
response and sending the next command. The simulator runs in its own process (`Simulator`
on uvloop, as `fleetbatch sim` runs it); once every device is connected it measures its own
CPU (user + sys) and the commands it answered over `--seconds`, and its RSS growth per
connected device.

`--floor` runs, in the same harness, a client that does no MQTT work at all: it answers
every command with one fixed, pre-built buffer. What it costs is the kernel's and the event
loop's share, which no simulator written on asyncio can go below; the difference is what
the simulator's own code costs. One run each; the machine is shared, expect noise.

    python bench/sim_cost.py --devices 1000 --seconds 10 [--floor] [--qos 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import subprocess
import sys
import time
from collections import deque
from typing import cast

from _support import ROOT, bench_parser, rss_kb

sys.path.insert(0, str(ROOT / "src"))

from fleetbatch.devices.auth import make_client_id
from fleetbatch.devices.codec import (
    Connect,
    MalformedPacket,
    PacketReader,
    Publish,
    encode,
    encode_connack,
    encode_puback,
    encode_publish,
)
from fleetbatch.sim.fleet import FleetDevice
from fleetbatch.sim.runner import Simulator, run_on_fast_loop

COMMAND = b'{"object_device_id":"%s","service_id":"valve","command_name":"open","paras":{"pct":50}}'
RESPONSE = b'{"result_code":0,"response_name":"open","paras":{"result":"ok"}}'


# --- the server side (this process) ---------------------------------------------------------


class Driver:
    """Keeps `in_flight` commands outstanding over the connected devices."""

    def __init__(self, in_flight: int) -> None:
        self.in_flight = in_flight
        self.outstanding = 0
        self.ready: deque[ServerConn] = deque()
        self.responses = 0
        self.request_seq = 0

    def add(self, conn: ServerConn) -> None:
        self.ready.append(conn)
        self.fill()

    def fill(self) -> None:
        while self.outstanding < self.in_flight and self.ready:
            conn = self.ready.popleft()
            if conn.transport.is_closing():
                continue
            self.request_seq += 1
            conn.send_command(self.request_seq)
            self.outstanding += 1
            self.ready.append(conn)

    def answered(self) -> None:
        self.responses += 1
        self.outstanding -= 1
        self.fill()


class ServerConn(asyncio.Protocol):
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.reader = PacketReader(server_side=True)
        self.device_id = ""
        self.pid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send_command(self, seq: int) -> None:
        self.pid = self.pid % 65535 + 1
        topic = f"$oc/devices/{self.device_id}/sys/commands/request_id=r{seq}"
        payload = COMMAND % self.device_id.encode()
        self.transport.write(encode_publish(topic, payload, 1, self.pid))

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.reader.feed(data)
        except MalformedPacket:
            self.transport.abort()
            return
        for packet in packets:
            if type(packet) is Publish:
                if packet.qos:
                    self.transport.write(encode_puback(packet.packet_id))
                if "/sys/commands/response/" in packet.topic:
                    self.driver.answered()
            elif type(packet) is Connect:
                self.device_id = packet.username or ""
                self.transport.write(encode_connack(0))
                self.driver.add(self)


async def serve_and_measure(args: argparse.Namespace) -> dict[str, float]:
    driver = Driver(args.in_flight)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ServerConn(driver), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    flags = ["--floor"] if args.floor else []
    child = await asyncio.create_subprocess_exec(
        *[sys.executable, __file__, "--role", "client", "--port", str(port)],
        *["--devices", str(args.devices), "--seconds", str(args.seconds)],
        *["--warmup", str(args.warmup), "--qos", str(args.qos), *flags],
        stdout=subprocess.PIPE,
    )
    out, _ = await child.communicate()
    server.close()
    if child.returncode != 0:
        raise SystemExit(f"client process exited {child.returncode}")
    result: dict[str, float] = json.loads(out)
    result["server_responses"] = driver.responses
    return result


# --- the client side (child process) --------------------------------------------------------


class Usage:
    """CPU and answers at one moment."""

    def __init__(self, answered: int) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.user_s = usage.ru_utime
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.at = time.perf_counter()
        self.answered = answered


def report(devices: int, before: Usage, after: Usage, rss_per_device: float) -> dict[str, float]:
    answered = max(after.answered - before.answered, 1)
    return {
        "devices": devices,
        "commands": after.answered - before.answered,
        "commands_per_s": round(answered / (after.at - before.at)),
        "cpu_us_per_command": round((after.cpu_s - before.cpu_s) * 1e6 / answered, 2),
        "user_us_per_command": round((after.user_s - before.user_s) * 1e6 / answered, 2),
        "sys_us_per_command": round(
            ((after.cpu_s - after.user_s) - (before.cpu_s - before.user_s)) * 1e6 / answered, 2
        ),
        "client_cpu_share": round((after.cpu_s - before.cpu_s) / (after.at - before.at), 2),
        "rss_per_device_bytes": round(rss_per_device),
    }


async def run_simulator(args: argparse.Namespace) -> dict[str, float]:
    fleet = [FleetDevice(f"bench_dev-{i:06d}", f"secret-{i}") for i in range(args.devices)]
    url = f"mqtt://127.0.0.1:{args.port}"
    simulator = Simulator(fleet, url, connect_concurrency=200, qos=args.qos)
    rss_before = rss_kb()
    async with simulator:
        await simulator.wait_connected(timeout_s=120)
        rss_per_device = (rss_kb() - rss_before) * 1024 / args.devices
        await asyncio.sleep(args.warmup)
        before = Usage(simulator.stats.commands_answered)
        await asyncio.sleep(args.seconds)
        after = Usage(simulator.stats.commands_answered)
    result = report(args.devices, before, after, rss_per_device)
    result["errors"] = simulator.stats.errors + simulator.stats.connect_errors
    return result


class FloorClient(asyncio.Protocol):
    """No MQTT work: every chunk holding a PUBLISH gets the same pre-built PUBACK + response."""

    answered = 0

    def __init__(self, device_id: str, qos: int) -> None:
        self.device_id = device_id
        topic = f"$oc/devices/{device_id}/sys/commands/response/request_id=r1"
        response = encode_publish(topic, RESPONSE, qos, 1 if qos else 0)
        self.answer = encode_puback(1) + response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stamp = time.strftime("%Y%m%d%H", time.gmtime())
        connect = Connect(make_client_id(self.device_id, stamp), self.device_id, b"x", 120)
        self.transport.write(encode(connect))

    def data_received(self, data: bytes) -> None:
        if len(data) > 4:  # not just a PUBACK or the CONNACK
            self.transport.write(self.answer)
            FloorClient.answered += 1


async def run_floor(args: argparse.Namespace) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    rss_before = rss_kb()
    for i in range(args.devices):
        device_id = f"bench_dev-{i:06d}"
        await loop.create_connection(
            lambda device_id=device_id: FloorClient(device_id, args.qos), "127.0.0.1", args.port
        )
    rss_per_device = (rss_kb() - rss_before) * 1024 / args.devices
    await asyncio.sleep(args.warmup)
    before = Usage(FloorClient.answered)
    await asyncio.sleep(args.seconds)
    after = Usage(FloorClient.answered)
    return report(args.devices, before, after, rss_per_device)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--qos", type=int, default=1, help="QoS of the devices' responses")
    parser.add_argument("--floor", action="store_true", help="measure the no-op client")
    parser.add_argument("--role", choices=("server", "client"), default="server")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.role == "server":
        result = run_on_fast_loop(serve_and_measure(args))
    elif args.floor:
        result = run_on_fast_loop(run_floor(args))
    else:
        result = run_on_fast_loop(run_simulator(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
