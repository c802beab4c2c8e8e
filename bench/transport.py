"""Device transport benchmark: the built-in MQTT transport against Mosquitto, in one run.

    python bench/transport.py [--devices 1000,5000] [--window-s 10] [--in-flight 200]

For each fleet size, the same simulated devices (`fleetbatch sim`, its own process) are
driven twice through the device channel with the same load — `--in-flight` synchronous
commands kept in flight, QoS 1 both ways, for `--window-s` seconds:

- built-in: devices connect to fleetbatch's own transport (HMAC auth against the store);
- mosquitto: devices connect to a Mosquitto broker (anonymous, explicit subscriptions) and
  the platform is a gmqtt client of it (`BrokerChannel`), as in a scale-out deployment.

Printed per size: devices connected per second and the platform's RSS growth per connected
device (built-in), round trips per second for both and their ratio, and the CPU share of
the simulator and of the platform during the window (from /proc, so the simulator is seen
not to be the bottleneck). Goal (issue 5): built-in >= 2.0x Mosquitto at 5,000 devices,
>= 2.5x at 1,000; RSS growth <= 5 kB per device.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (
    RoundTripLoop,
    add_child_args,
    add_load_args,
    bench_parser,
    children_of,
    device_ids_of,
    emit,
    make_fleet,
    proc_cpu_s,
    read_fleet,
    rss_kb,
    start_sim,
    stop_children,
    subset,
)
from support.mosquitto import MosquittoBroker

# --- the platform side (a child process) ---------------------------------------------------


async def platform_main(args: argparse.Namespace) -> None:
    from fleetbatch.devices.authenticator import DeviceAuthenticator
    from fleetbatch.devices.channel import DeviceChannel
    from fleetbatch.devices.presence import PresenceRecorder
    from fleetbatch.devices.transport import BuiltinTransport
    from fleetbatch.runtime import Runtime
    from fleetbatch.server import bind_listener, tune_gc
    from fleetbatch.settings import Settings

    device_ids = device_ids_of(await asyncio.to_thread(read_fleet, args.fleet))
    settings = Settings(data_dir=Path(args.data_dir))
    runtime = await Runtime.open(settings)
    presence = PresenceRecorder(runtime.registry, flush_s=0.5)
    presence_task = asyncio.create_task(presence.run())
    channel: DeviceChannel
    transport: BuiltinTransport | None = None
    if args.mode == "builtin":
        authenticator = DeviceAuthenticator(runtime.registry, runtime.clock, tolerance_s=3600)
        transport = BuiltinTransport(authenticator, runtime.clock, presence=presence)
        await transport.start()
        sock = bind_listener("127.0.0.1", 0, "--mqtt-port")
        await transport.listen(sock)
        channel = transport
        port = sock.getsockname()[1]
    else:
        from fleetbatch.devices.broker import BrokerChannel

        channel = BrokerChannel(
            args.broker,
            client_id="fleetbatch-bench",
            username=None,
            password=None,
            share_group=None,
            ca_file=None,
            clock=runtime.clock,
        )
        await channel.start()
        port = 0
    tune_gc()  # as `fleetbatch serve` does once it is ready
    rss_before = rss_kb()
    emit("listening", port=port, rss_kb=rss_before)

    n = len(device_ids)
    if transport is not None:
        first = None
        while len(transport.sessions) < n:
            if first is None and transport.sessions:
                first = time.perf_counter()
            await asyncio.sleep(0.005)
        connect_s = time.perf_counter() - (first or time.perf_counter())
        await asyncio.sleep(1.0)  # let the presence flush of the connect storm settle
        gc.collect()
        emit("connected", devices=n, connect_s=connect_s, rss_kb=rss_kb())

    loop = RoundTripLoop(channel, device_ids, args.in_flight)
    waiting = await loop.probe_all()
    if waiting:
        emit("error", message=f"{len(waiting)} devices never answered")
        return
    gc.collect()
    rss_after = rss_kb()
    emit("ready", rss_kb=rss_after)

    await loop.run(args.warmup_s)
    cpu0 = time.process_time()
    emit("window_start")
    done, failed, elapsed = await loop.run(args.window_s)
    cpu = time.process_time() - cpu0
    emit(
        "window_end",
        round_trips=done,
        failed=failed,
        window_s=elapsed,
        cpu_s=cpu,
        rss_before_kb=rss_before,
        rss_after_kb=rss_after,
    )
    presence_task.cancel()
    await channel.close()
    await runtime.close()


# --- the driver ------------------------------------------------------------------------------


SPIN = (
    "import time\nend = time.perf_counter() + 1.0\nn = 0\n"
    "while time.perf_counter() < end: n += 1\nprint(n)"
)


def parallel_capacity() -> float:
    """How many cores' worth of work two busy processes get together, relative to one alone.

    On a machine whose two vCPUs share less than two real cores this is well under 2, and
    the three-process Mosquitto path competes with the two-process built-in path for it.
    """
    alone = int(subprocess.run([sys.executable, "-c", SPIN], capture_output=True).stdout)
    pair = [subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE) for _ in "ab"]
    together = sum(int(p.communicate()[0]) for p in pair)
    return together / alone


def run_mode(
    mode: str, fleet: Path, data_dir: Path, args: argparse.Namespace, broker: MosquittoBroker
) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--platform",
        "--mode",
        mode,
        "--fleet",
        str(fleet),
        "--data-dir",
        str(data_dir),
        "--broker",
        broker.url,
        "--in-flight",
        str(args.in_flight),
        "--window-s",
        str(args.window_s),
        "--warmup-s",
        str(args.warmup_s),
    ]
    platform = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert platform.stdout is not None
    events: dict[str, dict[str, Any]] = {}
    sim: subprocess.Popen[str] | None = None
    sim_cpu0 = plat_cpu0 = broker_cpu0 = 0.0
    assert broker._process is not None
    broker_pid = broker._process.pid
    try:
        for line in platform.stdout:
            event = json.loads(line)
            events[event["event"]] = event
            if event["event"] == "listening":
                url = f"mqtt://127.0.0.1:{event['port']}" if mode == "builtin" else broker.url
                flags = ["--processes", str(args.sim_processes)]
                if mode != "builtin":
                    flags.append("--subscribe")
                sim = start_sim(fleet, url, *flags)
            elif event["event"] == "window_start":
                assert sim is not None
                sim_cpu0 = proc_cpu_s(children_of(sim.pid))
                plat_cpu0 = proc_cpu_s([platform.pid])
                broker_cpu0 = proc_cpu_s([broker_pid])
                window_started = time.perf_counter()
            elif event["event"] == "window_end":
                assert sim is not None
                wall = time.perf_counter() - window_started
                events["sim_cpu_share"] = {
                    "value": (proc_cpu_s(children_of(sim.pid)) - sim_cpu0) / wall
                }
                events["broker_cpu_share"] = {
                    "value": (proc_cpu_s([broker_pid]) - broker_cpu0) / wall
                }
                events["platform_cpu_share"] = {
                    "value": (proc_cpu_s([platform.pid]) - plat_cpu0) / wall
                }
            elif event["event"] == "error":
                raise SystemExit(f"{mode}: {event['message']}")
        platform.wait(timeout=60)
    finally:
        stop_children(platform, sim)
    return events


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--devices", default="1000,5000")
    add_load_args(parser, window_s=10.0)
    parser.add_argument("--sim-processes", type=int, default=1)
    add_child_args(parser, "--platform", "--mode", "--fleet", "--data-dir", "--broker")
    args = parser.parse_args()
    if args.platform:
        import uvloop

        uvloop.run(platform_main(args))
        return

    sizes = [int(s) for s in args.devices.split(",")]
    work = Path(tempfile.mkdtemp(prefix="fbbench-transport-"))
    data_dir = work / "data"
    full = work / "fleet.json"
    print(f"registering {max(sizes):,} devices ...", file=sys.stderr)
    make_fleet(data_dir, max(sizes), full)
    # Mosquitto's defaults allow 20 unacknowledged QoS 1 messages per client, which would cap
    # the platform's 200 in flight: give it room, so the comparison is with Mosquitto at its best
    broker = MosquittoBroker.start(
        ["max_inflight_messages 1000", "max_queued_messages 100000", "set_tcp_nodelay true"]
    )
    print(
        f"machine: {os.cpu_count()} cores, two busy processes get "
        f"{parallel_capacity():.2f} cores' worth together\nwindow {args.window_s:g} s, "
        f"{args.in_flight} in flight, QoS 1 both ways, simulator processes {args.sim_processes}"
    )
    try:
        for n in sizes:
            fleet = work / f"fleet-{n}.json"
            subset(full, n, fleet)
            results = {
                mode: run_mode(mode, fleet, data_dir, args, broker)
                for mode in ("builtin", "mosquitto")
            }
            b, m = results["builtin"], results["mosquitto"]
            b_rate = b["window_end"]["round_trips"] / b["window_end"]["window_s"]
            m_rate = m["window_end"]["round_trips"] / m["window_end"]["window_s"]
            growth = (b["window_end"]["rss_after_kb"] - b["window_end"]["rss_before_kb"]) * 1024 / n
            connected_growth = (
                (b["connected"]["rss_kb"] - b["window_end"]["rss_before_kb"]) * 1024 / n
            )
            print(f"\n== {n:,} devices ==")
            print(
                f"  built-in: connected {n / b['connected']['connect_s']:,.0f} devices/s "
                f"({b['connected']['connect_s']:.2f} s); platform RSS growth per device: "
                f"{connected_growth / 1024:.2f} kB once connected, {growth / 1024:.2f} kB after "
                f"a command to each ({b['window_end']['rss_before_kb'] / 1024:.0f} -> "
                f"{b['window_end']['rss_after_kb'] / 1024:.0f} MB)"
            )
            for name, r, rate in (("built-in", b, b_rate), ("mosquitto", m, m_rate)):
                print(
                    f"  {name:9}: {rate:,.0f} round trips/s (failed {r['window_end']['failed']}); "
                    f"CPU share during window: platform {r['platform_cpu_share']['value']:.0%}, "
                    f"simulator {r['sim_cpu_share']['value']:.0%}"
                    + (f", mosquitto {r['broker_cpu_share']['value']:.0%}" if r is m else "")
                    + " of one core"
                )
            print(f"  ratio built-in / mosquitto: {b_rate / m_rate:.2f}x")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
