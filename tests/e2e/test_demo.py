"""`fleetbatch demo`, the README's first command, as a user runs it."""

from __future__ import annotations

from pathlib import Path

from support.cli import run_cli, run_cli_json


def test_demo_json_summary_reports_the_registered_fleet_and_a_healthy_server() -> None:
    report = run_cli_json("demo", "--devices", "300")

    assert report["devices"] == 300
    assert report["health_http"] == report["health_https"] == "ok"
    assert report["http_url"].startswith("http://127.0.0.1:")
    assert report["https_url"].startswith("https://127.0.0.1:")
    assert report["devices_per_s"] > 0
    # the simulated fleet connected with its own credentials and answered a command each
    assert report["devices_online"] == 300
    assert report["commands_answered"] == 300


def test_demo_keeps_its_data_when_given_a_data_dir(tmp_path: Path) -> None:
    report = run_cli_json("demo", "--devices", "50", "--data-dir", str(tmp_path))

    assert Path(report["fleet_file"]).is_file()
    assert (tmp_path / "fleetbatch.db").is_file()
    again = run_cli("demo", "--devices", "0")
    assert again.returncode == 2
