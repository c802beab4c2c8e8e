"""Running the real `fleetbatch` command: one-shot commands and a `serve` child process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from fleetbatch.settings import Settings

from . import LOOPBACK, free_port
from .waiting import wait_until_sync

FLEETBATCH = [sys.executable, "-m", "fleetbatch"]
COMMAND_TIMEOUT_S = 120
HEALTHY_WITHIN_S = 15


def store_flags(settings: Settings) -> list[str]:
    """The `--data-dir` / `--database` flags that point a command at `settings`' store."""
    flags = ["--data-dir", str(settings.data_dir)]
    if settings.database is not None:
        flags += ["--database", settings.database]
    return flags


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `fleetbatch ARGS...` to completion and return what it printed."""
    return subprocess.run(
        [*FLEETBATCH, *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def run_cli_json(*args: str) -> Any:
    """Run a `--json` command that must succeed, and parse its output."""
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass
class RunningServer:
    """A `fleetbatch serve` child process."""

    proc: subprocess.Popen[str]
    http_port: int

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def healthy(self) -> bool:
        """True when /health answers 200 ok right now."""
        try:
            reply = httpx.get(f"{self.http_url}/health", timeout=2)
        except httpx.TransportError:
            return False
        return reply.status_code == 200 and reply.json() == {"status": "ok"}


@contextmanager
def running_server(settings: Settings) -> Iterator[RunningServer]:
    """`fleetbatch serve` on free ports over `settings`' store, healthy, stopped after."""
    http_port, https_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *FLEETBATCH, "serve", *store_flags(settings), "--host", LOOPBACK,
            "--http-port", str(http_port), "--https-port", str(https_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    server = RunningServer(proc, http_port)
    try:
        wait_until_sync(
            lambda: server.healthy() or proc.poll() is not None,
            timeout_s=HEALTHY_WITHIN_S,
            message="fleetbatch serve did not become healthy",
        )
        assert proc.poll() is None, proc.communicate()[1]
        yield server
    finally:
        proc.terminate()
        proc.communicate(timeout=COMMAND_TIMEOUT_S)
