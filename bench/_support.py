"""Shared bench plumbing: the tests' throwaway servers, child-process resource use."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.postgres import PostgresServer  # noqa: E402

__all__ = ["ChildRun", "PostgresServer", "run_child"]


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
