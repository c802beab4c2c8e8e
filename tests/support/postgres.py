"""A throwaway PostgreSQL server for the tests: its own cluster, port and socket, then gone.

Uses Debian's server binaries (`pg_config --bindir`, else the newest
`/usr/lib/postgresql/*/bin`); `scripts/test.sh` installs them when missing. The cluster
trades durability for speed (fsync, synchronous commit and full page writes are off, the
files live in /dev/shm when there is one) and trusts every local connection. `initdb`
refuses to run as root, so as root the server runs as the `postgres` system user (or
`nobody`), which owns the temp dir.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import LOOPBACK, free_port

SUPERUSER = "fleetbatch"
HOST = LOOPBACK
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
PSQL_TIMEOUT_S = 60
# a port picked by binding to 0 can be taken by someone else before postgres binds it
START_ATTEMPTS = 3
SERVER_OPTIONS = (
    f"-c listen_addresses={HOST}",
    "-c fsync=off",
    "-c synchronous_commit=off",
    "-c full_page_writes=off",
    "-c max_connections=200",
)
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "psql")
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the server would not start."""


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and psql; raises PostgresUnavailable if none."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    # libpq-dev's pg_config names /usr/bin, which has no initdb: fall back to Debian's layout
    versions = [p for p in _DEBIAN_ROOT.glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in _REQUIRED_BINARIES):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, psql) not found via `pg_config --bindir` "
        f"or {_DEBIAN_ROOT}/*/bin; install them with `apt-get install -y postgresql` "
        "or run `bash scripts/test.sh`, which does"
    )


@dataclass(frozen=True)
class _Account:
    """Who runs the server processes: None means the current user."""

    uid: int | None = None
    gid: int | None = None
    home: str | None = None


def _server_account() -> _Account:
    if os.geteuid() != 0:
        return _Account()
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _Account(uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)
    raise PostgresUnavailable("running as root, and neither user `postgres` nor `nobody` exists")


class PostgresServer:
    """A running throwaway cluster; `create_database` hands out fresh empty databases."""

    def __init__(self, bindir: Path, base_dir: Path, port: int, account: _Account) -> None:
        self.bindir = bindir
        self.base_dir = base_dir
        self.port = port
        self.host = HOST
        self.user = SUPERUSER
        self._account = account
        self._running = False

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    @classmethod
    def start(cls) -> PostgresServer:
        """initdb a new cluster in a temp dir and start it on a free port.

        Raises PostgresUnavailable (with the server log) when it cannot be started.
        """
        bindir = find_bindir()
        account = _server_account()
        # short prefix: the socket path must stay under the 107-byte limit of unix sockets
        base_dir = Path(tempfile.mkdtemp(prefix="fbpg-", dir=_scratch_root()))
        server: PostgresServer | None = None
        try:
            server = cls(bindir, base_dir, free_port(), account)
            server._init_cluster()
            for attempt in range(1, START_ATTEMPTS + 1):
                try:
                    server._start_postmaster()
                    break
                except PostgresUnavailable:
                    if attempt == START_ATTEMPTS:
                        raise
                    server.port = free_port()
            return server
        except BaseException:
            if server is not None:
                server.stop()
            else:
                shutil.rmtree(base_dir, ignore_errors=True)
            raise

    def url(self, database: str = "postgres") -> str:
        """The `postgresql://` URL of `database` on this server (trust auth: no password)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create a new empty database (a generated name unless given); return its URL."""
        name = name or f"t_{uuid.uuid4().hex}"
        _check_name(name)
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop `name`, disconnecting anyone still connected to it."""
        _check_name(name)
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run one SQL command as the superuser and return psql's unaligned output."""
        result = subprocess.run(
            [
                str(self.bindir / "psql"),
                "--no-psqlrc",
                "--quiet",
                "--tuples-only",
                "--no-align",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=PSQL_TIMEOUT_S,
            env=_clean_env(),
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}) on {sql!r}: {result.stderr}")
        return result.stdout.strip()

    def restart(self) -> None:
        """Stop the server at once and start it again on the same port, data kept: every
        connection to it is cut."""
        self._run_as_server(
            ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"],
            timeout_s=STOP_TIMEOUT_S,
            check=False,
        )
        self._running = False
        self._start_postmaster()

    def stop(self) -> None:
        """Stop the server at once (the data is thrown away) and remove its directory."""
        try:
            if self._running or (self.data_dir / "postmaster.pid").exists():
                self._run_as_server(
                    ["pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"],
                    timeout_s=STOP_TIMEOUT_S,
                    check=False,
                )
                self._running = False
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _init_cluster(self) -> None:
        self.socket_dir.mkdir()
        if self._account.uid is not None:
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, self._account.uid, self._account.gid or 0)
        self._run_as_server(
            [
                "initdb",
                "-D",
                str(self.data_dir),
                "--auth=trust",
                f"--username={SUPERUSER}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            timeout_s=START_TIMEOUT_S,
        )

    def _start_postmaster(self) -> None:
        options = " ".join((*SERVER_OPTIONS, f"-p {self.port}", f"-k {self.socket_dir}"))
        started = time.monotonic()
        result = self._run_as_server(
            [
                "pg_ctl",
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-o",
                options,
            ],
            timeout_s=START_TIMEOUT_S + 10,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"pg_ctl start failed ({result.returncode}) after "
                f"{time.monotonic() - started:.1f} s on port {self.port}: "
                f"{result.stderr.strip()}\n--- server log ---\n{self.log_tail()}"
            )
        self._running = True

    def _run_as_server(
        self, argv: Sequence[str], *, timeout_s: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the account that owns the cluster."""
        account = self._account
        env = _clean_env()
        kwargs: dict[str, object] = {}
        if account.uid is not None:
            env["HOME"] = str(self.base_dir)
            kwargs = {"user": account.uid, "group": account.gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            # the server user may not be allowed into the caller's working directory
            cwd=self.base_dir,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result


def _scratch_root() -> str | None:
    """Where the cluster lives: RAM-backed /dev/shm when usable, else the temp dir.

    Creating a database makes hundreds of small files; on the ext4 disk of these machines
    that takes about 200 ms, on tmpfs about 15 ms, and startup halves too.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return str(shm)
    return None


def _check_name(name: str) -> None:
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")


def _clean_env() -> dict[str, str]:
    """The environment without libpq's PG* variables, which would redirect our commands."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env
