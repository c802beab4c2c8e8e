"""Running simulated devices: `Simulator` in this process, `FleetProcesses` across several.

    async with Simulator(fleet.devices, "mqtt://127.0.0.1:1883", subscribe=True) as sim:
        await sim.wait_connected(timeout_s=30)
        ...  # sim.stats counts what the devices did

Connects are paced: at most `connect_concurrency` devices are between "TCP connect started"
and "CONNACK (and SUBACK) received" at any time, so a storm of thousands of devices does not
overflow the server's listen backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import signal
import ssl
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from fleetbatch.devices.auth import SIGN_TYPE_CHECKED, SIGN_TYPE_UNCHECKED
from fleetbatch.settings import parse_broker_url
from fleetbatch.sim.behavior import DEFAULT_BEHAVIOR, Behavior, resolve_texts
from fleetbatch.sim.device import DeviceHub, SimDevice
from fleetbatch.sim.fleet import FleetDevice
from fleetbatch.sim.stats import SimStats, merge_snapshots

DEFAULT_CONNECT_CONCURRENCY = 200
DEFAULT_KEEPALIVE_S = 120  # Huawei's Python SDK default (spec: device-mqtt §1.1)
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_WAIT_CONNECTED_S = 60.0
CLOSE_TIMEOUT_S = 5.0
STATS_INTERVAL_S = 0.5  # how often child processes send their counters
CHILD_STOP_TIMEOUT_S = 30.0

T = TypeVar("T")


def client_ssl_context(ca_file: Path | str | None) -> ssl.SSLContext:
    """Like Huawei's SDK: verify the server against the CA file, no hostname check, TLS >= 1.2.

    Without a CA file the system's trust store is used. Reads the file (blocking, small).
    """
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Simulator:
    """The devices of `devices`, each with its own connection and credentials, in this loop."""

    def __init__(
        self,
        devices: Sequence[FleetDevice],
        url: str,
        *,
        behaviors: Sequence[str] | Sequence[Behavior] = (),
        seed: int = 0,
        subscribe: bool = False,
        ca_file: Path | str | None = None,
        connect_concurrency: int = DEFAULT_CONNECT_CONCURRENCY,
        sign_type: str = SIGN_TYPE_CHECKED,
        qos: int = 1,
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        """Check the options (ValueError names the bad one); nothing connects before `start`.

        `behaviors` is either `--behavior` values (resolved here with `seed`) or one resolved
        `Behavior` per device, index-aligned with `devices`.
        """
        scheme, self.host, self.port = parse_broker_url(url)
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos}")
        if sign_type not in (SIGN_TYPE_UNCHECKED, SIGN_TYPE_CHECKED):
            raise ValueError(f"sign type must be 0 or 1, not {sign_type!r}")
        if connect_concurrency < 1:
            raise ValueError("connect concurrency must be at least 1")
        if not 0 <= keepalive_s <= 65_535:
            raise ValueError("keepalive must be 0-65535 s")
        self.url = url
        self.seed = seed
        self.subscribe = subscribe
        self.qos = qos
        self.sign_type = sign_type
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.connect_concurrency = connect_concurrency
        self.fleet = list(devices)
        self.behaviors = _behaviors_for(self.fleet, behaviors, seed)
        self.ssl_context = client_ssl_context(ca_file) if scheme == "mqtts" else None
        self.stats = SimStats()
        self._devices: list[SimDevice] = []
        self._by_id: dict[str, SimDevice] = {}
        self._hub: DeviceHub | None = None
        self._queue: asyncio.Queue[SimDevice] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._all_closed: asyncio.Event | None = None
        self._state = "new"

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting every device (paced); returns at once."""
        if self._state != "new":
            raise RuntimeError("a Simulator starts once")
        self._state = "running"
        loop = asyncio.get_running_loop()
        # holds each device at most once (only an offline device without a pending
        # reconnect is queued), so it is bounded by the fleet size
        queue: asyncio.Queue[SimDevice] = asyncio.Queue()
        self._queue = queue
        self._all_closed = asyncio.Event()
        hub = DeviceHub(
            loop,
            self.stats,
            host=self.host,
            port=self.port,
            ssl_context=self.ssl_context,
            qos=self.qos,
            subscribe=self.subscribe,
            keepalive_s=self.keepalive_s,
            sign_type=self.sign_type,
            seed=self.seed,
            connect_timeout_s=self.connect_timeout_s,
            enqueue=queue.put_nowait,
            on_ready=self._on_ready,
            on_closed=self._all_closed.set,
        )
        self._hub = hub
        for fleet_device, behavior in zip(self.fleet, self.behaviors, strict=True):
            device = SimDevice(hub, fleet_device.device_id, fleet_device.secret, behavior)
            self._devices.append(device)
            self._by_id[device.device_id] = device
            queue.put_nowait(device)
        workers = min(self.connect_concurrency, max(len(self._devices), 1))
        self._tasks = [
            asyncio.create_task(self._connect_worker(queue), name=f"sim-connect-{n}")
            for n in range(workers)
        ]
        if self.keepalive_s:
            self._tasks.append(asyncio.create_task(self._keepalive(), name="sim-keepalive"))

    async def _connect_worker(self, queue: asyncio.Queue[SimDevice]) -> None:
        while True:
            device = await queue.get()
            await device.connect()

    async def _keepalive(self) -> None:
        # one sweep for every device instead of a timer each: half a keepalive apart, so a
        # device idle for a whole sweep pings and the server hears from it within a keepalive
        while True:
            await asyncio.sleep(self.keepalive_s / 2)
            for device in self._devices:
                device.keepalive_tick()

    def _on_ready(self) -> None:
        if self._waiters:
            connected = self.stats.connected
            for target, future in self._waiters:
                if connected >= target and not future.done():
                    future.set_result(None)

    async def wait_connected(
        self, count: int | None = None, *, timeout_s: float = DEFAULT_WAIT_CONNECTED_S
    ) -> None:
        """Until `count` devices (default: all) are connected (CONNACK 0, SUBACK if subscribing).

        Raises TimeoutError, with the counts so far, when `timeout_s` passes first.
        """
        target = len(self._devices) if count is None else count
        if self.stats.connected >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (target, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            stats = self.stats
            raise TimeoutError(
                f"{stats.connected} of {target} devices connected within {timeout_s} s "
                f"(refused: {stats.refused or 0}, connect errors: {stats.connect_errors})"
            ) from None
        finally:
            self._waiters.remove(entry)

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """DISCONNECT every connected device and close its socket; stop reconnecting."""
        if self._state != "running":
            self._state = "closed"
            return
        self._state = "closed"
        hub = self._hub
        assert hub is not None
        assert self._all_closed is not None
        hub.closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for device in self._devices:
            device.close()
        if hub.open_transports > 0:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._all_closed.wait()
            except TimeoutError:
                for device in self._devices:
                    device.abort()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # shielded: a cancelled test or Ctrl-C must still close the sockets
        await asyncio.shield(self.close())

    # --- inspection -------------------------------------------------------------------------

    def device(self, device_id: str) -> SimDevice:
        """The simulated device with this id (KeyError when it is not in the fleet)."""
        return self._by_id[device_id]

    @property
    def devices(self) -> list[SimDevice]:
        """Every simulated device, in fleet order."""
        return self._devices


def _behaviors_for(
    devices: list[FleetDevice], behaviors: Sequence[str] | Sequence[Behavior], seed: int
) -> list[Behavior]:
    if not behaviors:
        return [DEFAULT_BEHAVIOR] * len(devices)
    if all(isinstance(item, Behavior) for item in behaviors):
        if len(behaviors) != len(devices):
            raise ValueError(f"{len(behaviors)} behaviors for {len(devices)} devices")
        return [item for item in behaviors if isinstance(item, Behavior)]
    if all(isinstance(item, str) for item in behaviors):
        texts = [item for item in behaviors if isinstance(item, str)]
        return resolve_texts([device.device_id for device in devices], texts, seed)
    raise TypeError("behaviors must be all --behavior strings or all Behavior objects")


# --- several processes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimOptions:
    """The `Simulator` options a child process is started with."""

    url: str
    seed: int = 0
    subscribe: bool = False
    ca_file: str | None = None
    connect_concurrency: int = DEFAULT_CONNECT_CONCURRENCY
    sign_type: str = SIGN_TYPE_CHECKED
    qos: int = 1
    keepalive_s: int = DEFAULT_KEEPALIVE_S


def process_cpu_s() -> float:
    """User + system CPU seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_on_fast_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on a new uvloop loop (it halves the CPU per message), asyncio's without it."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _child_main(
    conn: Connection,
    devices: list[FleetDevice],
    behaviors: list[Behavior],
    options: SimOptions,
) -> None:
    """A child process: one Simulator on its slice, counters to the parent until told to stop."""
    # Ctrl-C reaches the whole process group; the parent decides when children stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_on_fast_loop(_child_async(conn, devices, behaviors, options))
    except Exception as exc:  # reported to the parent, which prints it and exits non-zero
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


async def _child_async(
    conn: Connection,
    devices: list[FleetDevice],
    behaviors: list[Behavior],
    options: SimOptions,
) -> None:
    cpu_at_start_s = process_cpu_s()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # any message from the parent, or its end of the pipe closing, means stop
    loop.add_reader(conn.fileno(), stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    simulator = Simulator(
        devices,
        options.url,
        behaviors=behaviors,
        seed=options.seed,
        subscribe=options.subscribe,
        ca_file=options.ca_file,
        connect_concurrency=options.connect_concurrency,
        sign_type=options.sign_type,
        qos=options.qos,
        keepalive_s=options.keepalive_s,
    )
    await simulator.start()
    try:
        while not stop.is_set():
            conn.send(("stats", simulator.stats.snapshot()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATS_INTERVAL_S):
                    await stop.wait()
    finally:
        loop.remove_reader(conn.fileno())
        connected = simulator.stats.connected
        await simulator.close()
    final = simulator.stats.snapshot()
    final["connected"] = connected  # at the end of the run, not after our own shutdown
    conn.send(("final", final, process_cpu_s() - cpu_at_start_s))


@dataclass(slots=True)
class _Child:
    process: BaseProcess
    conn: Connection
    snapshot: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0
    finished: bool = False
    error: str | None = None


class FleetProcesses:
    """N child processes, each a `Simulator` on a slice of the fleet (spawned, uvloop each)."""

    def __init__(
        self,
        devices: Sequence[FleetDevice],
        behaviors: Sequence[Behavior],
        options: SimOptions,
        processes: int,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.devices = list(devices)
        self.behaviors = list(behaviors)
        self.options = options
        self.processes = processes
        self._children: list[_Child] = []

    def start(self) -> None:
        """Spawn the children; each starts connecting its slice at once."""
        context = multiprocessing.get_context("spawn")
        n = self.processes
        # split the connect budget so the server sees the same storm as with one process
        per_child = replace(
            self.options, connect_concurrency=max(1, self.options.connect_concurrency // n)
        )
        for index in range(n):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_child_main,
                args=(child_end, self.devices[index::n], self.behaviors[index::n], per_child),
                name=f"fleetbatch-sim-{index}",
                daemon=True,
            )
            process.start()
            child_end.close()
            self._children.append(_Child(process, parent_end))

    @property
    def running(self) -> int:
        """Children still running (not finished, not failed)."""
        return sum(1 for child in self._children if not child.finished)

    @property
    def errors(self) -> list[str]:
        """What failed children reported."""
        return [child.error for child in self._children if child.error is not None]

    def poll(self, timeout_s: float) -> None:
        """Take in what the children sent, waiting up to `timeout_s` for something."""
        pending = {child.conn: child for child in self._children if not child.finished}
        if not pending:
            return
        for conn in wait(list(pending), timeout=timeout_s):
            assert isinstance(conn, Connection)
            child = pending[conn]
            try:
                while conn.poll():
                    self._take(child, conn.recv())
            except (EOFError, OSError):
                child.finished = True
                if child.error is None and not child.snapshot.get("final"):
                    child.error = f"{child.process.name} exited unexpectedly"

    @staticmethod
    def _take(child: _Child, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "stats":
            child.snapshot = message[1]
        elif kind == "final":
            child.snapshot = {**message[1], "final": True}
            child.cpu_s = float(message[2])
            child.finished = True
        elif kind == "error":
            child.error = str(message[1])

    def snapshot(self) -> dict[str, Any]:
        """The children's latest counters, summed."""
        return merge_snapshots([child.snapshot for child in self._children])

    @property
    def cpu_s(self) -> float:
        """CPU seconds the finished children reported using."""
        return sum(child.cpu_s for child in self._children)

    def stop(self, timeout_s: float = CHILD_STOP_TIMEOUT_S) -> None:
        """Tell every child to stop, collect its final counters, reap it."""
        for child in self._children:
            if not child.finished:
                with contextlib.suppress(OSError):
                    child.conn.send("stop")
        deadline = time.monotonic() + timeout_s
        while self.running and time.monotonic() < deadline:
            self.poll(max(0.0, min(0.5, deadline - time.monotonic())))
        for child in self._children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.terminate()
                child.process.join(CLOSE_TIMEOUT_S)
                if child.error is None:
                    child.error = f"{child.process.name} did not stop in {timeout_s} s"
            child.conn.close()
