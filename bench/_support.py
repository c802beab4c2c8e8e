"""Shared bench plumbing: throwaway servers, fleets, the bare round-trip loop, resource use."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.postgres import PostgresServer  # noqa: E402

if TYPE_CHECKING:
    from fleetbatch.devices.channel import DeviceChannel

__all__ = [
    "DATABASE_CHOICES",
    "FLEETBATCH",
    "ROOT",
    "ChildRun",
    "PostgresServer",
    "RoundTripLoop",
    "children_of",
    "database_kinds",
    "emit",
    "make_fleet",
    "percentile",
    "postgres_cpu_s",
    "proc_cpu_s",
    "rss_kb",
    "run_child",
    "setting_arg",
    "stores",
    "subset",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
FLEETBATCH = [sys.executable, "-m", "fleetbatch"]
DATABASE_CHOICES = ("sqlite", "postgresql", "both")


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
