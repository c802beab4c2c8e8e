"""What every `fleetbatch` command shares: store flags, settings, the runtime, errors and exits.

Exit codes: 0 done; 1 the command could not be carried out (not found, wrong state, store
or network trouble); 2 bad usage or bad input (nothing was changed), as click and typer
answer a bad flag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from fleetbatch.domain.errors import FleetbatchError, InvalidInput
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings, load_settings

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USAGE = 2
# the shell's convention for "ended by SIGINT"
EXIT_INTERRUPTED = 130

err_console = Console(stderr=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where the embedded defaults write \\[default: ./fleetbatch-data]."
    ),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database", help="Database URL (postgresql://...); default: SQLite in the data dir."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON only.")]


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print one error line and hand back the Exit to raise."""
    err_console.print(
        f"fleetbatch: {message}", style="red", markup=False, highlight=False, soft_wrap=True
    )
    return typer.Exit(code)


def exit_code_for(error: FleetbatchError) -> int:
    """2 for bad input (the caller can fix the command line), 1 for everything else."""
    return EXIT_USAGE if isinstance(error, InvalidInput) else EXIT_FAILED


def build_settings(**flags: Any) -> Settings:
    """Settings from the given flags, environment and defaults; bad values end the command."""
    try:
        return load_settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise fail(f"invalid settings: {problems}", EXIT_USAGE) from None


def run_with_runtime(settings: Settings, work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Open the runtime, run `work`, close it; fleetbatch errors become one-line messages."""

    async def _main() -> T:
        async with await Runtime.open(settings) as runtime:
            return await work(runtime)

    try:
        return asyncio.run(_main())
    except FleetbatchError as exc:
        raise fail(exc.message, exit_code_for(exc)) from None
