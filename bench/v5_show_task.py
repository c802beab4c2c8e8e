"""ShowBatchTask through the official huaweicloudsdkiotda client on a 100,000-subtask task.

    python bench/v5_show_task.py [--database sqlite|postgresql|both] [--subtasks 100000]
                                 [--iterations 200] [--json]

Setup (not measured): a fresh store per database, an app with its AK/SK, and two finished
`createCommands` tasks built as `status_scale.py` builds them (rows from one generated
`INSERT .. SELECT`: 1% fail, 1% timeout, the rest success; counters from the rows): `small`
(10 subtasks) and `big` (`--subtasks`). Then `fleetbatch serve` starts on free ports over
that store, and one SDK client (plain `SDK-HMAC-SHA256` signing, HTTP keep-alive) calls
`show_batch_task` in a loop, interleaving the tasks and cases so all see the same noise.

Cases: the first page (default limit 10), a page of 50, a page of 50 filtered on `Fail`
(IoTDA's word: fail and timeout rows), the page 500 rows below the newest (offset 500), and
a page 50 deep by marker (the id 10,000 rows above the task's oldest subtask). Each call is
a whole round trip: signing, HTTP, the AK/SK check (an SK lookup and decryption), the reads
and the JSON response, parsed into the SDK's models.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import add_database_arg, add_json_arg, bench_parser, percentile, workspace
from status_scale import build, oldest_id
from support.serve import start_healthy, stop_process

SMALL = 10
WARMUP = 10
DEEP_ROWS = 10_000


async def prepare(data_dir: Path, url: str | None, kind: str, count: int) -> dict[str, Any]:
    """App credentials and the two tasks, written through the service (not measured)."""
    from fleetbatch.runtime import Runtime
    from fleetbatch.settings import Settings

    async with await Runtime.open(Settings(data_dir=data_dir, database=url)) as runtime:
        creds = await runtime.registry.apps.create("bench-v5")
        small = await build(runtime, kind, SMALL, "small", creds.app_id)
        big = await build(runtime, kind, count, "big", creds.app_id)
        if kind == "postgresql":
            async with runtime.store.write() as conn:
                await conn.exec_driver_sql("ANALYZE")
        deep = {
            task.task_id: f"{await oldest_id(runtime, task.pk) + DEEP_ROWS:024x}"
            for task in (small, big)
        }
    return {
        "project_id": creds.project_id,
        "ak": creds.access_key,
        "sk": creds.secret_key,
        "tasks": {"small": small.task_id, "big": big.task_id},
        "deep": deep,
    }


def measure(endpoint: str, setup: dict[str, Any], iterations: int) -> list[dict[str, Any]]:
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkiotda.v5 import IoTDAClient, ShowBatchTaskRequest

    credentials = BasicCredentials(setup["ak"], setup["sk"], setup["project_id"])
    client = IoTDAClient.new_builder().with_credentials(credentials).with_endpoint(endpoint).build()
    cases: dict[str, dict[str, Any]] = {
        "first page (limit 10)": {},
        "limit 50": {"limit": 50},
        "limit 50, status Fail": {"limit": 50, "task_detail_status": "Fail"},
        "limit 50, offset 500": {"limit": 50, "offset": 500},
        "limit 50, deep marker": {"limit": 50, "marker": "deep"},
    }
    samples: dict[tuple[str, str], list[float]] = {}
    for round_no in range(WARMUP + iterations):
        for case, query in cases.items():
            for size, task_id in setup["tasks"].items():
                params = dict(query)
                if params.get("marker") == "deep":
                    params["marker"] = setup["deep"][task_id]
                request = ShowBatchTaskRequest(task_id=task_id, **params)
                started = time.perf_counter()
                response = client.show_batch_task(request)
                elapsed = time.perf_counter() - started
                assert response.batchtask.task_id == task_id
                if round_no >= WARMUP:
                    samples.setdefault((case, size), []).append(elapsed * 1000)
    return [
        {
            "case": case,
            "task": size,
            "p50_ms": round(percentile(values, 0.5), 2),
            "p99_ms": round(percentile(values, 0.99), 2),
            "n": len(values),
        }
        for (case, size), values in samples.items()
    ]


def main() -> None:
    parser = bench_parser(__doc__)
    add_database_arg(parser)
    parser.add_argument("--subtasks", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=200)
    add_json_arg(parser)
    args = parser.parse_args()
    results = []
    with workspace(args.database, "fbbench-v5-") as (work, _, urls):
        for kind, url in urls.items():
            data_dir = work / kind
            setup = asyncio.run(prepare(data_dir, url, kind, args.subtasks))
            flags = ["--database", url] if url else []
            server = start_healthy(data_dir, *flags)
            try:
                rows = measure(server.http_url, setup, args.iterations)
            finally:
                stop_process(server)
            results += [{"database": kind, "subtasks": args.subtasks, **row} for row in rows]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"ShowBatchTask through huaweicloudsdkiotda, {args.iterations} calls per case")
    print(f"{'database':<11}{'case':<26}{'task':<7}{'p50 ms':>8}{'p99 ms':>8}")
    for row in results:
        print(
            f"{row['database']:<11}{row['case']:<26}{row['task']:<7}"
            f"{row['p50_ms']:>8}{row['p99_ms']:>8}"
        )


if __name__ == "__main__":
    main()
