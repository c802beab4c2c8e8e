"""`fleetbatch task ...`: batch tasks from the command line, over the task service.

Every command opens the store the way the admin commands do (`--data-dir`, `--database`) and
works while `fleetbatch serve` runs on it: a task created here is stored, and the server's
engine picks it up on its next sweep (`engine_sweep_s`). The CLI has the rights of an
administrator: it sees the tasks of every project.

With `--endpoint --ak --sk --project-id` (or `--profile FILE`) a command works against a
running server through its IoTDA v5 API instead, signed as the SDK signs, with the rights of
that key: one project's tasks (`cli_remote`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from fleetbatch.cli_common import (
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
from fleetbatch.domain.errors import FleetbatchError, InvalidInput
from fleetbatch.domain.ids import MAX_MARKER, format_record_id
from fleetbatch.domain.registry import Page
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import (
    NewTask,
    Selector,
    SelectorKind,
    Subtask,
    Task,
    TaskPolicy,
    TaskType,
)
from fleetbatch.domain.tasks import Progress as TaskCounts
from fleetbatch.domain.timefmt import from_compact, to_compact, to_iso_ms
from fleetbatch.engine.service import TargetResult
from fleetbatch.runtime import Runtime
from fleetbatch.store.paging import MAX_LIMIT, PageRequest
from fleetbatch.v5_client import V5Client, V5Profile, load_profile

if TYPE_CHECKING:
    # imported when a command goes through a server: it brings the v5 wire models (FastAPI)
    from fleetbatch.cli_remote import RemoteTasks

task_app = typer.Typer(
    help="Batch tasks: create, show, list, page subtasks, watch, stop, retry, delete.",
    no_args_is_help=True,
)

WATCH_POLL_S = 0.5
# device ids read from a targets file per list handed to the service
TARGETS_CHUNK = 5000

T = TypeVar("T")
TaskIdArg = Annotated[str, typer.Argument(help="The task id (24 hex).")]
ProfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--profile",
        help="JSON file with endpoint, ak, sk, project_id (and region for derived signing); "
        "the flags below override it.",
        rich_help_panel="Through a server's v5 API",
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help="Work against this server (http://host:port) through its IoTDA v5 API.",
        rich_help_panel="Through a server's v5 API",
    ),
]
AkOpt = Annotated[
    str | None,
    typer.Option("--ak", help="Access key.", rich_help_panel="Through a server's v5 API"),
]
SkOpt = Annotated[
    str | None,
    typer.Option(
        "--sk",
        help="Secret key (or FLEETBATCH_V5_SK).",
        envvar="FLEETBATCH_V5_SK",
        rich_help_panel="Through a server's v5 API",
    ),
]
ProjectOpt = Annotated[
    str | None,
    typer.Option("--project-id", help="Project id.", rich_help_panel="Through a server's v5 API"),
]
RegionOpt = Annotated[
    str | None,
    typer.Option(
        "--region",
        help="Sign with the derived V11-HMAC-SHA256 for this region id (e.g. cn-north-4).",
        rich_help_panel="Through a server's v5 API",
    ),
]
DevicesOpt = Annotated[
    list[str] | None,
    typer.Option("--device", help="Only this device's subtask; repeatable."),
]

# the progress colours of each subtask state
STATE_STYLES: Mapping[str, str] = {
    "waiting": "white",
    "processing": "cyan",
    "success": "green",
    "fail": "red",
    "fail_wait_retry": "yellow",
    "timeout": "magenta",
    "stopped": "bright_black",
    "removed": "bright_black",
}
# shown even at 0; the others only once something is in them
ALWAYS_SHOWN = ("waiting", "processing", "success", "fail")


class TaskCalls(Protocol):
    """What the commands call: `TaskService` locally, `RemoteTasks` through a server."""

    async def create(self, new: NewTask, device_ids: Iterable[str] | None = None) -> Task: ...

    async def get(self, task_id: str) -> Task: ...

    async def subtasks(
        self,
        task_id: str,
        *,
        page: PageRequest,
        status: SubtaskStatus | None,
        target: str | None,
    ) -> tuple[Task, Page[Subtask]]: ...

    async def stop(self, task_id: str, *, targets: Sequence[str] | None) -> list[TargetResult]: ...

    async def retry(self, task_id: str, *, targets: Sequence[str] | None) -> list[TargetResult]: ...

    async def delete(self, task_id: str) -> None: ...


def remote_profile(
    profile: Path | None,
    endpoint: str | None,
    ak: str | None,
    sk: str | None,
    project_id: str | None,
    region: str | None,
) -> V5Profile | None:
    """The server to work against, or None to open the store; usage errors end the command."""
    try:
        return load_profile(
            profile, endpoint=endpoint, ak=ak, sk=sk, project_id=project_id, region=region
        )
    except InvalidInput as exc:
        raise _usage(exc) from None


def run_remote(remote: V5Profile, work: Callable[[RemoteTasks], Awaitable[T]]) -> T:
    """Run `work` against the server; fleetbatch errors become one-line messages."""

    from fleetbatch.cli_remote import RemoteTasks

    async def _main() -> T:
        async with V5Client(remote) as client:
            return await work(RemoteTasks(client))

    try:
        return asyncio.run(_main())
    except FleetbatchError as exc:
        raise fail(exc.message, exit_code_for(exc)) from None


@dataclass(frozen=True)
class TaskTarget:
    """Where a `task` command works: the store, or a server's v5 API when `remote` is set."""

    remote: V5Profile | None
    data_dir: Path | None
    database: str | None

    def run(self, work: Callable[[TaskCalls], Awaitable[T]]) -> T:
        """Run `work` over the store's task service, or over the server's v5 API."""
        return self.run_split(lambda runtime: work(runtime.tasks), work)

    def run_split(
        self,
        local: Callable[[Runtime], Awaitable[T]],
        remote: Callable[[RemoteTasks], Awaitable[T]],
    ) -> T:
        """Run `local` over the store's runtime, or `remote` through the server."""
        if self.remote is not None:
            return run_remote(self.remote, remote)
        settings = build_settings(data_dir=self.data_dir, database=self.database)
        return run_with_runtime(settings, local)


# the options every `task` command ends with, in this order: the store, --json, a server
SHARED_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("data_dir", DataDirOpt, None),
    ("database", DatabaseOpt, None),
    ("json_out", JsonOpt, False),
    ("profile", ProfileOpt, None),
    ("endpoint", EndpointOpt, None),
    ("ak", AkOpt, None),
    ("sk", SkOpt, None),
    ("project_id", ProjectOpt, None),
    ("region", RegionOpt, None),
)
REMOTE_OPTIONS = ("profile", "endpoint", "ak", "sk", "project_id", "region")


def task_command(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a `task` command that ends with the shared options (`SHARED_OPTIONS`).

    The function takes `where: TaskTarget` and `json_out: bool` keyword arguments instead of
    the nine options: typer sees them appended to the function's own parameters, and the
    server flags are resolved (usage errors end the command) before the function runs.
    """

    def register(command: Callable[..., None]) -> Callable[..., None]:
        own = [
            param
            for param in inspect.signature(command, eval_str=True).parameters.values()
            if param.name not in ("where", "json_out")
        ]
        shared = [
            inspect.Parameter(
                option, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint
            )
            for option, hint, default in SHARED_OPTIONS
        ]

        @functools.wraps(command)
        def with_shared_options(**options: Any) -> None:
            remote = remote_profile(*(options.pop(option) for option in REMOTE_OPTIONS))
            where = TaskTarget(remote, options.pop("data_dir"), options.pop("database"))
            command(**options, where=where)

        signature = inspect.Signature([*own, *shared], return_annotation=None)
        with_shared_options.__signature__ = signature  # type: ignore[attr-defined]
        with_shared_options.__annotations__ = {
            p.name: p.annotation for p in signature.parameters.values()
        }
        task_app.command(name)(with_shared_options)
        return command

    return register


# --- parsing what the user typed ------------------------------------------------------------


def parse_task_type(text: str) -> TaskType:
    """A task type from its v5 word, any case; InvalidInput lists the words."""
    for task_type in TaskType:
        if task_type.value.lower() == text.lower():
            return task_type
    words = ", ".join(t.value for t in TaskType)
    raise InvalidInput("type", f"{text!r} is not a task type; one of {words}")


def parse_json_text(option: str, text: str) -> Any:
    """The JSON of an option's value, or of the file `@path` names."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(option, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(option, f"is not valid JSON: {exc}") from None


def policy_from_json(data: Any) -> TaskPolicy:
    """TaskPolicy fields by name, plus v5's `retry_interval` (minutes) and `schedule_time`."""
    if not isinstance(data, Mapping):
        raise InvalidInput("--policy", "must be a JSON object")
    fields = dict(data)
    if "retry_interval" in fields:
        if "retry_interval_s" in fields:
            raise InvalidInput("--policy", "give retry_interval or retry_interval_s, not both")
        minutes = fields.pop("retry_interval")
        if not isinstance(minutes, int) or isinstance(minutes, bool):
            raise InvalidInput("retry_interval", "must be a whole number of minutes")
        fields["retry_interval_s"] = minutes * 60
    if "schedule_time" in fields:
        if "schedule_at_ms" in fields:
            raise InvalidInput("--policy", "give schedule_time or schedule_at_ms, not both")
        moment = fields.pop("schedule_time")
        try:
            fields["schedule_at_ms"] = from_compact(moment) if isinstance(moment, str) else None
        except ValueError as exc:
            raise InvalidInput("schedule_time", str(exc)) from None
        if fields["schedule_at_ms"] is None:
            raise InvalidInput("schedule_time", "must look like 20151212T121212Z")
    return TaskPolicy.from_json(fields)


def read_targets(path: Path) -> Iterator[str]:
    """Device ids from a fleet file (`admin create-devices --out`) or one id per line.

    Streamed: a fleet file as `FleetFileWriter` writes it (one device per line) and a plain
    list are read line by line, never whole; blank lines and `#` comments are skipped. A
    fleet file in any other layout is parsed whole. Secrets in a fleet file are not kept.
    """
    try:
        file = path.open(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput("--targets-file", f"cannot read {path}: {exc.strerror or exc}") from None
    with file:
        first = file.readline()
        if first.lstrip().startswith("{"):
            if first.rstrip().endswith('"devices": ['):
                yield from _fleet_lines(file, path)
            else:
                file.seek(0)
                yield from _fleet_document(file.read(), path)
            return
        for line in itertools.chain([first], file):
            device_id = line.strip()
            if device_id and not device_id.startswith("#"):
                yield device_id


def _fleet_lines(lines: Iterable[str], path: Path) -> Iterator[str]:
    for number, line in enumerate(lines, start=2):
        text = line.strip().removesuffix(",")
        if not text or text in ("]}", "]", "}"):
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            raise InvalidInput("--targets-file", f"{path}:{number} is not a fleet entry") from None
        yield _fleet_device_id(entry, f"{path}:{number}")


def _fleet_document(text: str, path: Path) -> Iterator[str]:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidInput("--targets-file", f"{path} is not valid JSON: {exc}") from None
    entries = document.get("devices") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise InvalidInput("--targets-file", f"{path} has no devices list")
    for position, entry in enumerate(entries):
        yield _fleet_device_id(entry, f"{path}: devices[{position}]")


def _fleet_device_id(entry: Any, where: str) -> str:
    device_id = entry.get("device_id") if isinstance(entry, dict) else None
    if not isinstance(device_id, str) or not device_id:
        raise InvalidInput("--targets-file", f"{where} has no device_id")
    return device_id


def non_empty(device_ids: Iterator[str], option: str) -> Iterator[str]:
    """The same ids; InvalidInput now (not half way through a write) if there are none."""
    first = next(device_ids, None)
    if first is None:
        raise InvalidInput(option, "names no device")
    return itertools.chain([first], device_ids)


def _subtask_status(text: str | None) -> SubtaskStatus | None:
    if text is None:
        return None
    try:
        return SubtaskStatus(text.lower())
    except ValueError:
        choices = ", ".join(s.value for s in SubtaskStatus)
        raise fail(f"--status must be one of {choices}, not {text!r}", EXIT_USAGE) from None


def _task_status(text: str | None) -> TaskStatus | None:
    if text is None:
        return None
    try:
        return TaskStatus(text.lower())
    except ValueError:
        choices = ", ".join(s.value for s in TaskStatus)
        raise fail(f"--status must be one of {choices}, not {text!r}", EXIT_USAGE) from None


def _usage(error: InvalidInput) -> typer.Exit:
    return fail(error.message, EXIT_USAGE)


# --- what is printed ---------------------------------------------------------------------------


def _when(ms: int | None) -> str | None:
    return None if ms is None else to_iso_ms(ms)


def task_json(task: Task) -> dict[str, Any]:
    """A task as `task show --json` prints it."""
    return {
        "task_id": task.task_id,
        "name": task.name,
        "type": task.task_type.value,
        "status": task.status.value,
        "status_desc": task.status_desc,
        "app_id": task.app_id,
        "project_id": task.project_id,
        "progress": task.progress.to_json(),
        "document": dict(task.document),
        "selector": task.selector.to_json() if task.selector is not None else None,
        "policy": task.policy.to_json(),
        "tags": dict(task.tags),
        "source": task.source,
        "created": _when(task.created_at),
        "scheduled": _when(task.scheduled_at),
        "started": _when(task.started_at),
        "finished": _when(task.finished_at),
        "deadline": _when(task.deadline_at),
    }


def subtask_json(subtask: Subtask) -> dict[str, Any]:
    """One subtask as `task details --json` prints it."""
    return {
        "id": format_record_id(subtask.id),
        "target": subtask.target,
        "status": subtask.status.value,
        "attempt": subtask.attempt,
        "failures": subtask.failures,
        "phase": subtask.phase,
        "error_code": subtask.error_code,
        "error_msg": subtask.error_msg,
        "output": subtask.output,
        "created": _when(subtask.created_at),
        "started": _when(subtask.started_at),
        "finished": _when(subtask.finished_at),
    }


def counts_markup(progress: TaskCounts) -> str:
    """`waiting 0  processing 12  success 488  fail 0` in colour; rare states once non-zero."""
    parts = []
    for name, count in progress.to_json().items():
        if name == "total" or (name not in ALWAYS_SHOWN and not count):
            continue
        style = STATE_STYLES.get(name, "white")
        parts.append(f"[{style}]{name} {count:,}[/]")
    return "  ".join(parts)


class _CountedProgress(Progress):
    """rich's progress bar with a second line under it: the per-state counts."""

    counts = ""

    def get_renderables(self) -> Iterator[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.counts:
            yield Text.from_markup(f"  {self.counts}")


class TaskProgressView:
    """A live progress bar of one task with its per-state counts under it (stderr)."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = _CountedProgress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or err_console,
        )
        self._bar: TaskID | None = None

    def __enter__(self) -> TaskProgressView:
        self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._progress.stop()

    def update(self, task: Task) -> None:
        """Show `task`'s latest counts."""
        progress = task.progress
        done = progress.total - progress.unfinished
        description = f"{task.task_type.value} {task.status.value}"
        # no total while a selector is still being expanded: the bar pulses
        total = progress.total if progress.total or task.finished else None
        self._progress.counts = counts_markup(progress)
        if self._bar is None:
            self._bar = self._progress.add_task(description, total=total, completed=done)
        else:
            self._progress.update(self._bar, description=description, total=total, completed=done)
        self._progress.refresh()


def _print_task(task: Task) -> None:
    table = Table("field", "value", title=f"task {task.task_id}")
    row = task_json(task)
    for key in ("name", "type", "status", "status_desc", "app_id", "source"):
        table.add_row(key, "-" if row[key] is None else str(row[key]))
    for key in ("created", "scheduled", "started", "finished", "deadline"):
        if row[key] is not None:
            table.add_row(key, row[key])
    for key in ("document", "selector", "policy", "tags"):
        if row[key]:
            table.add_row(key, json.dumps(row[key]))
    Console().print(table)
    counts = Table("state", "subtasks", title="progress")
    for name, count in task.progress.to_json().items():
        style = STATE_STYLES.get(name, "bold")
        counts.add_row(f"[{style}]{name}[/]", f"{count:,}")
    Console().print(counts)


def _print_results(task_id: str, action: str, results: list[TargetResult], json_out: bool) -> None:
    if json_out:
        rows = [
            {"target": r.target, "ok": r.ok, "error_code": r.error_code, "error_msg": r.error_msg}
            for r in results
        ]
        print(json.dumps({"task_id": task_id, "results": rows}))
    else:
        table = Table("device", "ok", "error", title=f"{action} {task_id}")
        for r in results:
            table.add_row(r.target, "yes" if r.ok else "no", r.error_msg or "")
        Console().print(table)
    refused = [r for r in results if not r.ok]
    if refused:
        first = refused[0]
        raise fail(
            f"{len(refused)} of {len(results)} devices not {action}: "
            f"{first.target}: {first.error_msg or first.error_code}"
        )


# --- commands ---------------------------------------------------------------------------------


@task_command("create")
def create(
    type_text: Annotated[
        str,
        typer.Option(
            "--type",
            help="createCommands, createAsyncCommands, createMessages, updateDeviceShadows, "
            "freezeDevices, unfreezeDevices, deleteDevices.",
        ),
    ],
    document_text: Annotated[
        str,
        typer.Option(
            "--document",
            help='The operation as JSON (or @file), e.g. createCommands: {"service_id": '
            '"svc", "command_name": "reboot", "paras": {}}; createMessages: {"message": ...}; '
            'updateDeviceShadows: {"shadow": [{"service_id": ..., "desired": {...}}]}; '
            "none for the registry operations.",
        ),
    ] = "{}",
    devices: Annotated[
        list[str] | None, typer.Option("--device", help="A target device id; repeatable.")
    ] = None,
    targets_file: Annotated[
        Path | None,
        typer.Option(
            "--targets-file",
            help="The targets: a fleet file (admin create-devices --out) or one device id "
            "per line.",
        ),
    ] = None,
    groups: Annotated[
        list[str] | None,
        typer.Option("--group", help="Every device of this group, sub-groups too; repeatable."),
    ] = None,
    all_devices: Annotated[
        bool, typer.Option("--all", help="Every device of the app (broadcast).")
    ] = False,
    policy_text: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="JSON (or @file) of policy fields: retry_count, retry_interval (min) or "
            "retry_interval_s, schedule_time (20240615T031500Z) or schedule_at_ms, timeout_s, "
            "subtask_timeout_s, max_concurrency, rate_per_min, abort_min_finished + "
            "abort_fail_ratio.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Task name \\[default: cli-<time>-<random>].")
    ] = None,
    app_id: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="The app the task belongs to (required on the store; through v5 the "
            "project's default app unless given).",
        ),
    ] = None,
    *,
    where: TaskTarget,
    json_out: bool,
) -> None:
    """Create a batch task; print its id. The running server's engine carries it out."""
    if where.remote is None and app_id is None:
        raise fail("--app is required (or work through a server with --endpoint)", EXIT_USAGE)
    chosen = [
        flag
        for flag, given in (
            ("--device", bool(devices)),
            ("--targets-file", targets_file is not None),
            ("--group", bool(groups)),
            ("--all", all_devices),
        )
        if given
    ]
    if len(chosen) != 1:
        given = f" (got {' and '.join(chosen)})" if chosen else ""
        raise fail(
            f"give exactly one of --device, --targets-file, --group, --all{given}", EXIT_USAGE
        )
    try:
        task_type = parse_task_type(type_text)
        document = parse_json_text("--document", document_text)
        policy = (
            policy_from_json(parse_json_text("--policy", policy_text))
            if policy_text is not None
            else TaskPolicy()
        )
    except InvalidInput as exc:
        raise _usage(exc) from None
    if not isinstance(document, Mapping):
        raise fail("--document: must be a JSON object", EXIT_USAGE)
    selector: Selector | None = None
    if groups:
        selector = Selector(SelectorKind.GROUP_NAMES, group_names=tuple(groups))
    elif all_devices:
        selector = Selector(SelectorKind.ALL)
    new = NewTask(
        app_id=app_id or "",
        task_type=task_type,
        # v5 task names take letters, digits and `_` only
        name=name or (_default_name().replace("-", "_") if where.remote else _default_name()),
        document=document,
        selector=selector,
        policy=policy,
        source="cli",
    )

    async def work(tasks: TaskCalls) -> Task:
        device_ids: Iterable[str] | None = None
        if devices:
            device_ids = devices
        elif targets_file is not None:
            # read while the service inserts, chunk by chunk; this loop serves only this
            # command, so reading the file inline holds up nothing else
            device_ids = non_empty(read_targets(targets_file), "--targets-file")
        return await tasks.create(new, device_ids)

    task = where.run(work)
    if json_out:
        print(
            json.dumps(
                {
                    "task_id": task.task_id,
                    "name": task.name,
                    "type": task.task_type.value,
                    "status": task.status.value,
                    "total": task.progress.total,
                }
            )
        )
        return
    print(task.task_id)
    if groups:
        targets = f"group {', '.join(groups)} (sub-groups too)"
    elif all_devices:
        targets = "every device of the app"
    else:
        targets = f"{task.progress.total:,} devices"
    err_console.print(
        f"task {task.name!r} created: {task.task_type.value} on {targets}, {task.status.value}"
        f"; follow it with: fleetbatch task watch {task.task_id}",
        highlight=False,
        soft_wrap=True,
    )


def _default_name() -> str:
    return f"cli-{to_compact(int(time.time() * 1000))}-{os.urandom(2).hex()}"


@task_command("show")
def show(
    task_id: TaskIdArg,
    *,
    where: TaskTarget,
    json_out: bool,
) -> None:
    """One task: status, progress by subtask state, document, policy, times."""

    async def work(tasks: TaskCalls) -> Task:
        return await tasks.get(task_id)

    task = where.run(work)
    if json_out:
        print(json.dumps(task_json(task)))
        return
    _print_task(task)


@task_command("list")
def list_tasks(
    app_id: Annotated[
        str | None, typer.Option("--app", help="Only this app's tasks \\[default: every app].")
    ] = None,
    type_text: Annotated[str | None, typer.Option("--type", help="Only this task type.")] = None,
    status: Annotated[
        str | None,
        typer.Option(help="Only tasks in this status: processing, success, fail, ..."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="Tasks per page.")] = 10,
    marker: Annotated[
        str | None, typer.Option(help="Continue below this marker (from the last page).")
    ] = None,
    *,
    where: TaskTarget,
    json_out: bool,
) -> None:
    """A page of tasks, newest first; `--marker` continues where the last page ended."""
    status_value = _task_status(status)
    try:
        task_type = parse_task_type(type_text).value if type_text is not None else None
        page = PageRequest(limit=limit, marker=marker or MAX_MARKER)
    except InvalidInput as exc:
        raise _usage(exc) from None

    async def through_v5(tasks: RemoteTasks) -> Page[Task]:
        return await tasks.list_tasks(page, app_id=app_id, task_type=task_type, status=status_value)

    async def work(runtime: Runtime) -> Page[Task]:
        if app_id is not None:
            app = await runtime.registry.apps.get(app_id)
            projects = [app.project_id]
        else:
            projects = sorted({app.project_id for app in await runtime.registry.apps.list_all()})
        pages = [
            await runtime.tasks.list_tasks(
                project, page, app_id=app_id, task_type=task_type, status=status_value
            )
            for project in projects
        ]
        return merge_pages(pages, limit)

    found = where.run_split(work, through_v5)
    if json_out:
        print(
            json.dumps(
                {
                    "count": found.count,
                    "marker": found.marker,
                    "tasks": [_task_summary(task) for task in found.items],
                }
            )
        )
        return
    table = _listing(f"{found.count:,} tasks")
    for name in ("task_id", "type", "status", "success/total", "created (UTC)"):
        table.add_column(name, no_wrap=True)
    for task in found.items:
        row = _task_summary(task)
        table.add_row(
            row["task_id"], row["type"], row["status"],
            f"{row['success']:,}/{row['total']:,}", _short_time(task.created_at),
        )  # fmt: skip
    Console().print(table)
    if len(found.items) == limit:
        _hint_next_page(found)


def _listing(title: str) -> Table:
    """A table of whole ids and words with no borders: an id cut short cannot be pasted."""
    return Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )


def _hint_next_page(found: Page[Any]) -> None:
    """Tell how to ask for the page after a full one."""
    if found.marker is not None:
        err_console.print(f"next page: --marker {found.marker}", highlight=False)


def _short_time(epoch_ms: int) -> str:
    """`11-25 06:21` (UTC): enough to tell tasks apart in a table; --json has the rest."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%m-%d %H:%M")


def merge_pages(pages: list[Page[Task]], limit: int) -> Page[Task]:
    """One newest-first page from the same marker page of several projects.

    Task records ids (the marker) grow with creation across projects, so the newest `limit`
    of the per-project pages are the newest `limit` overall below the marker.
    """
    if len(pages) == 1:
        return pages[0]
    items = sorted((t for page in pages for t in page.items), key=lambda t: t.pk, reverse=True)
    items = items[:limit]
    marker = format_record_id(items[-1].pk) if items else None
    return Page(items=items, count=sum(page.count for page in pages), marker=marker)


def _task_summary(task: Task) -> dict[str, Any]:
    progress = task.progress
    return {
        "task_id": task.task_id,
        "name": task.name,
        "type": task.task_type.value,
        "status": task.status.value,
        "app_id": task.app_id,
        "total": progress.total,
        "success": progress.success,
        "fail": progress.failed,
        "unfinished": progress.unfinished,
        "created": _when(task.created_at),
    }


@task_command("details")
def details(
    task_id: TaskIdArg,
    status: Annotated[
        str | None,
        typer.Option(help="Only subtasks in this state: waiting, processing, success, fail, ..."),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, max=MAX_LIMIT, help="Marker paging: subtasks per page.")
    ] = None,
    marker: Annotated[
        str | None, typer.Option(help="Marker paging: continue below this marker.")
    ] = None,
    offset: Annotated[
        int | None, typer.Option(min=0, help="Marker paging: skip this many first.")
    ] = None,
    page_no: Annotated[
        int | None, typer.Option("--page-no", min=0, help="Numbered paging: page (from 0).")
    ] = None,
    page_size: Annotated[
        int | None, typer.Option("--page-size", min=1, help="Numbered paging: page size.")
    ] = None,
    *,
    where: TaskTarget,
    json_out: bool,
) -> None:
    """A page of a task's subtasks: newest first by marker, or numbered in creation order."""
    status_value = _subtask_status(status)
    numbered = page_no is not None or page_size is not None
    if numbered and (limit is not None or marker is not None or offset is not None):
        raise fail("use --limit/--marker/--offset or --page-no/--page-size, not both", EXIT_USAGE)
    try:
        page = PageRequest(limit=limit or 10, marker=marker or MAX_MARKER, offset=offset or 0)
    except InvalidInput as exc:
        raise _usage(exc) from None
    if numbered and where.remote is not None:
        raise fail("--page-no/--page-size are not v5 paging: use --limit/--marker", EXIT_USAGE)

    async def work(runtime: Runtime) -> tuple[Task, Page[Subtask]]:
        if numbered:
            return await runtime.tasks.subtasks_by_number(
                task_id, page_no or 0, page_size or 10, status=status_value, target=device
            )
        return await runtime.tasks.subtasks(task_id, page=page, status=status_value, target=device)

    async def through_v5(tasks: RemoteTasks) -> tuple[Task, Page[Subtask]]:
        return await tasks.subtasks(task_id, page=page, status=status_value, target=device)

    task, found = where.run_split(work, through_v5)
    if json_out:
        print(
            json.dumps(
                {
                    "task_id": task.task_id,
                    "count": found.count,
                    "marker": found.marker,
                    "subtasks": [subtask_json(subtask) for subtask in found.items],
                }
            )
        )
        return
    # the record ids (markers) and times are in --json; the device id is what a reader wants
    table = _listing(f"task {task.task_id}: {found.count:,} subtasks")
    table.add_column("device", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("try", no_wrap=True)
    table.add_column("error", overflow="fold")
    for subtask in found.items:
        style = STATE_STYLES.get(subtask.status.value, "white")
        error = subtask.error_code and f"{subtask.error_code}: {subtask.error_msg or ''}"
        table.add_row(
            subtask.target, f"[{style}]{subtask.status.value}[/]", str(subtask.attempt),
            error or "",
        )  # fmt: skip
    Console().print(table)
    if not numbered and len(found.items) == page.limit:
        _hint_next_page(found)


@task_command("watch")
def watch(
    task_id: TaskIdArg,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="Give up after this many seconds (exit 1)."),
    ] = None,
    *,
    where: TaskTarget,
    json_out: bool,
) -> None:
    """Follow a task live (a progress bar with per-state counts) until it finished."""

    async def work(tasks: TaskCalls) -> Task:
        view = None if json_out else TaskProgressView()
        task = await tasks.get(task_id)
        try:
            with view or contextlib.nullcontext():
                async with asyncio.timeout(timeout):
                    while True:
                        if view is not None:
                            view.update(task)
                        if task.finished:
                            return task
                        # one read of the task row twice a second costs the server nothing
                        await asyncio.sleep(WATCH_POLL_S)
                        task = await tasks.get(task_id)
        except TimeoutError:
            raise fail(f"task {task_id} is still {task.status.value} after {timeout:g} s") from None

    try:
        task = where.run(work)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if json_out:
        print(json.dumps(task_json(task)))
        return
    err_console.print(
        f"task {task.task_id} {task.status.value}: {counts_markup(task.progress)}",
        highlight=False,
        soft_wrap=True,
    )


@task_command("stop")
def stop(
    task_id: TaskIdArg,
    devices: DevicesOpt = None,
    *,
    where: TaskTarget,
    json_out: bool,
) -> None:
    """Stop a task, or only the named devices' unfinished subtasks."""
    task = _change_targets(where, task_id, devices, "stop", json_out)
    if task is None:
        return
    if json_out:
        print(json.dumps({"task_id": task_id, "status": task.status.value}))
    else:
        err_console.print(f"task {task_id} {task.status.value}", highlight=False)


@task_command("retry")
def retry(
    task_id: TaskIdArg,
    devices: DevicesOpt = None,
    *,
    where: TaskTarget,
    json_out: bool,
) -> None:
    """Run failed, timed-out and stopped subtasks again (all, or the named devices')."""
    task = _change_targets(where, task_id, devices, "retry", json_out)
    if task is None:
        return
    if json_out:
        print(
            json.dumps(
                {"task_id": task_id, "status": task.status.value, "waiting": task.progress.waiting}
            )
        )
    else:
        err_console.print(
            f"task {task_id} {task.status.value}: {task.progress.waiting:,} subtasks to run again",
            highlight=False,
        )


def _change_targets(
    where: TaskTarget,
    task_id: str,
    devices: list[str] | None,
    action: Literal["stop", "retry"],
    json_out: bool,
) -> Task | None:
    """Stop or retry the task, or the named devices' subtasks.

    With devices named, prints each one's result and returns None; otherwise returns the
    task as it is afterwards, for the command to print.
    """

    async def work(tasks: TaskCalls) -> tuple[list[TargetResult], Task]:
        change = tasks.stop if action == "stop" else tasks.retry
        results = await change(task_id, targets=devices or None)
        return results, await tasks.get(task_id)

    results, task = where.run(work)
    if devices:
        _print_results(task_id, "stopped" if action == "stop" else "retried", results, json_out)
        return None
    return task


@task_command("delete")
def delete(
    task_id: TaskIdArg,
    *,
    where: TaskTarget,
    json_out: bool,
) -> None:
    """Delete a finished task and its subtasks (stop a running one first)."""

    async def work(tasks: TaskCalls) -> None:
        await tasks.delete(task_id)

    where.run(work)
    if json_out:
        print(json.dumps({"task_id": task_id, "deleted": True}))
    else:
        err_console.print(f"task {task_id} deleted", highlight=False)
