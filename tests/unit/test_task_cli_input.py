"""What `fleetbatch task create` makes of the words and JSON the user typed."""

from __future__ import annotations

import pytest

from fleetbatch.cli_tasks import merge_pages, parse_json_text, parse_task_type, policy_from_json
from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.registry import Page
from fleetbatch.domain.tasks import TaskPolicy, TaskType
from fleetbatch.domain.timefmt import from_compact


def test_task_types_are_the_v5_words_in_any_case() -> None:
    assert parse_task_type("createCommands") is TaskType.CREATE_COMMANDS
    assert parse_task_type("UPDATEDEVICESHADOWS") is TaskType.UPDATE_DEVICE_SHADOWS
    with pytest.raises(InvalidInput, match="one of createCommands, createAsyncCommands"):
        parse_task_type("reboot")


def test_policy_fields_by_name_and_the_v5_spellings() -> None:
    assert policy_from_json({}) == TaskPolicy()
    assert policy_from_json({"retry_count": 2, "retry_interval_s": 30}) == TaskPolicy(
        retry_count=2, retry_interval_s=30
    )
    converted = policy_from_json({"retry_interval": 5, "schedule_time": "20300101T000000Z"})
    assert converted.retry_interval_s == 300
    assert converted.schedule_at_ms == from_compact("20300101T000000Z")


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ([1], "--policy"),
        ({"retry_interval": 1, "retry_interval_s": 60}, "--policy"),
        ({"retry_interval": 1.5}, "retry_interval"),
        ({"schedule_time": "2030-01-01"}, "schedule_time"),
        ({"schedule_time": 5}, "schedule_time"),
        ({"schedule_time": "20300101T000000Z", "schedule_at_ms": 1}, "--policy"),
        ({"speed": 1}, "policy"),
    ],
)
def test_bad_policies_name_the_field(policy: object, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        policy_from_json(policy)
    assert refused.value.field == field


def test_json_options_say_what_is_wrong() -> None:
    assert parse_json_text("--document", '{"a": [1]}') == {"a": [1]}
    with pytest.raises(InvalidInput, match="is not valid JSON") as refused:
        parse_json_text("--document", "{a: 1}")
    assert refused.value.field == "--document"


def test_pages_of_several_projects_merge_newest_first() -> None:
    class Stub:
        def __init__(self, pk: int) -> None:
            self.pk = pk

    first = Page(items=[Stub(9), Stub(4), Stub(2)], count=5, marker=None)
    second = Page(items=[Stub(8), Stub(7), Stub(1)], count=3, marker=None)

    merged = merge_pages([first, second], 3)  # type: ignore[list-item]

    assert [task.pk for task in merged.items] == [9, 8, 7]
    assert merged.count == 8
    assert merged.marker == f"{7:024x}"
