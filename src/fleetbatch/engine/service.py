"""The task service: what the API dialects and the CLI call to create and manage tasks.

Each public method is one unit of work. Creating a task stores it and, for an explicit
device list, its subtasks in one transaction (all or nothing); a selector (groups, product,
area, broadcast) is expanded afterwards by the engine in chunks, so a million-device task
never holds the single SQLite writer for the whole expansion.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.exc import IntegrityError

from fleetbatch.clock import Clock
from fleetbatch.domain.documents import normalise_document
from fleetbatch.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    LimitExceeded,
    NotFound,
)
from fleetbatch.domain.ids import ObjectIdGenerator
from fleetbatch.domain.registry import Page
from fleetbatch.domain.states import FINISHED_TASK_STATUSES, SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import (
    NewTask,
    Selector,
    SelectorKind,
    Subtask,
    Task,
    TaskType,
    check_target,
)
from fleetbatch.engine import steps
from fleetbatch.registry.common import require_app, require_group, require_product
from fleetbatch.store import apps as app_rows
from fleetbatch.store import groups as group_rows
from fleetbatch.store import subtasks as subtask_rows
from fleetbatch.store import tasks as task_rows
from fleetbatch.store.database import Store
from fleetbatch.store.paging import PageRequest

S = SubtaskStatus
T = TaskStatus
# explicit device ids are looked up and inserted this many at a time
LIST_CHUNK = 5000
MAX_PAGE_SIZE = 250
# the async-command phase a subtask holds until it is sent
ASYNC_PENDING = "PENDING"
# the PostgreSQL notification channel engine workers listen on
WAKE_CHANNEL = "fleetbatch_tasks"


@dataclass(frozen=True, slots=True)
class TargetResult:
    """What a stop or retry did to one named device's subtask."""

    target: str
    ok: bool
    error_code: str | None = None
    error_msg: str | None = None


class TaskService:
    """Create, read, page, stop, retry and delete batch tasks."""

    def __init__(
        self, store: Store, clock: Clock, *, on_change: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self._ids = ObjectIdGenerator()
        self._listeners: list[Callable[[], None]] = [on_change] if on_change else []

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` after a change the engine should act on at once (a wake-up)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # --- create -------------------------------------------------------------------------

    async def create(
        self,
        new: NewTask,
        device_ids: Iterable[str] | None = None,
        *,
        unique_name: bool = False,
        max_unfinished: int | None = None,
    ) -> Task:
        """Store a task; an explicit device list (`device_ids`) becomes its subtasks now.

        Exactly one of `device_ids` and `new.selector` names the devices. Raises
        InvalidInput, NotFound (app, product, group) or AlreadyExists (a tag pair in use);
        nothing is written then. `unique_name`: AlreadyExists("task name") when the app
        has a task of that name; `max_unfinished`: LimitExceeded when the app already has
        that many unfinished tasks from the same source (both checked under the app's lock).
        """
        now = self.clock.now_ms()
        new.validate(now)
        document = normalise_document(new.task_type, new.document)
        if (device_ids is None) == (new.selector is None):
            raise InvalidInput("targets", "give either a device list or a selector")
        if new.selector is not None and new.selector.kind is SelectorKind.DEVICES:
            # the expander has nothing to expand it from: the list itself is `device_ids`
            raise InvalidInput("selector", "a device list is given as the list, not a selector")
        async with self.store.write() as conn:
            app = await require_app(conn, new.app_id)
            if unique_name or max_unfinished is not None:
                await app_rows.lock_app(conn, app.app_id)
            if unique_name and await task_rows.name_taken(conn, app.app_id, new.name):
                raise AlreadyExists("task name", new.name)
            if max_unfinished is not None and (
                await task_rows.count_unfinished(conn, app.app_id, source=new.source)
                >= max_unfinished
            ):
                raise LimitExceeded(
                    f"app {app.app_id} has {max_unfinished} unfinished task(s) already"
                )
            selector = await self._resolve(conn, app.project_id, new.app_id, new.selector)
            scheduled = new.policy.schedule_at_ms
            later = scheduled is not None and scheduled > now
            if selector is not None:
                status = T.INITIALIZING
            else:
                status = T.WAITING if later else T.PROCESSING
            started = now if status is T.PROCESSING else None
            timeout_s = new.policy.timeout_s
            values: dict[str, Any] = {
                "task_id": self._ids.new(now / 1000),
                "project_id": app.project_id,
                "app_id": app.app_id,
                "creator_app_id": new.creator_app_id,
                "name": new.name,
                "task_type": new.task_type.value,
                "status": status.value,
                "source": new.source,
                "mode": new.mode,
                "need_confirm": new.need_confirm,
                "document": json.dumps(document),
                "targets": json.dumps(list(new.targets)) if new.targets is not None else None,
                "targets_filter": (
                    json.dumps(new.targets_filter) if new.targets_filter is not None else None
                ),
                "selector": json.dumps(selector.to_json() if selector else None),
                "policy": json.dumps(new.policy.to_json()),
                "ext_info": json.dumps(new.ext_info) if new.ext_info is not None else None,
                "timeout_s": timeout_s,
                "subtask_timeout_s": new.policy.subtask_timeout_s,
                "max_concurrency": new.policy.max_concurrency,
                "rate_per_min": new.policy.rate_per_min,
                "retry_count": new.policy.retry_count,
                "retry_interval_s": new.policy.retry_interval_s,
                "max_retransmit": new.policy.max_retransmit,
                "callback_url": new.callback_url,
                "abort_min_finished": new.policy.abort_min_finished,
                "abort_fail_ratio": new.policy.abort_fail_ratio,
                "created_at": now,
                "scheduled_at": scheduled,
                "started_at": started,
                "deadline_at": now + timeout_s * 1000 if started and timeout_s else None,
            }
            task_pk = await task_rows.insert_task(conn, values)
            try:
                await task_rows.insert_tags(conn, task_pk, app.project_id, new.tags)
            except IntegrityError as exc:
                pairs = ", ".join(f"{k}={v}" for k, v in new.tags.items())
                raise AlreadyExists("task tag", pairs) from exc
            if device_ids is not None:
                phase = ASYNC_PENDING if new.task_type is TaskType.CREATE_ASYNC_COMMANDS else None
                for chunk in _chunks(device_ids, LIST_CHUNK):
                    for device_id in chunk:
                        check_target(device_id)
                    await subtask_rows.insert_listed(
                        conn, task_pk, app.project_id, chunk, now, phase=phase
                    )
                counts = await subtask_rows.count_by_status(conn, task_pk)
                await task_rows.set_counts(conn, task_pk, counts)
            row = await task_rows.get_task_row(conn, pk=task_pk)
            assert row is not None
            task = task_rows.task_from_row(row, new.tags)
            await notify_engines(conn)
        self._changed()
        return task

    async def _resolve(
        self, conn: Any, project_id: str, app_id: str, selector: Selector | None
    ) -> Selector | None:
        """Check what a selector names exists; group names become ids, sub-groups included."""
        if selector is None:
            return None
        if selector.kind is SelectorKind.PRODUCT:
            assert selector.product_id is not None
            await require_product(conn, project_id, selector.product_id)
        if selector.kind is SelectorKind.GROUP_NAMES:
            ids = []
            for name in selector.group_names:
                group = await group_rows.find_group_by_name(conn, app_id, name)
                if group is None:
                    raise NotFound("group", name)
                ids.append(group.group_id)
            selector = Selector(SelectorKind.GROUP_NAMES, tuple(ids), selector.group_names)
        elif selector.kind is SelectorKind.GROUPS:
            for group_id in selector.group_ids:
                await require_group(conn, project_id, group_id)
        if selector.kind in (SelectorKind.GROUPS, SelectorKind.GROUP_NAMES):
            found = list(dict.fromkeys(selector.group_ids))
            frontier = found
            while frontier:
                children = await group_rows.child_group_ids(conn, frontier)
                frontier = [child for child in children if child not in found]
                found.extend(frontier)
            selector = Selector(selector.kind, tuple(found), selector.group_names)
        return selector

    # --- read ---------------------------------------------------------------------------

    async def get(self, task_id: str, *, project_id: str | None = None) -> Task:
        """The task with its progress and tags; NotFound outside `project_id`."""
        async with self.store.read() as conn:
            row = await task_rows.get_task_row(conn, task_id=task_id)
            if row is None or (project_id is not None and row.project_id != project_id):
                raise NotFound("task", task_id)
            tags = await task_rows.get_tags(conn, row.pk)
            return task_rows.task_from_row(row, tags)

    async def list_tasks(
        self,
        project_id: str,
        page: PageRequest | None = None,
        *,
        app_id: str | None = None,
        task_type: str | None = None,
        status: TaskStatus | None = None,
        exclude_sources: Sequence[str] = (),
    ) -> Page[Task]:
        """Tasks of a project, newest first (marker paging); none from `exclude_sources`."""
        async with self.store.read() as conn:
            return await task_rows.page_tasks(
                conn,
                project_id=project_id,
                page=page or PageRequest(),
                app_id=app_id,
                task_type=task_type,
                status=status.value if status else None,
                exclude_sources=exclude_sources,
            )

    async def subtasks(
        self,
        task_id: str,
        *,
        project_id: str | None = None,
        page: PageRequest | None = None,
        status: SubtaskStatus | None = None,
        target: str | None = None,
        statuses: Sequence[SubtaskStatus] | None = None,
    ) -> tuple[Task, Page[Subtask]]:
        """The task and one page of its subtasks, newest first below the marker.

        `statuses` filters on any of several states (a wire word may stand for more).
        """
        task = await self.get(task_id, project_id=project_id)
        async with self.store.read() as conn:
            found = await subtask_rows.page_by_marker(
                conn,
                task.pk,
                page or PageRequest(),
                status=status,
                target=target,
                known_count=(
                    _known_count(task, status, target)
                    if statuses is None
                    else _known_count_of(task, statuses, target, None)
                ),
                statuses=statuses,
            )
        return task, found

    async def subtasks_by_number(
        self,
        task_id: str,
        page_no: int,
        page_size: int,
        *,
        project_id: str | None = None,
        status: SubtaskStatus | None = None,
        target: str | None = None,
        statuses: Sequence[SubtaskStatus] | None = None,
        subtask_id: int | None = None,
    ) -> tuple[Task, Page[Subtask]]:
        """The task and page `page_no` (from 0) of its subtasks in creation order.

        `statuses` matches any of several states (a wire status standing for several);
        `subtask_id` one subtask by its id.
        """
        if page_no < 0:
            raise InvalidInput("pageNo", "must be 0 or more")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidInput("pageSize", f"must be 1 to {MAX_PAGE_SIZE}")
        task = await self.get(task_id, project_id=project_id)
        async with self.store.read() as conn:
            found = await subtask_rows.page_by_number(
                conn,
                task.pk,
                page_no,
                page_size,
                status=status,
                target=target,
                statuses=statuses,
                subtask_id=subtask_id,
                known_count=(
                    _known_count(task, status, target)
                    if statuses is None and subtask_id is None
                    else _known_count_of(task, statuses, target, subtask_id)
                ),
            )
        return task, found

    # --- change -------------------------------------------------------------------------

    async def stop(
        self,
        task_id: str,
        *,
        project_id: str | None = None,
        targets: Sequence[str] | None = None,
    ) -> list[TargetResult]:
        """Stop the whole task, or only the named devices' unfinished subtasks.

        Raises Conflict when the task already finished.
        """
        task = await self.get(task_id, project_id=project_id)
        now = self.clock.now_ms()
        async with self.store.write() as conn:
            row = await task_rows.get_task_row(conn, pk=task.pk)
            assert row is not None
            current = task_rows.task_from_row(row)
            if current.status in FINISHED_TASK_STATUSES:
                raise Conflict(f"task {task_id} has finished ({current.status.value})")
            if targets is None:
                # an expanding task is fenced first (the expander checks its status under
                # the task row); a running one loses its subtasks first and the task row
                # last, the order of the workers that claim from it, or they deadlock
                fenced = await task_rows.change_status(
                    conn, task.pk, (T.INITIALIZING,), T.STOPPING, status_desc="stopped"
                )
                progress = await steps.stop_subtasks(conn, task.pk, now)
                if not fenced:
                    if current.status is not T.STOPPING:
                        await task_rows.change_status(
                            conn, task.pk, steps.STOPPABLE, T.STOPPING, status_desc="stopped"
                        )
                    await steps.finish(conn, _as(current, T.STOPPING), progress, now)
                results: list[TargetResult] = []
            else:
                before = await subtask_rows.targets_in(conn, task.pk, targets)
                progress = await steps.stop_subtasks(conn, task.pk, now, targets=targets)
                results = [_target_result(t, before.get(t), stopping=True) for t in targets]
                if current.status is T.PROCESSING:
                    await steps.finish(conn, current, progress, now)
            await notify_engines(conn)
        self._changed()
        return results

    async def retry(
        self,
        task_id: str,
        *,
        project_id: str | None = None,
        targets: Sequence[str] | None = None,
    ) -> list[TargetResult]:
        """Run failed, timed-out and stopped subtasks (all, or the named devices') again.

        A finished task becomes processing again. Raises Conflict while the task is still
        being created, is scheduled for later, or is stopping.
        """
        task = await self.get(task_id, project_id=project_id)
        now = self.clock.now_ms()
        async with self.store.write() as conn:
            row = await task_rows.get_task_row(conn, pk=task.pk)
            assert row is not None
            current = task_rows.task_from_row(row)
            if current.status in (T.INITIALIZING, T.WAITING, T.STOPPING):
                raise Conflict(f"task {task_id} cannot be retried while {current.status.value}")
            before = await subtask_rows.targets_in(conn, task.pk, targets) if targets else {}
            # a subtask whose device is gone stays failed: retrying cannot help it
            deltas = await subtask_rows.transition(
                conn,
                task.pk,
                (S.FAIL, S.TIMEOUT, S.STOPPED, S.FAIL_WAIT_RETRY),
                S.WAITING,
                now,
                targets=targets,
                extra=subtask_rows.s.device_pk.is_not(None),
                failures=0,
                due_at=None,
                error_code=None,
                error_msg=None,
            )
            counted = await task_rows.add_counts(conn, task.pk, deltas)
            # decided on the row as the counter update left it (locked), not as read above:
            # on PostgreSQL a finaliser may have finished the task since
            if sum(v for v in deltas.values() if v > 0) and (
                counted.status in FINISHED_TASK_STATUSES
            ):
                deadline = (
                    now + current.policy.timeout_s * 1000 if current.policy.timeout_s else None
                )
                await task_rows.update_task(
                    conn,
                    task.pk,
                    status=T.PROCESSING.value,
                    finished_at=None,
                    status_desc=None,
                    deadline_at=deadline,
                )
            after = await subtask_rows.targets_in(conn, task.pk, targets) if targets else {}
            await notify_engines(conn)
        self._changed()
        if targets is None:
            return []
        results = [_target_result(t, before.get(t), stopping=False) for t in targets]
        # a failed subtask that names no device was left as it was: not a success either
        return [
            r
            if not r.ok or after.get(r.target) is S.WAITING
            else TargetResult(
                r.target, False, "task.target_state", f"{r.target} names no device; not retried"
            )
            for r in results
        ]

    async def delete(self, task_id: str, *, project_id: str | None = None) -> None:
        """Delete a finished task and its subtasks; Conflict while it runs."""
        task = await self.get(task_id, project_id=project_id)
        async with self.store.write() as conn:
            row = await task_rows.get_task_row(conn, pk=task.pk)
            if row is None:
                raise NotFound("task", task_id)
            if task_rows.task_from_row(row).status not in FINISHED_TASK_STATUSES:
                raise Conflict(f"task {task_id} has not finished; stop it first")
            await subtask_rows.delete_all(conn, task.pk)
            await task_rows.delete_task(conn, task.pk)


async def notify_engines(conn: Any) -> None:
    """Wake the engine workers of other processes (PostgreSQL; SQLite ones poll each sweep)."""
    if conn.dialect.name == "postgresql":
        # delivered at commit, to every listening worker (Engine._listen_loop)
        await conn.exec_driver_sql(f"NOTIFY {WAKE_CHANNEL}")


def _known_count(task: Task, status: SubtaskStatus | None, target: str | None) -> int | None:
    """The matching count from the task's counters, when they answer it."""
    if target is not None:
        return None
    return task.progress.total if status is None else task.progress.count(status)


def _known_count_of(
    task: Task,
    statuses: Sequence[SubtaskStatus] | None,
    target: str | None,
    subtask_id: int | None,
) -> int | None:
    """The count of subtasks in any of `statuses`, from the counters, when they answer it."""
    if target is not None or subtask_id is not None or statuses is None:
        return None
    return sum(task.progress.count(status) for status in set(statuses))


def _target_result(target: str, before: SubtaskStatus | None, *, stopping: bool) -> TargetResult:
    if before is None:
        return TargetResult(target, False, "task.target_not_found", f"{target} is not a target")
    movable = (
        {S.WAITING, S.PROCESSING, S.FAIL_WAIT_RETRY}
        if stopping
        else {S.FAIL, S.TIMEOUT, S.STOPPED, S.FAIL_WAIT_RETRY}
    )
    if before in movable:
        return TargetResult(target, True)
    return TargetResult(target, False, "task.target_state", f"{target}'s subtask is {before.value}")


def _as(task: Task, status: TaskStatus) -> Task:
    return replace(task, status=status)


def _chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
