"""Running the real `fleetbatch` command to completion, as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from fleetbatch.settings import Settings

FLEETBATCH = [sys.executable, "-m", "fleetbatch"]
COMMAND_TIMEOUT_S = 120


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
