"""`fleetbatch task ...` as users run it, on SQLite and PostgreSQL.

Most commands run in this process through typer's runner (each one opens and closes the
runtime as the real command does); the last test runs the real `fleetbatch serve`, `sim`
and `task` processes on one SQLite store.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fleetbatch.cli import app
from fleetbatch.cli_tasks import read_targets
from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.timefmt import to_compact
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from support.cli import FLEETBATCH, run_cli, run_cli_json, store_flags
from support.serve import running_server
from support.waiting import wait_until_sync

COMMAND = '{"service_id": "svc", "command_name": "reboot", "paras": {"delay": 1}}'
STATE_KEYS = {status.value for status in SubtaskStatus} | {"total"}

runner = CliRunner()


def cli(*args: str) -> Result:
    """`fleetbatch ARGS...` in this process."""
    return runner.invoke(app, list(args))


def cli_json(*args: str) -> Any:
    """A `--json` command that must succeed, parsed."""
    done = cli(*args, "--json")
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def error_line(done: Result) -> str:
    """The one line a failed command printed."""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("fleetbatch: ")
    assert done.stdout == ""
    return line


def make_fleet(
    settings: Settings, tmp_path: Path, count: int, group: str = "floor-1", name: str = "cli"
) -> tuple[dict[str, str], Path]:
    """An app and `count` devices in `group`; the fleet file `create-devices` wrote."""
    credentials = cli_json("admin", "create-app", *store_flags(settings), "--name", name)
    fleet_path = tmp_path / f"{name}-fleet.json"
    cli_json(
        "admin", "create-devices", *store_flags(settings), "--app", credentials["app_id"],
        "--count", str(count), "--group", group, "--out", str(fleet_path),
    )  # fmt: skip
    return credentials, fleet_path


def fleet_ids(fleet_path: Path) -> list[str]:
    return [entry["device_id"] for entry in json.loads(fleet_path.read_text())["devices"]]


def create(settings: Settings, app_id: str, *targets: str, **options: str) -> dict[str, Any]:
    flags = [f"--{key.replace('_', '-')}" for key in options]
    extra = [part for pair in zip(flags, options.values(), strict=True) for part in pair]
    result: dict[str, Any] = cli_json(
        "task", "create", *store_flags(settings), "--app", app_id,
        "--type", "createCommands", "--document", COMMAND, *targets, *extra,
    )  # fmt: skip
    return result


def show(settings: Settings, task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = cli_json("task", "show", task_id, *store_flags(settings))
    return result


# --- creating ---------------------------------------------------------------------------------


def test_create_with_each_target_option(settings: Settings, tmp_path: Path) -> None:
    app_ids, fleet_path = make_fleet(settings, tmp_path, 30)
    app_id = app_ids["app_id"]
    ids = fleet_ids(fleet_path)
    id_list = tmp_path / "ids.txt"
    id_list.write_text(f"# three of them\n{ids[0]}\n\n  {ids[1]}  \n{ids[2]}\n")

    listed = create(settings, app_id, "--device", ids[0], "--device", ids[1])
    from_fleet = create(settings, app_id, "--targets-file", str(fleet_path))
    from_list = create(settings, app_id, "--targets-file", str(id_list))
    by_group = create(settings, app_id, "--group", "floor-1")
    everyone = create(settings, app_id, "--all")

    assert (listed["total"], from_fleet["total"], from_list["total"]) == (2, 30, 3)
    assert listed["status"] == from_fleet["status"] == "processing"
    # a selector is expanded by the engine, after creation
    assert by_group["status"] == everyone["status"] == "initializing"
    assert show(settings, by_group["task_id"])["selector"]["group_names"] == ["floor-1"]
    assert show(settings, everyone["task_id"])["selector"] == {"kind": "all"}
    details = cli_json("task", "details", from_list["task_id"], *store_flags(settings))
    assert sorted(s["target"] for s in details["subtasks"]) == sorted(ids[:3])
    names = {show(settings, t["task_id"])["name"] for t in (listed, from_fleet, from_list)}
    assert len(names) == 3
    assert all(name.startswith("cli-") for name in names)


def test_create_prints_the_task_id_alone_on_stdout(settings: Settings, tmp_path: Path) -> None:
    app_ids, fleet_path = make_fleet(settings, tmp_path, 2)

    done = cli(
        "task", "create", *store_flags(settings), "--app", app_ids["app_id"],
        "--type", "createmessages", "--document", '{"message": "hi"}',
        "--targets-file", str(fleet_path), "--name", "greeting",
    )  # fmt: skip

    assert done.exit_code == 0, done.stderr
    task_id = done.stdout.strip()
    task = show(settings, task_id)
    assert (task["name"], task["type"], task["document"]["message"]) == (
        "greeting", "createMessages", "hi",
    )  # fmt: skip
    assert "task watch" in done.stderr


def test_policy_takes_its_field_names_and_the_v5_spellings(
    settings: Settings, tmp_path: Path
) -> None:
    app_ids, fleet_path = make_fleet(settings, tmp_path, 2)
    later = to_compact(int((asyncio.run(_now_ms(settings)) + 3_600_000) // 1000 * 1000))
    policy = json.dumps(
        {"retry_count": 2, "retry_interval": 5, "schedule_time": later, "max_concurrency": 10}
    )

    created = create(settings, app_ids["app_id"], "--targets-file", str(fleet_path), policy=policy)

    task = show(settings, created["task_id"])
    assert task["status"] == "waiting"  # scheduled for later
    assert task["policy"]["retry_interval_s"] == 300
    assert task["policy"]["retry_count"] == 2
    assert task["policy"]["max_concurrency"] == 10
    assert to_compact(task["policy"]["schedule_at_ms"]) == later


async def _now_ms(settings: Settings) -> int:
    async with await Runtime.open(settings) as runtime:
        return runtime.clock.now_ms()


# --- reading ----------------------------------------------------------------------------------


def test_show_details_and_list(settings: Settings, tmp_path: Path) -> None:
    first, fleet_path = make_fleet(settings, tmp_path, 5, name="first")
    second, _ = make_fleet(settings, tmp_path, 1, name="second")
    ids = fleet_ids(fleet_path)
    task_id = create(settings, first["app_id"], "--targets-file", str(fleet_path))["task_id"]
    other = create(settings, second["app_id"], "--all")["task_id"]

    task = show(settings, task_id)
    assert task["task_id"] == task_id
    assert task["status"] == "processing"
    assert set(task["progress"]) >= STATE_KEYS
    assert task["progress"]["total"] == task["progress"]["waiting"] == 5
    human = cli("task", "show", task_id, *store_flags(settings))
    assert human.exit_code == 0
    assert "waiting" in human.stdout

    flags = ["task", "details", task_id, *store_flags(settings)]
    page1 = cli_json(*flags, "--limit", "2")
    page2 = cli_json(*flags, "--limit", "2", "--marker", page1["marker"])
    skipped = cli_json(*flags, "--limit", "2", "--offset", "1")
    assert page1["count"] == 5
    newest_first = [s["target"] for s in page1["subtasks"] + page2["subtasks"]]
    assert newest_first == ids[::-1][:4]
    assert [s["target"] for s in skipped["subtasks"]] == ids[::-1][1:3]
    numbered = cli_json(*flags, "--page-no", "1", "--page-size", "2")
    assert [s["target"] for s in numbered["subtasks"]] == ids[2:4]
    one = cli_json(*flags, "--device", ids[3])
    assert [(s["target"], s["status"]) for s in one["subtasks"]] == [(ids[3], "waiting")]
    assert cli_json(*flags, "--status", "success")["count"] == 0
    assert cli("task", "details", task_id, *store_flags(settings)).exit_code == 0

    everything = cli_json("task", "list", *store_flags(settings))
    assert everything["count"] == 2
    assert [t["task_id"] for t in everything["tasks"]] == [other, task_id]  # newest first
    mine = cli_json("task", "list", *store_flags(settings), "--app", first["app_id"])
    assert [t["task_id"] for t in mine["tasks"]] == [task_id]
    newest = cli_json("task", "list", *store_flags(settings), "--limit", "1")
    older = cli_json(
        "task", "list", *store_flags(settings), "--limit", "1", "--marker", newest["marker"]
    )
    assert [t["task_id"] for t in newest["tasks"] + older["tasks"]] == [other, task_id]
    by_status = cli_json("task", "list", *store_flags(settings), "--status", "initializing")
    assert [t["task_id"] for t in by_status["tasks"]] == [other]
    by_type = cli_json("task", "list", *store_flags(settings), "--type", "createMessages")
    assert by_type["tasks"] == []
    assert cli("task", "list", *store_flags(settings)).exit_code == 0


# --- changing ---------------------------------------------------------------------------------


def test_stop_retry_and_delete(settings: Settings, tmp_path: Path) -> None:
    app_ids, fleet_path = make_fleet(settings, tmp_path, 3)
    ids = fleet_ids(fleet_path)
    task_id = create(settings, app_ids["app_id"], "--targets-file", str(fleet_path))["task_id"]
    store = store_flags(settings)

    stopped_one = cli_json("task", "stop", task_id, *store, "--device", ids[0])
    assert stopped_one["results"] == [
        {"target": ids[0], "ok": True, "error_code": None, "error_msg": None}
    ]
    assert show(settings, task_id)["progress"]["stopped"] == 1
    not_a_target = cli("task", "stop", task_id, *store, "--device", "nobody", "--json")
    assert not_a_target.exit_code == 1
    assert json.loads(not_a_target.stdout)["results"][0]["ok"] is False
    assert "1 of 1 devices not stopped: nobody" in not_a_target.stderr

    running = cli("task", "delete", task_id, *store)
    assert running.exit_code == 1
    assert "has not finished" in error_line(running)

    assert cli_json("task", "stop", task_id, *store)["status"] == "stopped"
    again = cli("task", "stop", task_id, *store)
    assert again.exit_code == 1
    assert "has finished" in error_line(again)

    retried = cli_json("task", "retry", task_id, *store)
    assert (retried["status"], retried["waiting"]) == ("processing", 3)
    assert show(settings, task_id)["progress"]["stopped"] == 0

    cli_json("task", "stop", task_id, *store)
    assert cli_json("task", "delete", task_id, *store) == {"task_id": task_id, "deleted": True}
    gone = cli("task", "show", task_id, *store)
    assert gone.exit_code == 1
    assert error_line(gone) == f"fleetbatch: task {task_id!r} does not exist"


def test_watch_returns_once_the_task_finished(settings: Settings, tmp_path: Path) -> None:
    app_ids, fleet_path = make_fleet(settings, tmp_path, 2)
    task_id = create(settings, app_ids["app_id"], "--targets-file", str(fleet_path))["task_id"]
    cli_json("task", "stop", task_id, *store_flags(settings))

    watched = cli_json("task", "watch", task_id, *store_flags(settings))
    human = cli("task", "watch", task_id, *store_flags(settings))

    assert watched["status"] == "stopped"
    assert watched["progress"]["stopped"] == 2
    assert human.exit_code == 0
    assert f"task {task_id} stopped" in human.stderr


def test_watch_gives_up_after_its_timeout(settings: Settings, tmp_path: Path) -> None:
    app_ids, fleet_path = make_fleet(settings, tmp_path, 1)
    task_id = create(settings, app_ids["app_id"], "--targets-file", str(fleet_path))["task_id"]

    done = cli("task", "watch", task_id, *store_flags(settings), "--timeout", "0", "--json")

    assert done.exit_code == 1
    assert "still processing after 0 s" in error_line(done)


# --- bad input --------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_creates_nothing(settings: Settings, tmp_path: Path) -> None:
    app_ids, _ = make_fleet(settings, tmp_path, 2)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n\n")

    def refused(*flags: str, kind: str = "createCommands", document: str = COMMAND) -> Result:
        return cli(
            "task", "create", *store_flags(settings), "--app", app_ids["app_id"],
            "--type", kind, "--document", document, *flags,
        )  # fmt: skip

    cases: list[tuple[Result, int, str]] = [
        (refused("--all", document="{oops"), 2, "--document: is not valid JSON"),
        (refused("--all", kind="rebootAll"), 2, "'rebootAll' is not a task type"),
        (refused(), 2, "give exactly one of --device, --targets-file, --group, --all"),
        (refused("--all", "--group", "g"), 2, "(got --group and --all)"),
        (refused("--group", "nowhere"), 1, "group 'nowhere' does not exist"),
        (refused("--all", document="[1]"), 2, "--document: must be a JSON object"),
        (refused("--all", document='{"paras": 1}'), 2, "document.paras"),
        (refused("--all", "--policy", '{"speed": 1}'), 2, "unknown keys: speed"),
        (refused("--all", "--policy", '{"retry_count": 9}'), 2, "retry_count"),
        (refused("--all", "--policy", '{"schedule_time": "soon"}'), 2, "schedule_time"),
        (refused("--targets-file", str(empty)), 2, "--targets-file: names no device"),
        (refused("--targets-file", str(tmp_path / "none")), 2, "cannot read"),
        (refused("--all", kind="freezeDevices"), 2, "takes no document"),
    ]
    for done, code, text in cases:
        assert done.exit_code == code, (text, done.stderr)
        assert text in error_line(done)

    unknown_app = cli(
        "task", "create", *store_flags(settings), "--app", "nope", "--type", "freezeDevices",
        "--all",
    )  # fmt: skip
    assert unknown_app.exit_code == 1
    assert error_line(unknown_app) == "fleetbatch: app 'nope' does not exist"
    assert cli_json("task", "list", *store_flags(settings))["count"] == 0
    bad_status = cli("task", "details", "0" * 24, *store_flags(settings), "--status", "done")
    assert bad_status.exit_code == 2
    assert "--status must be one of" in error_line(bad_status)
    both = cli(
        "task", "details", "0" * 24, *store_flags(settings), "--limit", "2", "--page-no", "1"
    )
    assert both.exit_code == 2
    bad_marker = cli("task", "list", *store_flags(settings), "--marker", "xyz")
    assert bad_marker.exit_code == 2
    assert "marker" in error_line(bad_marker)


@pytest.mark.parametrize("database_kind", ["sqlite"], indirect=True)
def test_targets_files_are_read_line_by_line(settings: Settings, tmp_path: Path) -> None:
    _, fleet_path = make_fleet(settings, tmp_path, 3)
    ids = fleet_ids(fleet_path)
    one_line = tmp_path / "compact.json"
    one_line.write_text(json.dumps({"devices": [{"device_id": d} for d in ids]}))
    broken = tmp_path / "broken.json"
    broken.write_text(fleet_path.read_text().replace('"device_id"', '"id"', 1))

    assert list(read_targets(fleet_path)) == ids
    assert list(read_targets(one_line)) == ids
    with pytest.raises(InvalidInput, match="has no device_id"):
        list(read_targets(broken))


# --- with the server --------------------------------------------------------------------------


def test_a_task_created_by_the_cli_is_run_by_the_running_server(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    count = 200
    with running_server(settings) as server:
        credentials = run_cli_json(
            "admin", "create-app", *store_flags(settings), "--name", "served"
        )
        app_id = credentials["app_id"]
        fleet_path = tmp_path / "fleet.json"
        run_cli_json(
            "admin", "create-devices", *store_flags(settings), "--app", app_id,
            "--count", str(count), "--group", "floor-1", "--out", str(fleet_path),
        )  # fmt: skip
        sim = subprocess.Popen(
            [*FLEETBATCH, "sim", "--fleet", str(fleet_path),
             "--mqtt", f"mqtt://127.0.0.1:{server.mqtt_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until_sync(
                lambda: run_cli_json(
                    "devices", "list", *store_flags(settings), "--app", app_id,
                    "--status", "ONLINE", "--limit", "1",
                )["count"] == count,
                timeout_s=60,
                interval_s=0.2,
                message="the simulated fleet never came online",
            )  # fmt: skip
            created = run_cli_json(
                "task", "create", *store_flags(settings), "--app", app_id,
                "--type", "createCommands", "--document", COMMAND, "--group", "floor-1",
            )  # fmt: skip

            def finished() -> dict[str, Any] | None:
                task: dict[str, Any] = run_cli_json(
                    "task", "show", created["task_id"], *store_flags(settings)
                )
                return task if task["status"] not in ("initializing", "processing") else None

            task = wait_until_sync(
                finished, timeout_s=60, interval_s=0.2, message="the server never ran the task"
            )
        finally:
            sim.send_signal(signal.SIGINT)
            sim.wait(timeout=30)
        assert task["status"] == "success"
        assert task["progress"]["success"] == task["progress"]["total"] == count
        successes = run_cli_json(
            "task", "details", created["task_id"], *store_flags(settings),
            "--status", "success", "--limit", "3",
        )  # fmt: skip
        assert successes["count"] == count
        assert all('"result_code":0' in s["output"] for s in successes["subtasks"])
        watched = run_cli("task", "watch", created["task_id"], *store_flags(settings))
        assert watched.returncode == 0, watched.stderr
        assert server.healthy()
