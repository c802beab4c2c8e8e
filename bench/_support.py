"""Shared bench plumbing: command lines, throwaway stores, fleets and the platform and simulator
processes, the bare round-trip loop, resource use."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.postgres import PostgresServer  # noqa: E402

if TYPE_CHECKING:
    from fleetbatch.devices.channel import DeviceChannel
    from fleetbatch.settings import Settings

__all__ = [
    "DATABASE_CHOICES",
    "FLEETBATCH",
    "ROOT",
    "ChildRun",
    "PostgresServer",
    "RoundTripLoop",
    "add_child_args",
    "add_database_arg",
    "add_json_arg",
    "add_load_args",
    "add_settings_arg",
    "bench_parser",
    "child_settings",
    "children_of",
    "database_kinds",
    "device_ids_of",
    "emit",
    "make_fleet",
    "percentile",
    "postgres_cpu_s",
    "print_rows",
    "proc_cpu_s",
    "read_fleet",
    "rss_kb",
    "run_child",
    "setting_arg",
    "setting_flags",
    "start_sim",
    "stop_children",
    "stores",
    "subset",
    "workspace",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
FLEETBATCH = [sys.executable, "-m", "fleetbatch"]
DATABASE_CHOICES = ("sqlite", "postgresql", "both")


# --- command lines ----------------------------------------------------------------------------


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the bench's docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def add_database_arg(parser: argparse.ArgumentParser) -> None:
    """`--database sqlite|postgresql|both` (see `database_kinds`, `workspace`)."""
    parser.add_argument("--database", choices=DATABASE_CHOICES, default="both")


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    """`--json`: the rows as JSON instead of a table (see `print_rows`)."""
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def add_settings_arg(parser: argparse.ArgumentParser, example: str) -> None:
    """`--set NAME=VALUE` (repeatable): `Settings` fields for the server a bench starts."""
    parser.add_argument(
        "--set",
        dest="settings",
        type=setting_arg,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a server setting, e.g. {example} (repeatable)",
    )


def add_load_args(parser: argparse.ArgumentParser, *, window_s: float) -> None:
    """The bare loop's load: `--in-flight` commands kept outstanding for `--window-s`."""
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--window-s", type=float, default=window_s)
    parser.add_argument("--warmup-s", type=float, default=2.0)


def add_child_args(parser: argparse.ArgumentParser, role: str, *options: str) -> None:
    """Hidden options with which a bench starts itself as its child: `role` and valued ones."""
    parser.add_argument(role, action="store_true", help=argparse.SUPPRESS)
    for option in options:
        parser.add_argument(option, help=argparse.SUPPRESS)


def setting_flags(settings: Sequence[tuple[str, str]]) -> list[str]:
    """The `--set` flags that hand `settings` on to a child process."""
    return [flag for name, value in settings for flag in ("--set", f"{name}={value}")]


def child_settings(args: argparse.Namespace, **defaults: Any) -> Settings:
    """The server settings of a platform child: its store, free ports, quiet logs, `--set`.

    `args` has `data_dir`, `database_url` and `settings`; `defaults` give way to `--set`.
    """
    from fleetbatch.settings import Settings

    return Settings(
        data_dir=Path(args.data_dir),
        database=args.database_url or None,
        http_port=0,
        https_port=0,
        mqtt_port=0,
        mqtts_port=0,
        log_level="warning",
        **{**defaults, **dict(args.settings)},
    )


def print_rows(
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    print_table: Callable[[list[dict[str, Any]], argparse.Namespace], None],
) -> None:
    """The rows as JSON with `--json`, else as the bench's table."""
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, args)


@dataclass(frozen=True)
class ChildRun:
    """What one child process printed and used."""

    stdout: str
    wall_s: float
    peak_rss_mb: float
    cpu_s: float


def run_child(args: list[str], *, env: dict[str, str] | None = None) -> ChildRun:
    """Run a command to completion; its own peak RSS comes from wait4's rusage."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}")
    return ChildRun(out, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


# --- databases ------------------------------------------------------------------------------


def database_kinds(choice: str) -> list[str]:
    """The `--database sqlite|postgresql|both` flag as the list of kinds to run."""
    return ["sqlite", "postgresql"] if choice == "both" else [choice]


@contextlib.contextmanager
def stores(kinds: Sequence[str]) -> Iterator[tuple[PostgresServer | None, dict[str, str | None]]]:
    """A throwaway PostgreSQL server when asked for, and a fresh database URL per kind.

    SQLite's URL is None: the store is the file in the data dir.
    """
    pg = PostgresServer.start() if "postgresql" in kinds else None
    try:
        urls = {
            kind: (pg.create_database() if kind == "postgresql" and pg else None) for kind in kinds
        }
        yield pg, urls
    finally:
        if pg is not None:
            pg.stop()


@contextlib.contextmanager
def workspace(
    choice: str, prefix: str
) -> Iterator[tuple[Path, PostgresServer | None, dict[str, str | None]]]:
    """A temp dir, and `stores` for the `--database` choice: (dir, server, URL per kind)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, stores(database_kinds(choice)) as found:
        yield Path(tmp), *found


def postgres_cpu_s(pg: PostgresServer | None) -> float:
    """CPU seconds used so far by every process of the throwaway PostgreSQL server."""
    if pg is None:
        return 0.0
    try:
        postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return proc_cpu_s(children_of(postmaster))


def setting_arg(text: str) -> tuple[str, str]:
    """`--set name=value`: one `Settings` field for the server process a bench starts."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


# --- processes ------------------------------------------------------------------------------


def rss_kb() -> int:
    """This process's resident set size now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def emit(event: str, **fields: Any) -> None:
    """One JSON event line on stdout, for the driver process reading a child's output."""
    print(json.dumps({"event": event, **fields}), flush=True)


def proc_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (from /proc; gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def children_of(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for kid in kids:
        found.extend(children_of(int(kid)))
    return found


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile of `values` (nearest rank: p99 of 300 is the 297th)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


# --- fleets ---------------------------------------------------------------------------------


def _admin(*args: str) -> str:
    done = subprocess.run([*FLEETBATCH, "admin", *args], check=True, capture_output=True, text=True)
    return done.stdout


def make_fleet(data_dir: Path, count: int, fleet: Path, database: str | None = None) -> None:
    """Register an app and `count` devices (the real CLI); their secrets go to `fleet`."""
    store = ["--data-dir", str(data_dir)] + (["--database", database] if database else [])
    _admin("create-app", "--name", "bench", *store, "--json")
    apps = json.loads(_admin("list-apps", *store, "--json"))
    _admin(
        "create-devices",
        "--app",
        apps[0]["app_id"],
        "--count",
        str(count),
        "--out",
        str(fleet),
        *store,
    )


def subset(fleet: Path, count: int, out: Path) -> None:
    """A fleet file with the first `count` devices of `fleet`."""
    data = json.loads(fleet.read_text())
    data["devices"] = data["devices"][:count]
    out.write_text(json.dumps(data))
    out.chmod(0o600)


def read_fleet(path: Path | str) -> dict[str, Any]:
    """A fleet file's content (`admin create-devices --out`)."""
    fleet: dict[str, Any] = json.loads(Path(path).read_text())
    return fleet


def device_ids_of(fleet: dict[str, Any]) -> list[str]:
    """The device ids of a fleet file's content, in file order."""
    return [device["device_id"] for device in fleet["devices"]]


# --- the simulator and platform processes ----------------------------------------------------


def start_sim(
    fleet: Path, url: str, *flags: str, stdout: int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """`fleetbatch sim` over `fleet`, connecting to `url`; its stderr is dropped."""
    command = [*FLEETBATCH, "sim", "--fleet", str(fleet), "--mqtt", url, "--json", *flags]
    return subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL, text=True)


def stop_children(platform: subprocess.Popen[str], sim: subprocess.Popen[str] | None) -> None:
    """Kill the platform if it still runs; end the simulator with SIGINT (killed after 30 s)."""
    if platform.poll() is None:
        platform.kill()
        platform.wait()
    if sim is not None:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sim.kill()


# --- the bare command round-trip loop ---------------------------------------------------------


class RoundTripLoop:
    """Commands straight through a device channel, `in_flight` kept outstanding: no engine.

    Each of the `in_flight` slots owns its own slice of the devices and has one command in
    flight at a time; a finished command starts the slot's next one from its done callback.
    """

    def __init__(self, channel: DeviceChannel, device_ids: Sequence[str], in_flight: int) -> None:
        self.channel = channel
        self.device_ids = list(device_ids)
        self.in_flight = in_flight
        self._counter = 0
        self._slices = [self.device_ids[i::in_flight] or self.device_ids for i in range(in_flight)]
        self._positions = [0] * in_flight
        self._done = self._failed = self._active = 0
        self._stop_at = 0.0
        self._finished: asyncio.Future[None] | None = None

    def _next_id(self) -> str:
        self._counter += 1
        return f"b{self._counter}"

    async def probe_all(self, *, deadline_s: float = 120) -> list[str]:
        """Every device answers once (proves its connection); the ids that never did."""
        from fleetbatch.devices import topics
        from fleetbatch.devices.channel import NoResponse
        from fleetbatch.domain.errors import FleetbatchError

        waiting = list(self.device_ids)
        deadline = time.monotonic() + deadline_s
        sem = asyncio.Semaphore(self.in_flight)

        async def probe(device_id: str) -> str | None:
            async with sem:
                try:
                    await self.channel.request(
                        topics.command(device_id, self._next_id()), timeout_s=5
                    )
                except (NoResponse, FleetbatchError):
                    return device_id
                return None

        while waiting and time.monotonic() < deadline:
            results = await asyncio.gather(*(probe(d) for d in waiting))
            waiting = [d for d in results if d is not None]
        return waiting

    def _fire(self, slot: int) -> None:
        from fleetbatch.devices import topics

        mine = self._slices[slot]
        device_id = mine[self._positions[slot] % len(mine)]
        self._positions[slot] += 1
        downlink = topics.command(device_id, self._next_id(), service_id="s", command_name="c")
        self.channel.submit(downlink, timeout_s=10).add_done_callback(
            lambda future, slot=slot: self._landed(slot, future)
        )

    def _landed(self, slot: int, future: asyncio.Future[Any]) -> None:
        if future.exception() is None:
            self._done += 1
        else:
            self._failed += 1
        if time.perf_counter() < self._stop_at:
            self._fire(slot)
            return
        self._active -= 1
        if self._active == 0 and self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    async def run(self, seconds: float) -> tuple[int, int, float]:
        """Keep the window full for `seconds`: (round trips, failed, elapsed seconds)."""
        self._done = self._failed = 0
        self._finished = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        self._stop_at = started + seconds
        self._active = self.in_flight
        for slot in range(self.in_flight):
            self._fire(slot)
        await self._finished
        return self._done, self._failed, time.perf_counter() - started
