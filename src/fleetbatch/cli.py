"""`fleetbatch`: the command line (typer + rich). Commands are thin: they build settings,
open the runtime, call one service, and print the result."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from fleetbatch.domain.errors import FleetbatchError
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings, load_settings

T = TypeVar("T")

app = typer.Typer(
    name="fleetbatch",
    help="Batch tasks over IoT device fleets, speaking Huawei IoTDA's interfaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
admin_app = typer.Typer(help="Administration: apps, credentials, devices.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")

err_console = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where the embedded defaults write [default: ./fleetbatch-data]."
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database", help="Database URL (postgresql://...); default: SQLite in the data dir."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line and hand back the Exit to raise."""
    err_console.print(f"fleetbatch: {message}", style="red", markup=False, highlight=False)
    return typer.Exit(code)


def build_settings(**flags: Any) -> Settings:
    """Settings from the given flags, environment and defaults; bad values end the command."""
    try:
        return load_settings(**flags)
    except (ValidationError, ValueError) as exc:
        raise fail(f"invalid settings: {exc}", 2) from None


def run_with_runtime(settings: Settings, work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Open the runtime, run `work`, close it; fleetbatch errors become one-line messages."""

    async def _main() -> T:
        async with await Runtime.open(settings) as runtime:
            return await work(runtime)

    try:
        return asyncio.run(_main())
    except FleetbatchError as exc:
        raise fail(exc.message) from None


@app.command()
def serve(
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")
    ] = None,
    http_port: Annotated[int | None, typer.Option(help="Plain HTTP port [default: 8080].")] = None,
    https_port: Annotated[int | None, typer.Option(help="HTTPS port [default: 8743].")] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="Device MQTT port [default: 1883].")] = None,
    mqtts_port: Annotated[
        int | None, typer.Option(help="Device MQTTS port [default: 8883].")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).")] = None,
) -> None:
    """Run everything in one process: the northbound APIs over HTTP and HTTPS."""
    from fleetbatch import server

    settings = build_settings(
        data_dir=data_dir,
        database=database,
        host=host,
        http_port=http_port,
        https_port=https_port,
        mqtt_port=mqtt_port,
        mqtts_port=mqtts_port,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    raise typer.Exit(server.run(settings))


def main() -> None:
    """Entry point of the `fleetbatch` command."""
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
