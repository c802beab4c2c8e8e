"""`fleetbatch demo`, the README's first command, as a user runs it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fleetbatch.demo import require_executor
from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.tasks import TaskType
from support.cli import run_cli, run_cli_json

SUMMARY_KEYS = {"total", "success", "fail", "duration_s", "subtasks_per_s", "p50_ms", "p99_ms"}


def test_demo_runs_one_batch_task_over_the_whole_simulated_fleet() -> None:
    report = run_cli_json("demo", "--devices", "500")

    assert set(report) >= SUMMARY_KEYS
    assert report["type"] == "createCommands"
    assert report["status"] == "success"
    assert report["success"] == report["total"] == report["devices"] == 500
    assert report["fail"] == report["timeout"] == 0
    assert report["subtasks_per_s"] > 0
    assert 0 <= report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert report["health_http"] == report["health_https"] == "ok"
    assert report["http_url"].startswith("http://127.0.0.1:")
    assert report["rss_mb"] > 0


def test_demo_prints_a_progress_bar_and_a_summary_without_json() -> None:
    done = run_cli("demo", "--devices", "50", "--type", "createMessages")

    assert done.returncode == 0, done.stderr
    assert "running one createMessages task" in done.stderr
    assert "success 50" in done.stderr  # the per-state counts under the bar
    assert "50 subtasks in" in done.stderr
    assert "subtasks_per_s" in done.stdout


def test_demo_keeps_its_data_when_given_a_data_dir(tmp_path: Path) -> None:
    report = run_cli_json(
        "demo", "--devices", "50", "--type", "updateDeviceShadows", "--data-dir", str(tmp_path)
    )

    assert report["success"] == report["total"] == 50
    assert Path(report["fleet_file"]).is_file()
    with sqlite3.connect(tmp_path / "fleetbatch.db") as db:
        [(task_type, status, success)] = db.execute(
            "SELECT task_type, status, n_success FROM tasks"
        ).fetchall()
    assert (task_type, status, success) == ("updateDeviceShadows", "success", 50)


def test_demo_refuses_bad_flags_with_exit_code_2() -> None:
    no_devices = run_cli("demo", "--devices", "0")
    unknown_type = run_cli("demo", "--type", "rebootEverything", "--json")

    assert no_devices.returncode == 2
    assert unknown_type.returncode == 2
    assert unknown_type.stdout == ""
    [line] = unknown_type.stderr.strip().splitlines()
    assert line.startswith("fleetbatch: type: 'rebootEverything' is not a task type")


def test_a_task_type_without_an_executor_is_refused_by_name() -> None:
    require_executor({TaskType.CREATE_COMMANDS: object()}, TaskType.CREATE_COMMANDS)
    with pytest.raises(InvalidInput, match="deleteDevices has no executor") as refused:
        require_executor({TaskType.CREATE_COMMANDS: object()}, TaskType.DELETE_DEVICES)
    assert "supported: createCommands" in refused.value.message
