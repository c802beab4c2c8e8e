"""The `task` commands' calls over a running server's IoTDA v5 API (`--endpoint ...`).

`RemoteTasks` answers the calls the commands make of `TaskService` (create, get, list, page
subtasks, stop, retry, delete) with the same domain objects, built from the v5 wire through
the dialect's own word tables, so every command prints the same either way. What v5 does not
carry (record ids, attempts, app and project of a task) is left empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fleetbatch.api.v5 import wire
from fleetbatch.clock import Clock, SystemClock
from fleetbatch.domain.errors import InvalidInput, NotFound
from fleetbatch.domain.registry import Page
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import (
    NewTask,
    Progress,
    SelectorKind,
    Subtask,
    Task,
    TaskPolicy,
    TaskType,
)
from fleetbatch.domain.timefmt import from_compact, to_compact
from fleetbatch.engine.service import TargetResult
from fleetbatch.store.paging import PageRequest
from fleetbatch.v5_client import V5Client, V5Profile

# a subtask's wire word back to the internal state (`Fail` also stands for timeouts)
SUBTASK_STATES = {word: status for status, word in wire.SUBTASK_WORDS.items()}
SUBTASK_STATES["Fail"] = SubtaskStatus.FAIL
# the policy fields v5's TaskPolicy carries; the others are not expressible remotely
REMOTE_POLICY_FIELDS = {"schedule_at_ms", "retry_count", "retry_interval_s"}


class RemoteTasks:
    """Batch tasks of one project through `/v5/iot/{project_id}/batchtasks`."""

    def __init__(self, client: V5Client, clock: Clock | None = None) -> None:
        self.client = client
        self.clock = clock or SystemClock()

    @property
    def profile(self) -> V5Profile:
        return self.client.profile

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return await self.client.call(method, path, now_ms=self.clock.now_ms(), **kwargs)

    async def create(self, new: NewTask, device_ids: Iterable[str] | None = None) -> Task:
        """CreateBatchTask from the same request the local service takes."""
        body: dict[str, Any] = {"task_name": new.name, "task_type": new.task_type.value}
        if new.app_id:
            body["app_id"] = new.app_id
        if new.document:
            body["document"] = dict(new.document)
        if device_ids is not None:
            body["targets"] = list(device_ids)
        elif new.selector is not None and new.selector.kind is SelectorKind.GROUP_NAMES:
            body["targets_filter"] = {
                "group_ids": [await self._group_id(name) for name in new.selector.group_names]
            }
        else:
            raise InvalidInput("--all", "every device of an app is not a v5 target; use --group")
        policy = new.policy.to_json()
        unsupported = set(policy) - REMOTE_POLICY_FIELDS
        if unsupported:
            raise InvalidInput("--policy", f"{sorted(unsupported)[0]} cannot be set through v5")
        if policy:
            wire_policy: dict[str, Any] = {}
            if new.policy.schedule_at_ms is not None:
                wire_policy["schedule_time"] = to_compact(new.policy.schedule_at_ms)
            if new.policy.retry_count or new.policy.retry_interval_s:
                if new.policy.retry_interval_s % 60:
                    raise InvalidInput("retry_interval", "v5 takes whole minutes")
                wire_policy["retry_count"] = new.policy.retry_count
                wire_policy["retry_interval"] = new.policy.retry_interval_s // 60
            body["task_policy"] = wire_policy
        return task_from_wire(await self._call("POST", "/batchtasks", body=body), self.profile)

    async def _group_id(self, name: str) -> str:
        found = await self._call("GET", "/device-group", query={"name": name, "limit": 50})
        for group in found["device_groups"]:
            if group["name"] == name:
                return str(group["group_id"])
        raise NotFound("group", name)

    async def get(self, task_id: str) -> Task:
        """ShowBatchTask's task."""
        found = await self._call("GET", f"/batchtasks/{task_id}", query={"limit": 1})
        return task_from_wire(found["batchtask"], self.profile)

    async def list_tasks(
        self,
        page: PageRequest,
        *,
        app_id: str | None,
        task_type: str | None,
        status: TaskStatus | None,
    ) -> Page[Task]:
        """ListBatchTasks (v5 requires the task type)."""
        if task_type is None:
            raise InvalidInput("--type", "is required when listing through v5")
        word = None
        if status is not None:
            if status not in wire.TASK_WORDS:
                raise InvalidInput("--status", f"{status.value} has no v5 word")
            word = wire.TASK_WORDS[status]
        query = {
            "task_type": task_type,
            "status": word,
            "app_id": app_id,
            "limit": page.limit,
            "marker": page.marker,
            "offset": page.offset,
        }
        found = await self._call("GET", "/batchtasks", query=query)
        items = [task_from_wire(item, self.profile) for item in found["batchtasks"]]
        return Page(items=items, count=found["page"]["count"], marker=found["page"].get("marker"))

    async def subtasks(
        self,
        task_id: str,
        *,
        page: PageRequest,
        status: SubtaskStatus | None,
        target: str | None,
    ) -> tuple[Task, Page[Subtask]]:
        """ShowBatchTask: the task and one page of its subtasks."""
        query = {
            "task_detail_status": wire.SUBTASK_WORDS[status] if status is not None else None,
            "target": target,
            "limit": page.limit,
            "marker": page.marker,
            "offset": page.offset,
        }
        found = await self._call("GET", f"/batchtasks/{task_id}", query=query)
        details = [subtask_from_wire(item) for item in found["task_details"]]
        page_out = Page(details, found["page"]["count"], found["page"].get("marker"))
        return task_from_wire(found["batchtask"], self.profile), page_out

    async def stop(self, task_id: str, *, targets: Sequence[str] | None) -> list[TargetResult]:
        """StopBatchTask."""
        return await self._targets("stop", task_id, targets)

    async def retry(self, task_id: str, *, targets: Sequence[str] | None) -> list[TargetResult]:
        """RetryBatchTask."""
        return await self._targets("retry", task_id, targets)

    async def _targets(
        self, action: str, task_id: str, targets: Sequence[str] | None
    ) -> list[TargetResult]:
        body = {"targets": list(targets)} if targets else None
        found = await self._call("POST", f"/batchtasks/{task_id}/{action}", body=body)
        return [
            TargetResult(
                item["target"],
                item["status"] == "success",
                item.get("error_code"),
                item.get("error_msg"),
            )
            for item in (found or {}).get("targets", [])
        ]

    async def delete(self, task_id: str) -> None:
        """DeleteBatchTask."""
        await self._call("DELETE", f"/batchtasks/{task_id}")


def task_from_wire(data: dict[str, Any], profile: V5Profile) -> Task:
    """A v5 Task object as the domain's Task (what v5 does not carry left empty)."""
    counts = data.get("task_progress") or {}
    progress = Progress(
        total=counts.get("total", 0),
        waiting=counts.get("waitting", 0),
        processing=counts.get("processing", 0),
        success=counts.get("success", 0),
        fail=counts.get("fail", 0),
        fail_wait_retry=counts.get("fail_wait_retry", 0),
        stopped=counts.get("stopped", 0),
        removed=counts.get("removed", 0),
    )
    wire_policy = data.get("task_policy") or {}
    schedule = wire_policy.get("schedule_time")
    policy = TaskPolicy(
        schedule_at_ms=from_compact(schedule) if schedule else None,
        retry_count=wire_policy.get("retry_count") or 0,
        retry_interval_s=(wire_policy.get("retry_interval") or 0) * 60,
    )
    targets = data.get("targets")
    return Task(
        pk=0,
        task_id=data["task_id"],
        project_id=profile.project_id,
        app_id="",
        creator_app_id=None,
        name=data["task_name"],
        task_type=TaskType(data["task_type"]),
        status=wire.TASK_FILTERS[data["status"]],
        status_desc=data.get("status_desc"),
        source="v5",
        mode=data.get("task_mode"),
        need_confirm=bool(data.get("need_confirm")),
        document=data.get("document") or {},
        targets=tuple(targets) if targets is not None else None,
        targets_filter=data.get("targets_filter"),
        selector=None,
        policy=policy,
        ext_info=data.get("task_ext_info"),
        callback_url=None,
        progress=progress,
        created_at=from_compact(data["create_time"]),
        scheduled_at=policy.schedule_at_ms,
        started_at=None,
        finished_at=None,
        deadline_at=None,
    )


def subtask_from_wire(data: dict[str, Any]) -> Subtask:
    """A v5 TaskDetail as the domain's Subtask (ids, attempts and times are not on the wire)."""
    error = data.get("error") or {}
    return Subtask(
        id=0,
        task_pk=0,
        target=data["target"],
        device_pk=None,
        status=SUBTASK_STATES[data["status"]],
        attempt=0,
        failures=0,
        request_id=None,
        phase=None,
        output=data.get("output"),
        error_code=error.get("error_code"),
        error_msg=error.get("error_msg"),
        created_at=0,
        updated_at=0,
        started_at=None,
        finished_at=None,
    )
