"""A throwaway Mosquitto broker for the tests: anonymous, on a free loopback port.

Uses Debian's `mosquitto` binary; `scripts/test.sh` installs it when missing. Ready means
the port accepts TCP connections, polled under a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from . import LOOPBACK, free_port
from .waiting import wait_until_sync

HOST = LOOPBACK
START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 10
# a port picked by binding to 0 can be taken by someone else before mosquitto binds it
START_ATTEMPTS = 3
_SEARCH_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"))


class MosquittoUnavailable(RuntimeError):
    """The mosquitto binary is missing or the broker would not start."""


def find_mosquitto() -> Path:
    """The broker binary; raises MosquittoUnavailable when it is not installed."""
    found = shutil.which("mosquitto", path=_SEARCH_PATH)
    if found is None:
        raise MosquittoUnavailable(
            "the `mosquitto` broker binary was not found (looked in PATH and /usr/sbin); "
            "install it with `apt-get install -y mosquitto` or run `bash scripts/test.sh`, "
            "which does"
        )
    return Path(found)


def _port_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


class MosquittoBroker:
    """A running broker; `url` is `mqtt://127.0.0.1:PORT`."""

    def __init__(self, binary: Path, base_dir: Path) -> None:
        self.binary = binary
        self.base_dir = base_dir
        self.host = HOST
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self.extra_config: list[str] = []

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.base_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "mosquitto.log"

    @classmethod
    def start(cls, extra_config: list[str] | None = None) -> MosquittoBroker:
        """Write a config into a temp dir and start the broker on a free port.

        `extra_config` lines are appended to the generated config (benchmarks tune limits).
        Raises MosquittoUnavailable (with the broker's output) when it does not come up.
        """
        binary = find_mosquitto()
        broker = cls(binary, Path(tempfile.mkdtemp(prefix="fbmqtt-")))
        broker.extra_config = list(extra_config or [])
        try:
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    broker._start_once(free_port())
                    break
                except MosquittoUnavailable:
                    if attempt == START_ATTEMPTS:
                        raise
            return broker
        except BaseException:
            broker.stop()
            raise

    def _start_once(self, port: int) -> None:
        self.port = port
        lines = [
            f"listener {port} {HOST}",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            # as root mosquitto would switch to user `mosquitto`, which may not exist
            lines.append("user root")
        lines.extend(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self._process
        try:
            wait_until_sync(
                lambda: process.poll() is not None or _port_accepts(port),
                timeout_s=START_TIMEOUT_S,
                interval_s=0.02,
                message=f"mosquitto did not accept connections on port {port}",
            )
        except AssertionError as exc:
            self._terminate()
            raise MosquittoUnavailable(f"{exc}\n--- broker log ---\n{self.log_tail()}") from exc
        if process.poll() is not None:
            self._process = None
            raise MosquittoUnavailable(
                f"mosquitto exited with {process.returncode} on port {port}\n"
                f"--- broker log ---\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        """The end of the broker's output, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the broker and remove its directory."""
        try:
            self._terminate()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
