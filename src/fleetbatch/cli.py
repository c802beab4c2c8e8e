"""`fleetbatch`: the command line (typer + rich). Commands are thin: they build settings,
open the runtime, call one service, and print the result."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fleetbatch.cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    DatabaseOpt,
    DataDirOpt,
    JsonOpt,
    build_settings,
    err_console,
    exit_code_for,
    fail,
    run_with_runtime,
)
from fleetbatch.cli_tasks import TaskProgressView, parse_task_type, task_app
from fleetbatch.domain.errors import FleetbatchError, InvalidInput
from fleetbatch.domain.registry import App, AppCredentials, Device, DeviceStatus, NewDevice
from fleetbatch.domain.tasks import Task, TaskType
from fleetbatch.domain.timefmt import to_iso_ms
from fleetbatch.fleetfile import FleetFileWriter
from fleetbatch.registry.devices import new_node_ids
from fleetbatch.runtime import Runtime
from fleetbatch.store.paging import PageRequest

app = typer.Typer(
    name="fleetbatch",
    help="Batch tasks over IoT device fleets, speaking Huawei IoTDA's interfaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
admin_app = typer.Typer(help="Administration: apps, credentials, devices.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
devices_app = typer.Typer(help="Registered devices: status and last seen.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
app.add_typer(task_app, name="task")


@app.command()
def serve(
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on \\[default: 127.0.0.1].")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="Plain HTTP port \\[default: 8080].")
    ] = None,
    https_port: Annotated[int | None, typer.Option(help="HTTPS port \\[default: 8743].")] = None,
    mqtt_port: Annotated[
        int | None, typer.Option(help="Device MQTT port \\[default: 1883].")
    ] = None,
    mqtts_port: Annotated[
        int | None, typer.Option(help="Device MQTTS port \\[default: 8883].")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).")] = None,
    log_level: Annotated[
        str | None, typer.Option(help="critical, error, warning, info, debug \\[default: info].")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            help="mqtt://host:port of an external broker (EMQX, Mosquitto) that devices use "
            "instead of fleetbatch's own MQTT ports."
        ),
    ] = None,
) -> None:
    """Run everything in one process: the northbound APIs and the device side (MQTT)."""
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
        log_level=log_level,
        broker=broker,
    )
    raise typer.Exit(server.run(settings))


@admin_app.command("create-app")
def create_app(
    name: Annotated[str, typer.Option("--name", help="Name of the app (and of its project).")],
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    project_id: Annotated[
        str | None, typer.Option("--project-id", help="Add the app to this existing project.")
    ] = None,
    throttle_per_min: Annotated[
        int | None,
        typer.Option(
            "--throttle-per-min",
            min=1,
            help="Legacy API calls a minute the app may make (default: "
            "FLEETBATCH_DEFAULT_THROTTLE_PER_MIN, 100).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a project, an app in it and their credentials; print them once."""
    settings = build_settings(data_dir=data_dir, database=database)

    async def work(runtime: Runtime) -> AppCredentials:
        return await runtime.registry.apps.create(
            name, project_id=project_id, throttle_per_min=throttle_per_min
        )

    credentials = run_with_runtime(settings, work)
    result = {
        "project_id": credentials.project_id,
        "app_id": credentials.app_id,
        "secret": credentials.secret,
        "access_key": credentials.access_key,
        "secret_key": credentials.secret_key,
    }
    if json_out:
        print(json.dumps(result))
        return
    table = Table(title=f"app {name!r} created: keep these, the secrets are shown once")
    table.add_column("field")
    table.add_column("value")
    for key, value in result.items():
        table.add_row(key, value)
    Console().print(table)


@admin_app.command("create-devices")
def create_devices(
    app_id: Annotated[str, typer.Option("--app", help="The app the devices belong to.")],
    count: Annotated[int, typer.Option("--count", min=1, help="How many devices.")],
    out: Annotated[Path, typer.Option("--out", help="Fleet file to write (JSON, mode 0600).")],
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    product_id: Annotated[
        str | None,
        typer.Option(
            "--product-id", help="Product of the devices \\[default: the app's default product]."
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", help="Also put the devices into this group (created if absent)."),
    ] = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="Node id prefix \\[default: random per batch].")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Register COUNT devices in one batch and write their ids and secrets to the fleet file."""
    settings = build_settings(data_dir=data_dir, database=database)

    async def work(runtime: Runtime) -> dict[str, Any]:
        registry = runtime.registry
        app = await registry.apps.get(app_id)
        if product_id is None:
            product = await registry.products.default(app_id)
        else:
            product = await registry.products.get(app.project_id, product_id)
        group_id = None if group is None else (await registry.groups.ensure(app_id, group)).group_id
        header = {"app_id": app_id, "project_id": app.project_id, "product_id": product.product_id}
        writer = FleetFileWriter(out, header)
        started = time.perf_counter()
        try:
            created = await registry.devices.create_many_streamed(
                app_id,
                product.product_id,
                (NewDevice(node_id=node_id) for node_id in new_node_ids(count, prefix)),
                group_id=group_id,
                sink=writer.add,
            )
        except BaseException:
            writer.discard()
            raise
        writer.commit()
        seconds = time.perf_counter() - started
        return {
            "created": created,
            "fleet": str(out),
            "app_id": app_id,
            "product_id": product.product_id,
            "group_id": group_id,
            "seconds": round(seconds, 3),
            "devices_per_s": round(created / seconds) if seconds else None,
        }

    summary = run_with_runtime(settings, work)
    if json_out:
        print(json.dumps(summary))
    else:
        err_console.print(
            f"created {summary['created']:,} devices in {summary['seconds']:.2f} s "
            f"({summary['devices_per_s']:,}/s) -> {out}"
        )


@admin_app.command("grant")
def grant(
    owner: Annotated[str, typer.Option("--owner", help="The app that grants.")],
    grantee: Annotated[str, typer.Option("--grantee", help="The app that may act for it.")],
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Authorize one app to act for another (the legacy API's appId parameter)."""
    settings = build_settings(data_dir=data_dir, database=database)

    async def work(runtime: Runtime) -> None:
        await runtime.registry.apps.grant(owner, grantee)

    run_with_runtime(settings, work)
    err_console.print(f"{grantee} may now act for {owner}")


@admin_app.command("list-apps")
def list_apps(
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List every app with its project."""
    settings = build_settings(data_dir=data_dir, database=database)

    async def work(runtime: Runtime) -> list[App]:
        return await runtime.registry.apps.list_all()

    found = run_with_runtime(settings, work)
    rows: list[dict[str, Any]] = [
        {
            "app_id": a.app_id,
            "project_id": a.project_id,
            "name": a.name,
            "throttle_per_min": a.throttle_per_min,
        }
        for a in found
    ]
    if json_out:
        print(json.dumps(rows))
        return
    table = Table("app_id", "project_id", "name", "calls/min")
    for row in rows:
        table.add_row(row["app_id"], row["project_id"], row["name"], str(row["throttle_per_min"]))
    Console().print(table)


@app.command()
def sim(
    fleet: Annotated[Path, typer.Option("--fleet", help="Fleet file from `admin create-devices`.")],
    mqtt: Annotated[
        str, typer.Option("--mqtt", help="Where devices connect: mqtt://host:port or mqtts://.")
    ] = "mqtt://127.0.0.1:1883",
    processes: Annotated[int, typer.Option(help="Simulator processes sharing the fleet.")] = 1,
    behavior: Annotated[
        list[str] | None,
        typer.Option(
            "--behavior",
            help="[selector:]key=value[,key=value]; repeatable, later ones win. Keys: latency "
            "(ms: 20, uniform:5,50, normal:20,5, exp:20), fail_rate, fail_code, silent, "
            "silent_rate, flaky (mean s between drops), backoff_min, backoff_max, "
            "report_interval (s), shadow_on_connect. Selector: a device id, a glob, or N%.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed: the same seed, the same behaviour.")] = 0,
    subscribe: Annotated[
        bool, typer.Option("--subscribe", help="Subscribe to system topics (external brokers).")
    ] = False,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="CA to verify an mqtts:// server with.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after this many seconds.")
    ] = None,
    sign_type: Annotated[
        str, typer.Option(help="Password sign type: 1 (time checked) or 0.")
    ] = "1",
    qos: Annotated[int, typer.Option(help="QoS of the devices' publishes (0 or 1).")] = 1,
    connect_concurrency: Annotated[
        int, typer.Option(help="CONNECTs in flight at once, across all processes.")
    ] = 200,
    json_out: JsonOpt = False,
) -> None:
    """Simulate the fleet's devices: each connects with its own credentials and answers."""
    from fleetbatch.sim.command import run_sim

    raise typer.Exit(
        run_sim(
            fleet=fleet,
            mqtt=mqtt,
            processes=processes,
            behaviors=behavior or [],
            seed=seed,
            subscribe=subscribe,
            ca_file=ca_file,
            duration_s=duration,
            json_output=json_out,
            sign_type=sign_type,
            qos=qos,
            connect_concurrency=connect_concurrency,
        )
    )


@devices_app.command("list")
def list_devices(
    app_id: Annotated[str, typer.Option("--app", help="The app whose devices to list.")],
    status: Annotated[
        str | None,
        typer.Option(help="Only devices in this status: ONLINE, OFFLINE, INACTIVE, FROZEN, ..."),
    ] = None,
    product_id: Annotated[str | None, typer.Option("--product-id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=50, help="Devices per page.")] = 50,
    offset: Annotated[int, typer.Option(min=0, max=500, help="Skip this many.")] = 0,
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A page of an app's devices, newest first, with status and last-seen time."""
    settings = build_settings(data_dir=data_dir, database=database)
    status_value = _device_status(status)

    async def work(runtime: Runtime) -> tuple[int, list[Device]]:
        found = await runtime.registry.apps.get(app_id)
        filters: dict[str, Any] = {"app_id": app_id}
        if status_value is not None:
            filters["status"] = status_value
        if product_id is not None:
            filters["product_id"] = product_id
        page = await runtime.registry.devices.page(
            found.project_id, PageRequest(limit=limit, offset=offset), **filters
        )
        return page.count, page.items

    count, items = run_with_runtime(settings, work)
    rows = [_device_row(device) for device in items]
    if json_out:
        print(json.dumps({"count": count, "devices": rows}))
        return
    table = Table("device_id", "status", "last_seen", "active", title=f"{count:,} devices")
    for row in rows:
        table.add_row(
            row["device_id"], row["status"], row["last_seen"] or "-", row["active"] or "-"
        )
    Console().print(table)


@devices_app.command("show")
def show_device(
    device_id: Annotated[str, typer.Argument(help="The device id.")],
    data_dir: DataDirOpt = None,
    database: DatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """One device: status, last seen, first activity, versions, gateway."""
    settings = build_settings(data_dir=data_dir, database=database)

    async def work(runtime: Runtime) -> Device | None:
        return await runtime.registry.devices.find(device_id)

    device = run_with_runtime(settings, work)
    if device is None:
        raise fail(f"no device {device_id}")
    row = _device_row(device)
    if json_out:
        print(json.dumps(row))
        return
    table = Table("field", "value", title=device_id)
    for key, value in row.items():
        table.add_row(key, "-" if value is None else str(value))
    Console().print(table)


def _device_status(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return DeviceStatus(text.upper()).value
    except ValueError:
        choices = ", ".join(s.value for s in DeviceStatus)
        raise fail(f"--status must be one of {choices}, not {text!r}", 2) from None


def _device_row(device: Device) -> dict[str, Any]:
    def when(ms: int | None) -> str | None:
        return None if ms is None else to_iso_ms(ms)

    return {
        "device_id": device.device_id,
        "node_id": device.node_id,
        "product_id": device.product_id,
        "app_id": device.app_id,
        "status": device.status.value,
        "last_seen": when(device.last_seen_at_ms),
        "active": when(device.active_at_ms),
        "status_changed": when(device.status_changed_at_ms),
        "created": when(device.created_at_ms),
        "gateway_id": device.gateway_id,
        "fw_version": device.fw_version,
        "sw_version": device.sw_version,
    }


@app.command()
def demo(
    devices: Annotated[int, typer.Option("--devices", min=1, help="Fleet size.")] = 1000,
    type_text: Annotated[
        str,
        typer.Option(
            "--type",
            help="The task type to run: createCommands, createMessages, createAsyncCommands, "
            "updateDeviceShadows, freezeDevices, unfreezeDevices, deleteDevices.",
        ),
    ] = TaskType.CREATE_COMMANDS.value,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Keep the demo's data here \\[default: a temp dir]."),
    ] = None,
    sim_process: Annotated[
        bool,
        typer.Option(
            "--sim-process", hidden=True, help="Run the simulator in a child process instead."
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object only.")
    ] = False,
) -> None:
    """Run the platform on free ports, connect a simulated fleet, run one batch task on it."""
    from fleetbatch.demo import run_demo
    from fleetbatch.server import tune_gc
    from fleetbatch.sim.runner import run_on_fast_loop

    try:
        task_type = parse_task_type(type_text)
    except InvalidInput as exc:
        raise fail(exc.message, EXIT_USAGE) from None

    def on_phase(text: str) -> None:
        if not json_out:
            err_console.print(f"fleetbatch demo: {text}", highlight=False)

    with contextlib.ExitStack() as views:
        view: TaskProgressView | None = None

        def on_progress(task: Task) -> None:
            nonlocal view
            if json_out:
                return
            if view is None:
                view = views.enter_context(TaskProgressView())
            view.update(task)

        try:
            report = run_on_fast_loop(
                run_demo(
                    devices,
                    task_type,
                    data_dir,
                    on_progress=on_progress,
                    on_phase=on_phase,
                    # this process is the demo's server for its lifetime, as `serve`'s is
                    on_ready=tune_gc,
                    sim_process=sim_process,
                )
            )
        except FleetbatchError as exc:
            raise fail(exc.message, exit_code_for(exc)) from None
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
    summary = report.as_dict()
    succeeded = report.success == report.total == devices
    if json_out:
        print(json.dumps(summary))
        raise typer.Exit(0 if succeeded else EXIT_FAILED)
    table = Table("field", "value", title=f"fleetbatch demo: one {report.type} task")
    for key, value in summary.items():
        if value is None:
            continue
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        table.add_row(key, str(shown))
    Console().print(table)
    err_console.print(
        f"{report.total:,} subtasks in {report.duration_s:.2f} s "
        f"({report.subtasks_per_s:,.0f}/s), p50 {report.p50_ms} ms, p99 {report.p99_ms} ms",
        highlight=False,
    )
    if not succeeded:
        raise fail(
            f"the demo task ended {report.status}: {report.success:,} of {devices:,} succeeded"
        )


def main() -> None:
    """Entry point of the `fleetbatch` command."""
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
