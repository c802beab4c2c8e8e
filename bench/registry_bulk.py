"""Bulk device registration: devices per second and peak RSS, on SQLite and PostgreSQL.

Runs `fleetbatch admin create-devices --count N` (the real command, its own process) on a
fresh store of each kind, and prints the rate the command measured around the database
work, the whole command's wall time, and its peak RSS. PostgreSQL is a throwaway server
started here (tests/support/postgres.py). One run; the machine is shared, expect ±30%.

    python bench/registry_bulk.py --devices 100000
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from _support import FLEETBATCH, bench_parser, run_child, stores


def measure(kind: str, devices: int, workdir: Path, url: str | None) -> dict[str, float]:
    data_dir = workdir / kind
    store = ["--data-dir", str(data_dir)]
    if url is not None:
        store += ["--database", url]
    app = json.loads(
        run_child([*FLEETBATCH, "admin", "create-app", *store, "--name", "bench", "--json"]).stdout
    )
    run = run_child(
        [
            *FLEETBATCH, "admin", "create-devices", *store, "--app", app["app_id"],
            "--count", str(devices), "--group", "bench", "--out", str(workdir / f"{kind}.json"),
            "--json",
        ]
    )  # fmt: skip
    summary = json.loads(run.stdout)
    assert summary["created"] == devices
    return {
        "devices_per_s": summary["devices_per_s"],
        "create_s": summary["seconds"],
        "command_wall_s": round(run.wall_s, 2),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "cpu_s": round(run.cpu_s, 2),
    }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    kinds = args.databases.split(",")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fleetbatch-bench-") as tmp, stores(kinds) as (_, urls):
        for kind, url in urls.items():
            results[kind] = measure(kind, args.devices, Path(tmp), url)
            print(f"{kind:>10}: {json.dumps(results[kind])}", flush=True)
    if len(results) == 2:
        ratio = results["postgresql"]["devices_per_s"] / results["sqlite"]["devices_per_s"]
        print(f"postgresql/sqlite devices-per-second ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
