"""`fleetbatch admin ...` as users run it: the real command, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from support.cli import FLEETBATCH, run_cli, run_cli_json, store_flags
from support.serve import running_server
from support.waiting import wait_until_sync

CREDENTIAL_KEYS = {"project_id", "app_id", "secret", "access_key", "secret_key"}


def create_app(settings: Settings, name: str = "cli") -> dict[str, str]:
    result: dict[str, str] = run_cli_json(
        "admin", "create-app", *store_flags(settings), "--name", name
    )
    return result


async def test_create_app_prints_exactly_the_five_credentials(settings: Settings) -> None:
    credentials = create_app(settings)

    assert set(credentials) == CREDENTIAL_KEYS
    assert re.fullmatch(r"[0-9a-f]{32}", credentials["project_id"])
    async with await Runtime.open(settings) as runtime:
        app = await runtime.registry.apps.verify_secret(
            credentials["app_id"], credentials["secret"]
        )
        assert app.project_id == credentials["project_id"]
        assert await runtime.registry.apps.secret_key_for(credentials["access_key"]) == (
            credentials["project_id"],
            credentials["secret_key"],
        )


async def test_create_devices_writes_a_private_fleet_file_of_registered_devices(
    settings: Settings, tmp_path: Path
) -> None:
    app = create_app(settings)
    fleet_path = tmp_path / "fleet.json"

    summary = run_cli_json(
        "admin", "create-devices", *store_flags(settings), "--app", app["app_id"],
        "--count", "2000", "--group", "floor-1", "--out", str(fleet_path),
    )  # fmt: skip

    assert summary["created"] == 2000
    assert stat.S_IMODE(fleet_path.stat().st_mode) == 0o600
    fleet = json.loads(fleet_path.read_text())
    assert fleet["app_id"] == app["app_id"]
    entries = fleet["devices"]
    assert len(entries) == len({entry["device_id"] for entry in entries}) == 2000
    async with await Runtime.open(settings) as runtime:
        registry = runtime.registry
        group = await registry.groups.find(app["app_id"], "floor-1")
        assert group is not None
        assert (await registry.groups.members(app["project_id"], group.group_id)).count == 2000
        for entry in (entries[0], entries[-1]):
            status_and_secret = await registry.devices.credentials(entry["device_id"])
            assert status_and_secret is not None
            assert status_and_secret[1] == entry["secret"]


def test_bad_input_is_one_line_and_writes_nothing(settings: Settings, tmp_path: Path) -> None:
    fleet_path = tmp_path / "fleet.json"

    unknown_app = run_cli(
        "admin", "create-devices", *store_flags(settings), "--app", "no-such-app",
        "--count", "5", "--out", str(fleet_path),
    )  # fmt: skip
    assert unknown_app.returncode == 1
    assert unknown_app.stderr.strip().splitlines() == [
        "fleetbatch: app 'no-such-app' does not exist"
    ]
    assert not fleet_path.exists()
    assert list(tmp_path.glob("*.tmp")) == []

    app = create_app(settings)
    zero = run_cli(
        "admin", "create-devices", *store_flags(settings), "--app", app["app_id"],
        "--count", "0", "--out", str(fleet_path),
    )  # fmt: skip
    assert zero.returncode == 2
    assert not fleet_path.exists()
    bad_url = run_cli("admin", "create-app", "--database", "mysql://x/y", "--name", "n")
    assert bad_url.returncode == 2
    assert "unsupported database" in bad_url.stderr


def test_admin_commands_work_while_the_server_runs_on_the_same_store(
    settings: Settings, tmp_path: Path
) -> None:
    with running_server(settings) as server:
        apps = [create_app(settings, f"app{n}") for n in range(2)]

        def create_devices(n: int) -> dict[str, int]:
            result: dict[str, int] = run_cli_json(
                "admin", "create-devices", *store_flags(settings), "--app", apps[n]["app_id"],
                "--count", "3000", "--out", str(tmp_path / f"fleet{n}.json"),
            )  # fmt: skip
            return result

        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(pool.map(create_devices, range(2)))
        assert [run["created"] for run in runs] == [3000, 3000]
        assert server.healthy()


async def device_count(settings: Settings, project_id: str) -> int:
    async with await Runtime.open(settings) as runtime:
        return (await runtime.registry.devices.page(project_id)).count


def test_a_killed_bulk_registration_leaves_no_device_behind(
    settings: Settings, tmp_path: Path
) -> None:
    app = create_app(settings)
    fleet_path = tmp_path / "fleet.json"
    proc = subprocess.Popen(
        [
            *FLEETBATCH, "admin", "create-devices", *store_flags(settings), "--app", app["app_id"],
            "--count", "400000", "--out", str(fleet_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # chunks reach the temporary fleet file as they are written to the open transaction
        wait_until_sync(
            lambda: any(f.stat().st_size > 100_000 for f in tmp_path.glob(".fleet.json.*.tmp")),
            timeout_s=60,
            message="create-devices never got going",
        )
    finally:
        proc.kill()
        proc.wait()

    assert proc.returncode == -signal.SIGKILL
    assert not fleet_path.exists()
    assert asyncio.run(device_count(settings, app["project_id"])) == 0
    after = run_cli_json(
        "admin", "create-devices", *store_flags(settings), "--app", app["app_id"],
        "--count", "10", "--out", str(fleet_path),
    )  # fmt: skip
    assert after["created"] == 10
