"""Batch tasks: types, targets, policy, progress and the rules that decide a task's fate.

Pure: no I/O, time comes in as arguments (epoch milliseconds). The dialects validate their
own wire limits first; what is checked here holds for every caller (the CLI included).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.states import FINISHED_TASK_STATUSES, SubtaskStatus, TaskStatus

MAX_TASK_NAME = 256
MAX_TARGET_ID = 128
MAX_RETRIES = 5
MAX_RETRY_INTERVAL_S = 1440 * 60
MAX_SCHEDULE_AHEAD_MS = 7 * 24 * 3600 * 1000
# a command's answer is awaited this long unless the policy says otherwise (IoTDA: 20 s)
DEFAULT_COMMAND_TIMEOUT_S = 20.0
# a down message's PUBACK, a shadow push's delivery
DEFAULT_DELIVERY_TIMEOUT_S = 10.0
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
# the source of single-device commands (engine/device_commands.py): one-subtask tasks
# that no batch-task list or query shows
DEVICE_COMMAND_SOURCE = "device_command"


class TaskType(StrEnum):
    """What a task does to each device (the v5 `task_type` words)."""

    CREATE_COMMANDS = "createCommands"
    CREATE_ASYNC_COMMANDS = "createAsyncCommands"
    CREATE_MESSAGES = "createMessages"
    UPDATE_DEVICE_SHADOWS = "updateDeviceShadows"
    DELETE_DEVICES = "deleteDevices"
    FREEZE_DEVICES = "freezeDevices"
    UNFREEZE_DEVICES = "unfreezeDevices"


REGISTRY_TASK_TYPES = frozenset(
    {TaskType.DELETE_DEVICES, TaskType.FREEZE_DEVICES, TaskType.UNFREEZE_DEVICES}
)


class SelectorKind(StrEnum):
    """How a task names its devices."""

    DEVICES = "devices"  # an explicit list (request body or uploaded file)
    GROUPS = "groups"  # group ids, sub-groups included
    GROUP_NAMES = "group_names"  # group names within the app, sub-groups included
    PRODUCT = "product"  # one product id
    DEVICE_TYPE = "device_type"  # device type + manufacturer id + model (legacy DeviceType)
    AREA = "area"  # the device's location (legacy DeviceArea)
    ALL = "all"  # every device of the app (broadcast)


@dataclass(frozen=True, slots=True)
class Selector:
    """Which devices a task acts on, resolved once at creation (a snapshot)."""

    kind: SelectorKind
    group_ids: tuple[str, ...] = ()
    group_names: tuple[str, ...] = ()
    product_id: str | None = None
    device_type: str | None = None
    manufacturer_id: str | None = None
    model: str | None = None
    area: str | None = None

    def validate(self) -> None:
        """Raise InvalidInput unless the fields the kind needs are present."""
        kind = self.kind
        if kind is SelectorKind.GROUPS and not self.group_ids:
            raise InvalidInput("group_ids", "at least one group id is required")
        if kind is SelectorKind.GROUP_NAMES and not self.group_names:
            raise InvalidInput("group_names", "at least one group name is required")
        if kind is SelectorKind.PRODUCT and not self.product_id:
            raise InvalidInput("product_id", "is required")
        if kind is SelectorKind.DEVICE_TYPE and not (
            self.device_type and self.manufacturer_id and self.model
        ):
            raise InvalidInput("device_type", "device type, manufacturer id and model are required")
        if kind is SelectorKind.AREA and not self.area:
            raise InvalidInput("area", "is required")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (stored on the task row)."""
        data: dict[str, Any] = {"kind": self.kind.value}
        for name in ("group_ids", "group_names"):
            if values := getattr(self, name):
                data[name] = list(values)
        for name in ("product_id", "device_type", "manufacturer_id", "model", "area"):
            if (value := getattr(self, name)) is not None:
                data[name] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Selector:
        """The inverse of `to_json`."""
        return cls(
            kind=SelectorKind(data["kind"]),
            group_ids=tuple(data.get("group_ids", ())),
            group_names=tuple(data.get("group_names", ())),
            product_id=data.get("product_id"),
            device_type=data.get("device_type"),
            manufacturer_id=data.get("manufacturer_id"),
            model=data.get("model"),
            area=data.get("area"),
        )


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    """How a task runs: when, how fast, how often it retries, when it gives up."""

    schedule_at_ms: int | None = None
    retry_count: int = 0
    retry_interval_s: int = 0
    # legacy DeviceCmd: resend a failed or unanswered command up to this often (0-3)
    max_retransmit: int = 0
    # the whole task; unfinished subtasks time out with it
    timeout_s: int | None = None
    # one device's attempt; None takes the task type's default
    subtask_timeout_s: float | None = None
    max_concurrency: int | None = None
    rate_per_min: int | None = None
    # the abort rule: stop the task once at least `abort_min_finished` subtasks finished
    # and more than `abort_fail_ratio` of them failed
    abort_min_finished: int | None = None
    abort_fail_ratio: float | None = None

    def validate(self, now_ms: int) -> None:
        """Raise InvalidInput naming the first field out of range."""
        if self.schedule_at_ms is not None and not (
            self.schedule_at_ms <= now_ms + MAX_SCHEDULE_AHEAD_MS
        ):
            raise InvalidInput("schedule_time", "must be within 7 days from now")
        _check_range("retry_count", self.retry_count, 0, MAX_RETRIES)
        _check_range("retry_interval", self.retry_interval_s, 0, MAX_RETRY_INTERVAL_S)
        _check_range("max_retransmit", self.max_retransmit, 0, 3)
        if self.timeout_s is not None:
            _check_range("timeout", self.timeout_s, 1, 30 * 24 * 3600)
        if self.subtask_timeout_s is not None and not (
            0 < self.subtask_timeout_s <= 7 * 24 * 3600 and math.isfinite(self.subtask_timeout_s)
        ):
            raise InvalidInput("subtask_timeout", "must be above 0 and at most 7 days")
        if self.max_concurrency is not None:
            _check_range("max_concurrency", self.max_concurrency, 1, 1_000_000)
        if self.rate_per_min is not None:
            _check_range("rate_per_min", self.rate_per_min, 1, 100_000_000)
        if (self.abort_min_finished is None) != (self.abort_fail_ratio is None):
            raise InvalidInput("abort", "min_finished and fail_ratio come together")
        if self.abort_min_finished is not None:
            _check_range("abort.min_finished", self.abort_min_finished, 1, 100_000_000)
        if self.abort_fail_ratio is not None and not 0 <= self.abort_fail_ratio < 1:
            raise InvalidInput("abort.fail_ratio", "must be at least 0 and below 1")

    @property
    def retry_budget(self) -> int:
        """How many times one device's failed attempt is tried again."""
        return max(self.retry_count, self.max_retransmit)

    def to_json(self) -> dict[str, Any]:
        """Every field that differs from its default (stored on the task row)."""
        # compared with the default, not with 0: a fail ratio of 0.0 is a rule, not unset
        return {
            name: getattr(self, name)
            for name, spec in self.__dataclass_fields__.items()
            if getattr(self, name) != spec.default
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskPolicy:
        """The inverse of `to_json`; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInput("policy", f"unknown keys: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidInput("policy", str(exc)) from None


def _check_range(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(name, f"must be an integer from {low} to {high}")


@dataclass(frozen=True, slots=True)
class Progress:
    """Subtask counts by state; the task row keeps them equal to the rows' own states."""

    total: int = 0
    waiting: int = 0
    processing: int = 0
    success: int = 0
    fail: int = 0
    fail_wait_retry: int = 0
    timeout: int = 0
    stopped: int = 0
    removed: int = 0

    def count(self, status: SubtaskStatus) -> int:
        """The count of one state."""
        value: int = getattr(self, status.value)
        return value

    @property
    def finished(self) -> int:
        """Subtasks that ran to an outcome (stopped ones did not)."""
        return self.success + self.fail + self.timeout

    @property
    def failed(self) -> int:
        """Subtasks that ran and did not succeed."""
        return self.fail + self.timeout

    @property
    def unfinished(self) -> int:
        """Subtasks not yet in a terminal state."""
        return self.waiting + self.processing + self.fail_wait_retry

    def to_json(self) -> dict[str, int]:
        """Every count by its internal name, `total` included."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def final_status(progress: Progress) -> TaskStatus:
    """The status of a task whose subtasks are all terminal and that nobody stopped."""
    if progress.total == 0 or progress.success == 0:
        return TaskStatus.FAIL
    if progress.success == progress.total:
        return TaskStatus.SUCCESS
    return TaskStatus.PARTIAL_SUCCESS


def should_abort(progress: Progress, policy: TaskPolicy) -> bool:
    """The abort rule: enough subtasks finished and too large a share of them failed."""
    if policy.abort_min_finished is None or policy.abort_fail_ratio is None:
        return False
    finished = progress.finished
    if finished < policy.abort_min_finished or finished == 0:
        return False
    return progress.failed / finished > policy.abort_fail_ratio


def after_failure(failures: int, policy: TaskPolicy, now_ms: int) -> tuple[bool, int]:
    """Whether a failed attempt is retried (given earlier failures) and when it is due."""
    if failures < policy.retry_budget:
        return True, now_ms + policy.retry_interval_s * 1000
    return False, now_ms


class ErrorCode(StrEnum):
    """Why a subtask failed, in the internal vocabulary each dialect maps at its edge."""

    DEVICE_NOT_FOUND = "device.not_found"
    DEVICE_OFFLINE = "device.offline"
    DEVICE_FROZEN = "device.frozen"
    NO_RESPONSE = "device.no_response"
    NOT_ACKNOWLEDGED = "device.not_acknowledged"
    DEVICE_RESULT = "device.result_code"
    EXPIRED = "command.expired"
    TASK_TIMEOUT = "task.timeout"
    HAS_CHILDREN = "device.has_children"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class NewTask:
    """What a caller asks for; `validate` checks it before anything is written."""

    app_id: str
    task_type: TaskType
    name: str
    document: Mapping[str, Any] = field(default_factory=dict)
    selector: Selector | None = None  # None: an explicit device list comes with it
    policy: TaskPolicy = TaskPolicy()
    # the wire request's own echo fields, kept as given
    targets: tuple[str, ...] | None = None
    targets_filter: Mapping[str, Any] | None = None
    ext_info: Any = None
    mode: str | None = None
    need_confirm: bool = False
    callback_url: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    source: str = "internal"
    creator_app_id: str | None = None

    def validate(self, now_ms: int) -> None:
        """Raise InvalidInput naming the first bad field."""
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= MAX_TASK_NAME:
            raise InvalidInput("task_name", f"must be 1 to {MAX_TASK_NAME} characters")
        if self.selector is not None:
            self.selector.validate()
        self.policy.validate(now_ms)

    def with_document(self, document: Mapping[str, Any]) -> NewTask:
        """The same request with a normalised document."""
        return replace(self, document=document)


def check_target(device_id: str) -> None:
    """Raise InvalidInput unless `device_id` can name a device at all."""
    if not isinstance(device_id, str) or not 1 <= len(device_id) <= MAX_TARGET_ID:
        raise InvalidInput("targets", f"a device id is 1 to {MAX_TARGET_ID} characters")


@dataclass(frozen=True, slots=True)
class Task:
    """A batch task as stored, with its live progress."""

    pk: int
    task_id: str
    project_id: str
    app_id: str
    creator_app_id: str | None
    name: str
    task_type: TaskType
    status: TaskStatus
    status_desc: str | None
    source: str
    mode: str | None
    need_confirm: bool
    document: Mapping[str, Any]
    targets: tuple[str, ...] | None
    targets_filter: Mapping[str, Any] | None
    selector: Selector | None
    policy: TaskPolicy
    ext_info: Any
    callback_url: str | None
    progress: Progress
    created_at: int
    scheduled_at: int | None
    started_at: int | None
    finished_at: int | None
    deadline_at: int | None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the task reached a final status."""
        return self.status in FINISHED_TASK_STATUSES


@dataclass(frozen=True, slots=True)
class Subtask:
    """One device's part of a task."""

    id: int
    task_pk: int
    target: str
    device_pk: int | None
    status: SubtaskStatus
    attempt: int
    failures: int
    request_id: str | None
    phase: str | None
    output: str | None
    error_code: str | None
    error_msg: str | None
    created_at: int
    updated_at: int
    started_at: int | None
    finished_at: int | None


def request_id_for(subtask_id: int, attempt: int) -> str:
    """The request id of one attempt: the engine matches answers to subtasks by it."""
    return f"{subtask_id:024x}{attempt:08x}"


def parse_request_id(request_id: str) -> tuple[int, int] | None:
    """(subtask id, attempt) from `request_id_for`'s form; None for any other id."""
    # exactly `request_id_for`'s form: int() alone would also take signs, spaces, "_", "A-F"
    if not _REQUEST_ID.fullmatch(request_id):
        return None
    return int(request_id[:24], 16), int(request_id[24:], 16)
