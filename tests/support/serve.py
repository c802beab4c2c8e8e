"""A `fleetbatch serve` child process on free ports, as tests drive the real server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fleetbatch.settings import Settings

from . import LOOPBACK, free_port
from .cli import FLEETBATCH
from .waiting import wait_until_sync

HEALTHY_WITHIN_S = 15
EXIT_WITHIN_S = 10
BIND_ATTEMPTS = 3


@dataclass
class ServeProcess:
    """A `fleetbatch serve` child process and the ports it was given."""

    proc: subprocess.Popen[str]
    data_dir: Path
    http_port: int
    https_port: int
    mqtt_port: int = 0
    mqtts_port: int = 0

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://{LOOPBACK}:{self.https_port}"

    def healthy(self) -> bool:
        """True when /health answers 200 ok right now."""
        response = health(self.http_url)
        return response is not None and response.status_code == 200

    def finish(self, timeout_s: float = EXIT_WITHIN_S) -> tuple[int, str]:
        """Wait for the exit; the exit code and everything written to stderr."""
        _, stderr = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, stderr


def spawn(data_dir: Path, http_port: int, https_port: int, *flags: str) -> ServeProcess:
    """Start `fleetbatch serve` with these ports (and extra `flags`, e.g. `--database`).

    The MQTT ports are free ones too, unless `flags` name them or an external broker.
    """
    mqtt_port = mqtts_port = 0
    if not any(flag in ("--mqtt-port", "--mqtts-port", "--broker") for flag in flags):
        mqtt_port, mqtts_port = free_port(), free_port()
        flags = (*flags, "--mqtt-port", str(mqtt_port), "--mqtts-port", str(mqtts_port))
    proc = subprocess.Popen(
        [
            *FLEETBATCH,
            "serve",
            *flags,
            "--data-dir",
            str(data_dir),
            "--host",
            LOOPBACK,
            "--http-port",
            str(http_port),
            "--https-port",
            str(https_port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return ServeProcess(proc, data_dir, http_port, https_port, mqtt_port, mqtts_port)


def health(url: str, **client_options: object) -> httpx.Response | None:
    """The /health response, or None while nothing answers."""
    try:
        with httpx.Client(timeout=2, **client_options) as client:  # type: ignore[arg-type]
            return client.get(f"{url}/health")
    except httpx.TransportError:
        return None


def start_healthy(data_dir: Path, *flags: str) -> ServeProcess:
    """A server on free ports, answering /health ok; retried when a port was taken meanwhile."""
    for _ in range(BIND_ATTEMPTS):
        server = spawn(data_dir, free_port(), free_port(), *flags)

        def ok_or_exited(server: ServeProcess = server) -> bool:
            response = health(server.http_url)
            ok = response is not None and response.status_code == 200
            return ok or server.proc.poll() is not None

        wait_until_sync(ok_or_exited, timeout_s=HEALTHY_WITHIN_S, message="server healthy")
        if server.proc.poll() is None:
            return server
        code, stderr = server.finish()
        if code != 2:  # 2: a free port was taken before the server bound it
            pytest.fail(f"server exited with {code}: {stderr}")
    pytest.fail(f"no free ports in {BIND_ATTEMPTS} attempts")


def restartable_flags(settings: Settings) -> tuple[tuple[str, ...], str]:
    """`serve` flags for `settings`' store on MQTT ports chosen now, and the devices' URL.

    A server started again with the same flags (after `kill_9`) listens where the devices
    reconnect.
    """
    mqtt_port = free_port()
    flags: tuple[str, ...] = ("--mqtt-port", str(mqtt_port), "--mqtts-port", str(free_port()))
    if settings.database is not None:
        flags += ("--database", settings.database)
    return flags, f"mqtt://{LOOPBACK}:{mqtt_port}"


def kill_9(server: ServeProcess) -> None:
    """SIGKILL (no cleanup, no last flush), returning once the process is gone."""
    server.proc.kill()
    server.proc.wait()


def stop_process(server: ServeProcess) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
    server.finish()


@contextmanager
def running_server(settings: Settings) -> Iterator[ServeProcess]:
    """`fleetbatch serve` on free ports over `settings`' store, healthy, stopped after."""
    flags = [] if settings.database is None else ["--database", settings.database]
    server = start_healthy(settings.data_dir, *flags)
    try:
        yield server
    finally:
        stop_process(server)
