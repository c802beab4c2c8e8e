"""v5 mapping rules without I/O: batch-file rows, status words, error codes, task requests."""

from __future__ import annotations

import pytest

from fleetbatch.api.v5 import wire
from fleetbatch.api.v5.batchtasks import CreateBatchTask, TaskPolicyWire, new_task
from fleetbatch.domain import errors
from fleetbatch.domain.batch_files import MAX_FILE_ROWS, check_file_name, device_ids_from_rows
from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import Progress, SelectorKind, TaskType


def test_device_ids_come_from_the_first_column_after_an_optional_header() -> None:
    rows = [("device_id", "note"), ("dev-1", "x"), (None,), (), ("dev-2",), (12345.0, None)]
    assert device_ids_from_rows(rows) == ["dev-1", "dev-2", "12345"]
    assert device_ids_from_rows([("dev-1",), ("dev-2",)]) == ["dev-1", "dev-2"]
    assert device_ids_from_rows([("设备ID",), ("dev-1",)]) == ["dev-1"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("dev-1",), ("bad id",)], "row 2"),
        ([("dev-1",), ("dev-1",)], "twice"),
        ([("device_id",)], "no device id"),
        ([(f"d{i}",) for i in range(MAX_FILE_ROWS + 1)], "more than"),
    ],
)
def test_bad_device_lists_are_refused(rows: list[tuple[object, ...]], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        device_ids_from_rows(rows)


def test_file_names_must_be_spreadsheets() -> None:
    assert check_file_name("Devices.XLSX") == "Devices.XLSX"
    for name in ("", "devices.csv", "x" * 252 + ".xlsx"):
        with pytest.raises(InvalidInput):
            check_file_name(name)


def test_every_internal_state_has_a_wire_word() -> None:
    assert set(wire.SUBTASK_WORDS) == set(SubtaskStatus)
    assert wire.SUBTASK_WORDS[SubtaskStatus.WAITING] == "Waitting"
    assert wire.SUBTASK_FILTERS["Fail"] == (SubtaskStatus.FAIL, SubtaskStatus.TIMEOUT)
    for status in TaskStatus:
        assert wire.task_word(status, Progress()) in wire.TASK_FILTERS
    assert wire.task_word(TaskStatus.TIMEOUT, Progress(total=2, success=1)) == "PartialSuccess"
    progress = wire.progress_wire(Progress(total=5, waiting=1, fail=1, timeout=2, success=1))
    assert progress == {
        "total": 5, "processing": 0, "success": 1, "fail": 3, "waitting": 1,
        "fail_wait_retry": 0, "stopped": 0, "removed": 0,
    }  # fmt: skip


def test_every_error_family_has_a_v5_code() -> None:
    families = [
        cls for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.FleetbatchError)
    ]  # fmt: skip
    assert set(families) <= set(wire.ERRORS)
    assert wire.error_for(errors.NotFound("device", "d"))[:2] == (404, "IOTDA.014000")
    assert wire.error_for(errors.NotFound("task", "t"))[0] == 404
    assert wire.error_for(errors.AuthFailed("x"))[:2] == (401, "IOTDA.000002")
    assert wire.error_for(errors.InvalidInput("limit", "x"))[:2] == (400, "IOTDA.000017")
    assert wire.error_for(errors.AlreadyExists("device", "d"))[:2] == (400, "IOTDA.014031")


def body(**fields: object) -> CreateBatchTask:
    return CreateBatchTask.model_validate(
        {"task_name": "t1", "task_type": "deleteDevices", **fields}
    )


def test_task_requests_map_to_the_internal_model() -> None:
    new, devices = new_task(body(targets=["a", "b"]), "app")
    assert devices == ["a", "b"]
    assert new.task_type is TaskType.DELETE_DEVICES
    assert new.source == "v5"
    group = "e495cf17-ff79-4294-8f64-4d367919d665"
    new, devices = new_task(body(targets_filter={"group_ids": [group]}), "app")
    assert devices is None
    assert new.selector is not None
    assert new.selector.kind is SelectorKind.GROUPS
    assert new.selector.group_ids == (group,)
    policy = TaskPolicyWire(schedule_time="20301212T121212Z", retry_count=2, retry_interval=3)
    new, _ = new_task(body(targets=["a"], task_policy=policy), "app")
    assert new.policy.retry_count == 2
    assert new.policy.retry_interval_s == 180
    new, devices = new_task(body(document_source="f1"), "app", ["x", "y"])
    assert devices == ["x", "y"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "targets"),
        ({"targets": []}, "targets"),
        ({"targets": ["a", "a"]}, "targets"),
        ({"targets_filter": {"product_id": "p"}}, "targets_filter"),
        ({"targets_filter": {"group_ids": []}}, "targets_filter.group_ids"),
        ({"targets": ["a"], "need_confirm": True}, "need_confirm"),
        ({"targets": ["a"], "task_ext_info": {"k": "v" * 600}}, "task_ext_info"),
        ({"targets": ["a"], "task_type": "firmwareUpgrade"}, "task_type"),
        ({"targets": ["a"], "task_policy": {"retry_count": 1}}, "task_policy.retry_interval"),
        (
            {"targets": ["a"], "task_policy": {"schedule_time": "20151312T121212Z"}},
            "task_policy.schedule_time",
        ),
    ],
)
def test_bad_task_requests_name_their_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        new_task(body(**fields), "app")
    assert caught.value.field == field
