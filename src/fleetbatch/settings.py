"""One settings object: CLI flags, then `FLEETBATCH_*` environment variables, then defaults."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("fleetbatch-data")


class Settings(BaseSettings):
    """Everything fleetbatch can be configured with. Values given to the constructor win.

    The CLI passes the flags the user gave as constructor arguments; anything not given
    comes from `FLEETBATCH_<NAME>` (e.g. `FLEETBATCH_DATABASE`) or the default below.
    """

    model_config = SettingsConfigDict(env_prefix="FLEETBATCH_", extra="forbid")

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where the embedded defaults write.")
    database: str | None = Field(
        None, description="Database URL; default: SQLite file <data-dir>/fleetbatch.db."
    )
    host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)
    https_port: int = Field(8743, ge=0, le=65535)
    mqtt_port: int = Field(1883, ge=0, le=65535)
    mqtts_port: int = Field(8883, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    secret_key: SecretStr | None = Field(
        None,
        description="Base64 of 32 bytes that encrypt secrets at rest; "
        "default: generated into <data-dir>/secret.key.",
    )
    sqlite_busy_timeout_s: float = Field(30.0, gt=0)
    db_pool_size: int = Field(10, ge=1)
    db_timeout_s: float = Field(30.0, gt=0)
    default_throttle_per_min: int = Field(100, ge=1)
    legacy_max_unfinished_tasks: int = Field(
        1,
        ge=1,
        description="Legacy batch tasks an app may have unfinished at once (S003: 105001 "
        "from the first unfinished one).",
    )
    shutdown_timeout_s: float = Field(10.0, gt=0)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    broker: str | None = Field(
        None,
        description="mqtt://host:port (or mqtts://) of an external broker; "
        "default: devices connect to fleetbatch's own MQTT ports.",
    )
    broker_username: str = Field(
        "fleetbatch-platform", description="The platform's own account on the external broker."
    )
    broker_password: SecretStr | None = Field(
        None, description="Password of that account; the EMQX auth endpoint accepts it."
    )
    broker_client_id: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="The platform's MQTT client id; default: fleetbatch-<host>-<pid>, so that "
        "several nodes never take each other's session over.",
    )

    @property
    def platform_client_id(self) -> str:
        """The broker client id to use: the configured one, else one unique to this process."""
        if self.broker_client_id:
            return self.broker_client_id
        return f"fleetbatch-{socket.gethostname()}-{os.getpid()}"[:64]

    broker_share_group: str | None = Field(
        "fleetbatch", description="$share group for uplink subscriptions; empty: plain ones."
    )
    broker_ca_file: Path | None = None
    mqtt_timestamp_tolerance_s: int = Field(
        3600, ge=0, description="Sign type 1: how far a device's hour stamp may be from now."
    )
    mqtt_max_packet_bytes: int = Field(1024 * 1024, ge=128, le=268_435_455)
    mqtt_connect_timeout_s: float = Field(10.0, gt=0)
    presence_flush_s: float = Field(0.5, gt=0, description="How often presence is persisted.")
    engine_enabled: bool = Field(True, description="Run the batch engine in `serve`.")
    engine_batch_size: int = Field(
        500, ge=1, le=10_000, description="Subtasks claimed per task per dispatch round."
    )
    engine_max_in_flight: int = Field(
        2000, ge=1, description="Device operations one engine worker keeps in flight at most."
    )
    engine_sweep_s: float = Field(
        0.5, gt=0, description="How often timeouts, retries, schedules and leases are checked."
    )
    engine_lease_s: float = Field(
        10.0, gt=0, description="A worker silent this long is dead; its subtasks go to others."
    )
    engine_flush_ms: float = Field(
        2.0, ge=0, description="How long device results gather before one write applies them."
    )
    engine_close_wait_s: float = Field(
        2.0,
        ge=0,
        description="How long a stopping engine waits for answers in flight before it leaves "
        "them to the next worker.",
    )
    engine_expand_chunk: int = Field(
        20_000, ge=100, description="Devices a selector expands into subtasks per transaction."
    )
    command_timeout_s: float = Field(
        20.0, gt=0, description="How long a device has to answer a command (IoTDA: 20 s)."
    )
    outbox_enabled: bool = Field(True, description="Deliver callbacks from the outbox in `serve`.")
    outbox_poll_s: float = Field(0.2, gt=0, description="How often the outbox looks for due rows.")
    outbox_backoff_s: float = Field(
        1.0, gt=0, description="The first retry's delay; it doubles per failure."
    )
    outbox_backoff_max_s: float = Field(300.0, gt=0, description="The longest retry delay.")
    outbox_per_url: int = Field(4, ge=1, description="Deliveries in flight to one URL at most.")
    outbox_timeout_s: float = Field(10.0, gt=0, description="One delivery's HTTP timeout.")
    outbox_lease_s: float = Field(
        60.0, gt=0, description="A leased row not marked in this time is delivered again."
    )

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parse_broker_url(value)
        return value

    @field_validator("database")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if not value:
            return None
        normalize_database_url(value)  # refuse an unsupported URL now, not on first use
        return value

    @property
    def sqlite_path(self) -> Path:
        """The embedded database file."""
        return self.data_dir / "fleetbatch.db"

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL: the embedded SQLite file unless a URL was given."""
        if self.database is None:
            return f"sqlite+aiosqlite:///{self.sqlite_path.resolve()}"
        return normalize_database_url(self.database)

    @property
    def is_embedded_database(self) -> bool:
        """True when the store is the SQLite file in the data dir."""
        return self.database is None


def normalize_database_url(url: str) -> str:
    """Map the URLs users write to the async drivers fleetbatch uses.

    `postgresql://`, `postgres://` and `postgresql+psycopg://` become `postgresql+asyncpg://`;
    `sqlite:///path` becomes `sqlite+aiosqlite:///path`. Anything else is refused.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    base = scheme.split("+", 1)[0].lower()
    if base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise ValueError(f"unsupported database {scheme!r}: use sqlite:/// or postgresql://")


def parse_broker_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `mqtt://host[:port]` or `mqtts://host[:port]`; ValueError else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts") or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"broker URL must be mqtt://host:port or mqtts://host:port, not {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker port must be a number 1-65535 in {url!r}") from None
    if not parts.hostname or port == 0:
        raise ValueError(f"broker URL needs a host and a port 1-65535: {url!r}")
    return scheme, parts.hostname, port or (8883 if scheme == "mqtts" else 1883)


def load_settings(**overrides: Any) -> Settings:
    """Settings from flags (the non-None `overrides`), environment and defaults."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
