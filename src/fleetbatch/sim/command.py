"""`fleetbatch sim`: connect every device of a fleet file and behave as the spec's device.

The CLI registers `run_sim` as a typer command (flags in `SIM_HELP`); it returns the exit code.
Live counts go to stderr once a second (a rewritten line on a terminal, a plain line every
few seconds otherwise); the summary goes to stdout at the end, a table or one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from fleetbatch.settings import parse_broker_url
from fleetbatch.sim.behavior import BEHAVIOR_KEYS, parse_behaviors, resolve
from fleetbatch.sim.fleet import FleetFile, load_fleet
from fleetbatch.sim.runner import (
    FleetProcesses,
    SimOptions,
    Simulator,
    client_ssl_context,
    process_cpu_s,
    run_on_fast_loop,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
TTY_STATUS_INTERVAL_S = 1.0
PLAIN_STATUS_INTERVAL_S = 5.0
POLL_INTERVAL_S = 0.25

SIM_HELP = {
    "command": "Simulate the devices of a fleet file: connect each one, answer commands, "
    "messages, property and shadow requests, report properties.",
    "fleet": "The fleet file `admin create-devices --out` wrote.",
    "mqtt": "Where devices connect: mqtt://host:port or mqtts://host:port.",
    "processes": "Simulator processes (the fleet is split between them).",
    "behavior": "[selector:]key=value[,key=value...]; repeatable, later ones win. Selector: "
    "* (default), a device id, a glob, or N% of the fleet. Keys: " + ", ".join(BEHAVIOR_KEYS),
    "seed": "Seed of every random choice (N% selections, latencies, failures, flaky drops).",
    "subscribe": "Subscribe explicitly to the system topics (for external brokers).",
    "ca_file": "CA certificate (PEM) the mqtts:// server is verified against.",
    "duration": "Stop after this many seconds [default: until Ctrl-C / SIGTERM].",
    "json": "Print the summary as one JSON object on stdout.",
    "sign_type": "Password sign type in the client id: 1 (timestamp checked) or 0.",
    "qos": "QoS of what devices publish (0 or 1).",
    "connect_concurrency": "Connects in flight at once (TCP connect to CONNACK), all processes.",
}


class UsageError(ValueError):
    """A bad flag or input file: one line on stderr, exit 2."""


def _say(stream: TextIO, text: str) -> None:
    stream.write(text)
    stream.flush()


def status_line(snapshot: dict[str, Any], devices: int, elapsed_s: float, rate: float) -> str:
    """The live one-line summary of the counters."""
    refused = sum(int(count) for count in snapshot.get("refused", {}).values())
    return (
        f"sim {elapsed_s:7.1f}s  connected {snapshot['connected']}/{devices}"
        f"  refused {refused}  commands {snapshot['commands_answered']} ({rate:,.0f}/s)"
        f"  failed {snapshot['commands_failed']}  ignored {snapshot['requests_ignored']}"
        f"  props {snapshot['properties_set']}/{snapshot['properties_get']}"
        f"  msgs {snapshot['messages_received']}  reconnects {snapshot['reconnects']}"
        f"  errors {snapshot['errors'] + snapshot['connect_errors']}"
    )


class StatusPrinter:
    """Writes `status_line` to stderr: rewritten each second on a TTY, every 5 s otherwise."""

    def __init__(self, devices: int, stream: TextIO | None = None) -> None:
        self.devices = devices
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = TTY_STATUS_INTERVAL_S if self.tty else PLAIN_STATUS_INTERVAL_S
        self.started = time.monotonic()
        self._last_at = self.started
        self._last_answered = 0
        self._written = False

    def update(self, snapshot: dict[str, Any], *, force: bool = False) -> None:
        """Print the counters if a status interval has passed since the last line."""
        now = time.monotonic()
        if not force and now - self._last_at < self.interval_s:
            return
        answered = int(snapshot["commands_answered"])
        rate = (answered - self._last_answered) / max(now - self._last_at, 1e-9)
        self._last_at = now
        self._last_answered = answered
        line = status_line(snapshot, self.devices, now - self.started, rate)
        if self.tty:
            _say(self.stream, "\r\x1b[2K" + line)
        else:
            _say(self.stream, line + "\n")
        self._written = True

    def finish(self) -> None:
        """End the rewritten line so the summary starts on its own."""
        if self.tty and self._written:
            _say(self.stream, "\n")


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` while inside (main thread only; else nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


async def _run_local(
    fleet: FleetFile,
    simulator: Simulator,
    duration_s: float | None,
    stop: threading.Event,
    printer: StatusPrinter,
) -> dict[str, Any]:
    cpu_at_start_s = process_cpu_s()
    started = time.monotonic()
    deadline = None if duration_s is None else started + duration_s
    await simulator.start()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait_s = POLL_INTERVAL_S if deadline is None else min(POLL_INTERVAL_S, deadline - now)
            # the signal handler runs between loop steps; a short sleep notices it in time
            await asyncio.sleep(max(wait_s, 0.0))
            printer.update(simulator.stats.snapshot())
    finally:
        connected = simulator.stats.connected
        await simulator.close()
    counters = simulator.stats.snapshot()
    counters["connected"] = connected  # at the end of the run, not after our own shutdown
    return _summary(
        counters,
        devices=len(fleet.devices),
        processes=1,
        elapsed_s=time.monotonic() - started,
        cpu_s=process_cpu_s() - cpu_at_start_s,
    )


def _run_processes(
    fleet: FleetFile,
    processes: FleetProcesses,
    duration_s: float | None,
    stop: threading.Event,
    printer: StatusPrinter,
) -> dict[str, Any]:
    cpu_at_start_s = process_cpu_s()
    started = time.monotonic()
    deadline = None if duration_s is None else started + duration_s
    processes.start()
    try:
        while not stop.is_set() and processes.running:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait_s = POLL_INTERVAL_S if deadline is None else min(POLL_INTERVAL_S, deadline - now)
            processes.poll(max(wait_s, 0.0))
            printer.update(processes.snapshot())
    finally:
        processes.stop()
    return _summary(
        processes.snapshot(),
        devices=len(fleet.devices),
        processes=processes.processes,
        elapsed_s=time.monotonic() - started,
        cpu_s=processes.cpu_s + process_cpu_s() - cpu_at_start_s,
    )


def _summary(
    counters: dict[str, Any], *, devices: int, processes: int, elapsed_s: float, cpu_s: float
) -> dict[str, Any]:
    answered = int(counters["commands_answered"])
    counters.pop("final", None)
    return {
        **counters,
        "devices": devices,
        "processes": processes,
        "elapsed_s": round(elapsed_s, 3),
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_command": round(cpu_s * 1e6 / answered, 2) if answered else None,
    }


def print_summary(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    """The end-of-run table."""
    console = Console(file=stream if stream is not None else sys.stdout, highlight=False)
    table = Table(title="fleetbatch sim", show_header=False, title_justify="left")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if key == "refused":
            text = ", ".join(f"code {code}: {count}" for code, count in value.items()) or "0"
        elif value is None:
            text = "-"
        else:
            text = f"{value:,}" if isinstance(value, int) else str(value)
        table.add_row(key.replace("_", " "), text)
    console.print(table)


def _check_inputs(
    *,
    fleet: Path,
    mqtt: str,
    processes: int,
    behaviors: list[str],
    seed: int,
    ca_file: Path | None,
    duration_s: float | None,
    sign_type: str,
    qos: int,
    connect_concurrency: int,
) -> tuple[FleetFile, list[Any]]:
    if processes < 1:
        raise UsageError("--processes must be at least 1")
    if connect_concurrency < 1:
        raise UsageError("--connect-concurrency must be at least 1")
    if qos not in (0, 1):
        raise UsageError("--qos must be 0 or 1")
    if sign_type not in ("0", "1"):
        raise UsageError("--sign-type must be 0 or 1")
    if duration_s is not None and duration_s <= 0:
        raise UsageError("--duration must be more than 0 s")
    if ca_file is not None and not ca_file.is_file():
        raise UsageError(f"--ca-file {ca_file} does not exist")
    try:
        scheme, _, _ = parse_broker_url(mqtt)
        specs = parse_behaviors(behaviors)
        loaded = load_fleet(fleet)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if scheme == "mqtts":
        try:
            client_ssl_context(ca_file)  # a CA file that does not load fails here, once
        except (OSError, ValueError) as exc:
            raise UsageError(f"--ca-file {ca_file}: {exc}") from None
    resolved = resolve([device.device_id for device in loaded.devices], specs, seed)
    return loaded, resolved


def run_sim(
    *,
    fleet: Path,
    mqtt: str,
    processes: int = 1,
    behaviors: list[str] | None = None,
    seed: int = 0,
    subscribe: bool = False,
    ca_file: Path | None = None,
    duration_s: float | None = None,
    json_output: bool = False,
    sign_type: str = "1",
    qos: int = 1,
    connect_concurrency: int = 200,
) -> int:
    """Run the simulator until `duration_s` passes or SIGINT/SIGTERM; return the exit code.

    Bad inputs print one line on stderr and return 2; a failed child process returns 1.
    With `processes` > 1 the children are spawned (multiprocessing "spawn"), so a script
    calling this must guard its entry point with `if __name__ == "__main__":`.
    """
    try:
        loaded, resolved = _check_inputs(
            fleet=fleet,
            mqtt=mqtt,
            processes=processes,
            behaviors=list(behaviors or ()),
            seed=seed,
            ca_file=ca_file,
            duration_s=duration_s,
            sign_type=sign_type,
            qos=qos,
            connect_concurrency=connect_concurrency,
        )
    except UsageError as exc:
        _say(sys.stderr, f"fleetbatch: {exc}\n")
        return EXIT_USAGE
    options = SimOptions(
        url=mqtt,
        seed=seed,
        subscribe=subscribe,
        ca_file=str(ca_file) if ca_file is not None else None,
        connect_concurrency=connect_concurrency,
        sign_type=sign_type,
        qos=qos,
    )
    # more processes than devices would leave some with nothing to do
    processes = max(1, min(processes, len(loaded.devices)))
    printer = StatusPrinter(len(loaded.devices))
    stop = threading.Event()
    errors: list[str] = []
    with _stop_on_signals(stop):
        if processes == 1:
            simulator = Simulator(
                loaded.devices,
                mqtt,
                behaviors=resolved,
                seed=seed,
                subscribe=subscribe,
                ca_file=ca_file,
                connect_concurrency=connect_concurrency,
                sign_type=sign_type,
                qos=qos,
            )
            summary = run_on_fast_loop(_run_local(loaded, simulator, duration_s, stop, printer))
        else:
            children = FleetProcesses(loaded.devices, resolved, options, processes)
            summary = _run_processes(loaded, children, duration_s, stop, printer)
            errors = children.errors
    printer.update(summary, force=True)
    printer.finish()
    for error in errors:
        _say(sys.stderr, f"fleetbatch: simulator process failed: {error}\n")
    if json_output:
        _say(sys.stdout, json.dumps(summary) + "\n")
    else:
        print_summary(summary)
    return EXIT_FAILED if errors else EXIT_OK
