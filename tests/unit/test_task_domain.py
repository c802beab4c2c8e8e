"""Batch-task domain rules: policy ranges, progress arithmetic, selectors, request ids, documents.

Pure and fast: no store, no event loop. Each refusal is checked by the field it names
(`InvalidInput.field`), never by its text.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetbatch.domain.documents import (
    DEFAULT_ASYNC_EXPIRE_S,
    MAX_ASYNC_EXPIRE_S,
    MAX_PARAS_BYTES,
    MAX_SHADOW_SERVICES,
    normalise_document,
)
from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import (
    MAX_RETRIES,
    MAX_RETRY_INTERVAL_S,
    MAX_SCHEDULE_AHEAD_MS,
    MAX_TARGET_ID,
    MAX_TASK_NAME,
    REGISTRY_TASK_TYPES,
    NewTask,
    Progress,
    Selector,
    SelectorKind,
    TaskPolicy,
    TaskType,
    after_failure,
    check_target,
    final_status,
    parse_request_id,
    request_id_for,
    should_abort,
)

NOW_MS = 1_700_000_000_000
DAY_S = 24 * 3600


def refusal(call: Any, *args: Any, **kwargs: Any) -> str:
    """The field an InvalidInput raised by `call(*args, **kwargs)` names."""
    with pytest.raises(InvalidInput) as raised:
        call(*args, **kwargs)
    return raised.value.field


# --- policy ------------------------------------------------------------------------------


def test_the_default_policy_is_valid_and_stores_as_an_empty_object() -> None:
    TaskPolicy().validate(NOW_MS)
    assert TaskPolicy().to_json() == {}
    assert TaskPolicy.from_json({}) == TaskPolicy()


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (TaskPolicy(schedule_at_ms=NOW_MS + MAX_SCHEDULE_AHEAD_MS + 1), "schedule_time"),
        (TaskPolicy(retry_count=-1), "retry_count"),
        (TaskPolicy(retry_count=MAX_RETRIES + 1), "retry_count"),
        (TaskPolicy(retry_count=True), "retry_count"),
        (TaskPolicy(retry_count=1.0), "retry_count"),  # type: ignore[arg-type]
        (TaskPolicy(retry_interval_s=-1), "retry_interval"),
        (TaskPolicy(retry_interval_s=MAX_RETRY_INTERVAL_S + 1), "retry_interval"),
        (TaskPolicy(max_retransmit=-1), "max_retransmit"),
        (TaskPolicy(max_retransmit=4), "max_retransmit"),
        (TaskPolicy(timeout_s=0), "timeout"),
        (TaskPolicy(timeout_s=30 * DAY_S + 1), "timeout"),
        (TaskPolicy(subtask_timeout_s=0), "subtask_timeout"),
        (TaskPolicy(subtask_timeout_s=-0.5), "subtask_timeout"),
        (TaskPolicy(subtask_timeout_s=7 * DAY_S + 0.001), "subtask_timeout"),
        (TaskPolicy(subtask_timeout_s=float("inf")), "subtask_timeout"),
        (TaskPolicy(subtask_timeout_s=float("nan")), "subtask_timeout"),
        (TaskPolicy(max_concurrency=0), "max_concurrency"),
        (TaskPolicy(max_concurrency=1_000_001), "max_concurrency"),
        (TaskPolicy(rate_per_min=0), "rate_per_min"),
        (TaskPolicy(rate_per_min=100_000_001), "rate_per_min"),
        (TaskPolicy(abort_min_finished=5), "abort"),
        (TaskPolicy(abort_fail_ratio=0.5), "abort"),
        (TaskPolicy(abort_min_finished=0, abort_fail_ratio=0.5), "abort.min_finished"),
        (TaskPolicy(abort_min_finished=5, abort_fail_ratio=1.0), "abort.fail_ratio"),
        (TaskPolicy(abort_min_finished=5, abort_fail_ratio=-0.01), "abort.fail_ratio"),
        (TaskPolicy(abort_min_finished=5, abort_fail_ratio=float("nan")), "abort.fail_ratio"),
    ],
)
def test_a_policy_out_of_range_names_its_field(policy: TaskPolicy, field: str) -> None:
    assert refusal(policy.validate, NOW_MS) == field


@pytest.mark.parametrize(
    "policy",
    [
        TaskPolicy(schedule_at_ms=NOW_MS + MAX_SCHEDULE_AHEAD_MS),
        TaskPolicy(schedule_at_ms=NOW_MS - 1),  # already due: starts at once
        TaskPolicy(retry_count=MAX_RETRIES, retry_interval_s=MAX_RETRY_INTERVAL_S),
        TaskPolicy(max_retransmit=3),
        TaskPolicy(timeout_s=1),
        TaskPolicy(timeout_s=30 * DAY_S),
        TaskPolicy(subtask_timeout_s=0.001),
        TaskPolicy(subtask_timeout_s=7 * DAY_S),
        TaskPolicy(max_concurrency=1, rate_per_min=1),
        TaskPolicy(abort_min_finished=1, abort_fail_ratio=0.0),
        TaskPolicy(abort_min_finished=100_000_000, abort_fail_ratio=0.999),
    ],
)
def test_a_policy_at_the_edges_of_its_ranges_is_valid(policy: TaskPolicy) -> None:
    policy.validate(NOW_MS)


policies = st.builds(
    TaskPolicy,
    schedule_at_ms=st.none() | st.integers(0, NOW_MS + MAX_SCHEDULE_AHEAD_MS),
    retry_count=st.integers(0, MAX_RETRIES),
    retry_interval_s=st.integers(0, MAX_RETRY_INTERVAL_S),
    max_retransmit=st.integers(0, 3),
    timeout_s=st.none() | st.integers(1, 30 * DAY_S),
    subtask_timeout_s=st.none()
    | st.floats(min_value=0.001, max_value=7 * DAY_S, allow_nan=False, allow_infinity=False),
    max_concurrency=st.none() | st.integers(1, 1_000_000),
    rate_per_min=st.none() | st.integers(1, 100_000_000),
).flatmap(
    lambda policy: st.one_of(
        st.just(policy),
        st.builds(
            lambda n, ratio: TaskPolicy(
                **{**policy.to_json(), "abort_min_finished": n, "abort_fail_ratio": ratio}
            ),
            st.integers(1, 100_000_000),
            st.just(0.0) | st.floats(min_value=0, max_value=0.999, allow_nan=False),
        ),
    )
)


@given(policies)
def test_a_valid_policy_survives_being_stored_and_read_back(policy: TaskPolicy) -> None:
    policy.validate(NOW_MS)
    stored = json.loads(json.dumps(policy.to_json()))
    again = TaskPolicy.from_json(stored)
    assert again == policy
    again.validate(NOW_MS)


def test_an_abort_rule_on_any_failure_is_kept_when_stored() -> None:
    # a fail ratio of 0 is a rule ("abort on the first failure"), not an unset value
    policy = TaskPolicy(abort_min_finished=1, abort_fail_ratio=0.0)
    assert TaskPolicy.from_json(policy.to_json()) == policy
    assert should_abort(
        Progress(total=3, success=0, fail=1), TaskPolicy.from_json(policy.to_json())
    )


def test_a_stored_policy_with_unknown_or_misnamed_keys_is_refused() -> None:
    assert refusal(TaskPolicy.from_json, {"retries": 2}) == "policy"
    assert refusal(TaskPolicy.from_json, {"retry_count": 1, "colour": "red"}) == "policy"


@pytest.mark.parametrize(
    ("retry_count", "max_retransmit", "budget"),
    [(0, 0, 0), (3, 0, 3), (0, 2, 2), (2, 3, 3), (5, 1, 5)],
)
def test_the_retry_budget_is_the_larger_of_retries_and_retransmits(
    retry_count: int, max_retransmit: int, budget: int
) -> None:
    policy = TaskPolicy(retry_count=retry_count, max_retransmit=max_retransmit)
    assert policy.retry_budget == budget


@given(
    failures=st.integers(0, 10),
    retry_count=st.integers(0, MAX_RETRIES),
    max_retransmit=st.integers(0, 3),
    interval_s=st.integers(0, MAX_RETRY_INTERVAL_S),
)
def test_a_failure_is_retried_until_the_budget_is_spent(
    failures: int, retry_count: int, max_retransmit: int, interval_s: int
) -> None:
    policy = TaskPolicy(
        retry_count=retry_count, max_retransmit=max_retransmit, retry_interval_s=interval_s
    )
    retried, due = after_failure(failures, policy, NOW_MS)
    assert retried == (failures < max(retry_count, max_retransmit))
    assert due == (NOW_MS + interval_s * 1000 if retried else NOW_MS)


def test_no_budget_means_no_retry_and_a_budget_of_two_means_three_attempts() -> None:
    assert after_failure(0, TaskPolicy(), NOW_MS) == (False, NOW_MS)
    policy = TaskPolicy(retry_count=2, retry_interval_s=30)
    attempts = [after_failure(n, policy, NOW_MS) for n in range(3)]
    assert attempts == [(True, NOW_MS + 30_000), (True, NOW_MS + 30_000), (False, NOW_MS)]


# --- progress and the task's fate --------------------------------------------------------


def test_progress_groups_states_into_finished_failed_and_unfinished() -> None:
    progress = Progress(
        total=28,
        waiting=1,
        processing=2,
        success=3,
        fail=4,
        fail_wait_retry=5,
        timeout=6,
        stopped=7,
    )
    assert progress.finished == 3 + 4 + 6
    assert progress.failed == 4 + 6
    assert progress.unfinished == 1 + 2 + 5
    assert [progress.count(status) for status in SubtaskStatus] == [1, 2, 3, 4, 5, 6, 7]
    assert progress.to_json() == {
        "total": 28,
        "waiting": 1,
        "processing": 2,
        "success": 3,
        "fail": 4,
        "fail_wait_retry": 5,
        "timeout": 6,
        "stopped": 7,
        "removed": 0,
    }


@pytest.mark.parametrize(
    ("progress", "status"),
    [
        (Progress(), TaskStatus.FAIL),
        (Progress(total=3, success=3), TaskStatus.SUCCESS),
        (Progress(total=3, success=2, fail=1), TaskStatus.PARTIAL_SUCCESS),
        (Progress(total=3, success=1, stopped=2), TaskStatus.PARTIAL_SUCCESS),
        (Progress(total=3, fail=1, timeout=2), TaskStatus.FAIL),
        (Progress(total=2, stopped=2), TaskStatus.FAIL),
    ],
)
def test_the_final_status_follows_the_successes(progress: Progress, status: TaskStatus) -> None:
    assert final_status(progress) is status


@pytest.mark.parametrize(
    ("progress", "aborts"),
    [
        (Progress(total=10, fail=3), False),  # 3 finished: below the minimum of 4
        (Progress(total=10, fail=3, timeout=1), True),  # 4 of 4 failed
        (Progress(total=10, success=2, fail=2), False),  # exactly half: not above it
        (Progress(total=10, success=1, fail=2, timeout=1), True),  # 3 of 4
        (Progress(total=10, success=1, fail=2, stopped=5), False),  # stopped ones do not count
        (Progress(total=10, success=4), False),
    ],
)
def test_the_abort_rule_needs_enough_finished_and_a_share_above_the_ratio(
    progress: Progress, aborts: bool
) -> None:
    policy = TaskPolicy(abort_min_finished=4, abort_fail_ratio=0.5)
    assert should_abort(progress, policy) is aborts


def test_without_an_abort_rule_nothing_aborts() -> None:
    assert not should_abort(Progress(total=5, fail=5), TaskPolicy())


@given(
    success=st.integers(0, 50),
    fail=st.integers(0, 50),
    timeout=st.integers(0, 50),
    stopped=st.integers(0, 50),
    min_finished=st.integers(1, 60),
    ratio=st.floats(min_value=0, max_value=0.99),
)
def test_the_abort_rule_is_the_failed_share_of_finished_subtasks(
    success: int, fail: int, timeout: int, stopped: int, min_finished: int, ratio: float
) -> None:
    progress = Progress(
        total=success + fail + timeout + stopped,
        success=success,
        fail=fail,
        timeout=timeout,
        stopped=stopped,
    )
    policy = TaskPolicy(abort_min_finished=min_finished, abort_fail_ratio=ratio)
    finished = success + fail + timeout
    expected = finished >= min_finished and (fail + timeout) / finished > ratio
    assert should_abort(progress, policy) is expected


# --- selectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        (Selector(SelectorKind.GROUPS), "group_ids"),
        (Selector(SelectorKind.GROUP_NAMES), "group_names"),
        (Selector(SelectorKind.PRODUCT), "product_id"),
        (Selector(SelectorKind.PRODUCT, product_id=""), "product_id"),
        (Selector(SelectorKind.DEVICE_TYPE, device_type="Meter", model="m1"), "device_type"),
        (Selector(SelectorKind.DEVICE_TYPE, manufacturer_id="acme", model="m1"), "device_type"),
        (
            Selector(SelectorKind.DEVICE_TYPE, device_type="Meter", manufacturer_id="a"),
            "device_type",
        ),
        (Selector(SelectorKind.AREA), "area"),
    ],
)
def test_a_selector_without_what_its_kind_needs_names_the_field(
    selector: Selector, field: str
) -> None:
    assert refusal(selector.validate) == field


selectors = st.one_of(
    st.just(Selector(SelectorKind.ALL)),
    st.builds(
        lambda ids: Selector(SelectorKind.GROUPS, group_ids=tuple(ids)),
        st.lists(st.uuids().map(str), min_size=1, max_size=4),
    ),
    st.builds(
        lambda names: Selector(SelectorKind.GROUP_NAMES, group_names=tuple(names)),
        st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4),
    ),
    st.builds(lambda p: Selector(SelectorKind.PRODUCT, product_id=p), st.text(min_size=1)),
    st.builds(
        lambda t, m, mo: Selector(
            SelectorKind.DEVICE_TYPE, device_type=t, manufacturer_id=m, model=mo
        ),
        st.text(min_size=1),
        st.text(min_size=1),
        st.text(min_size=1),
    ),
    st.builds(lambda a: Selector(SelectorKind.AREA, area=a), st.text(min_size=1)),
)


@given(selectors)
def test_a_selector_survives_being_stored_and_read_back(selector: Selector) -> None:
    selector.validate()
    stored = json.loads(json.dumps(selector.to_json()))
    assert stored["kind"] == selector.kind.value
    assert Selector.from_json(stored) == selector


def test_a_selector_stores_only_what_it_holds() -> None:
    assert Selector(SelectorKind.ALL).to_json() == {"kind": "all"}
    assert Selector(SelectorKind.AREA, area="north").to_json() == {"kind": "area", "area": "north"}
    resolved = Selector(SelectorKind.GROUP_NAMES, ("g-1", "g-2"), ("top",))
    assert resolved.to_json() == {
        "kind": "group_names",
        "group_ids": ["g-1", "g-2"],
        "group_names": ["top"],
    }


# --- request ids -------------------------------------------------------------------------


@given(subtask_id=st.integers(0, 2**63 - 1), attempt=st.integers(0, 2**32 - 1))
def test_a_request_id_names_its_subtask_and_attempt(subtask_id: int, attempt: int) -> None:
    request_id = request_id_for(subtask_id, attempt)
    assert len(request_id) == 32
    assert parse_request_id(request_id) == (subtask_id, attempt)


@given(st.text(max_size=40) | st.text(alphabet="0123456789abcdefABCDEF +-_ x", max_size=34))
def test_only_the_engines_own_request_ids_parse(text: str) -> None:
    # anything else (another client's id, a padded or signed one) matches no attempt
    parsed = parse_request_id(text)
    if parsed is not None:
        assert request_id_for(*parsed) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1234",
        "0" * 31,
        "0" * 33,
        "g" * 32,
        " " + "0" * 31,
        "+" + "0" * 31,
        "-" + "0" * 31,
        "0" * 22 + "_1" + "0" * 8,
        "0" * 23 + "A" + "0" * 8,
        "ae2bc81c-7b36-4dbd-9c13-a0a8a7fbb2fe",
    ],
)
def test_foreign_request_ids_do_not_parse(text: str) -> None:
    assert parse_request_id(text) is None


# --- new tasks and targets ---------------------------------------------------------------


def a_task(**changes: Any) -> NewTask:
    values: dict[str, Any] = {
        "app_id": "app",
        "task_type": TaskType.CREATE_COMMANDS,
        "name": "reboot all",
        "document": {"paras": {}},
    }
    values.update(changes)
    return NewTask(**values)


def test_a_well_formed_task_is_valid() -> None:
    a_task().validate(NOW_MS)
    a_task(name="x" * MAX_TASK_NAME, selector=Selector(SelectorKind.ALL)).validate(NOW_MS)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": ""}, "task_name"),
        ({"name": "x" * (MAX_TASK_NAME + 1)}, "task_name"),
        ({"name": None}, "task_name"),
        ({"selector": Selector(SelectorKind.PRODUCT)}, "product_id"),
        ({"policy": TaskPolicy(retry_count=9)}, "retry_count"),
        ({"policy": TaskPolicy(abort_min_finished=3)}, "abort"),
    ],
)
def test_a_bad_new_task_names_its_first_bad_field(changes: dict[str, Any], field: str) -> None:
    assert refusal(a_task(**changes).validate, NOW_MS) == field


def test_with_document_replaces_only_the_document() -> None:
    task = a_task(tags={"k": "v"})
    changed = task.with_document({"paras": {"a": 1}})
    assert changed.document == {"paras": {"a": 1}}
    assert changed.tags == task.tags
    assert changed.name == task.name


@pytest.mark.parametrize("target", ["", "x" * (MAX_TARGET_ID + 1), 7, None])
def test_a_target_that_cannot_name_a_device_is_refused(target: Any) -> None:
    assert refusal(check_target, target) == "targets"


def test_a_target_of_any_length_up_to_the_limit_is_accepted() -> None:
    check_target("d")
    check_target("x" * MAX_TARGET_ID)


# --- documents ---------------------------------------------------------------------------


def test_a_command_document_keeps_its_fields() -> None:
    document = {"service_id": "svc", "command_name": "reboot", "paras": {"delay": 1}}
    assert normalise_document(TaskType.CREATE_COMMANDS, document) == document
    assert normalise_document(TaskType.CREATE_COMMANDS, {"paras": {}}) == {"paras": {}}


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ([], "document"),
        ("paras", "document"),
        (None, "document.paras"),
        ({}, "document.paras"),
        ({"paras": [1, 2]}, "document.paras"),
        ({"paras": {"blob": "x" * MAX_PARAS_BYTES}}, "document.paras"),
        ({"paras": {}, "service_id": ""}, "document.service_id"),
        ({"paras": {}, "service_id": "s" * 65}, "document.service_id"),
        ({"paras": {}, "service_id": 5}, "document.service_id"),
        ({"paras": {}, "command_name": "c" * 129}, "document.command_name"),
        ({"paras": {}, "expire_time": 10}, "document.expire_time"),
        ({"paras": {}, "zebra": 1, "apple": 2}, "document.apple"),
    ],
)
def test_a_bad_command_document_names_its_field(document: Any, field: str) -> None:
    assert refusal(normalise_document, TaskType.CREATE_COMMANDS, document) == field


def test_an_async_command_document_gets_its_defaults() -> None:
    normalised = normalise_document(TaskType.CREATE_ASYNC_COMMANDS, {"paras": {"a": 1}})
    assert normalised == {
        "paras": {"a": 1},
        "send_strategy": "delay",
        "expire_time": DEFAULT_ASYNC_EXPIRE_S,
    }
    given_all = {
        "service_id": "svc",
        "command_name": "c",
        "paras": {},
        "send_strategy": "immediately",
        "expire_time": 0,
    }
    assert normalise_document(TaskType.CREATE_ASYNC_COMMANDS, given_all) == given_all
    edge = {"paras": {}, "expire_time": MAX_ASYNC_EXPIRE_S}
    assert normalise_document(TaskType.CREATE_ASYNC_COMMANDS, edge)["expire_time"] == (
        MAX_ASYNC_EXPIRE_S
    )


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({}, "document.paras"),
        ({"paras": {}, "send_strategy": "later"}, "document.send_strategy"),
        ({"paras": {}, "expire_time": -1}, "document.expire_time"),
        ({"paras": {}, "expire_time": MAX_ASYNC_EXPIRE_S + 1}, "document.expire_time"),
        ({"paras": {}, "expire_time": "60"}, "document.expire_time"),
        ({"paras": {}, "expire_time": True}, "document.expire_time"),
        ({"paras": {}, "expire_time": 1.5}, "document.expire_time"),
        ({"paras": {}, "ttl": 5}, "document.ttl"),
        ({"paras": {}, "service_id": ""}, "document.service_id"),
    ],
)
def test_a_bad_async_command_document_names_its_field(document: Any, field: str) -> None:
    assert refusal(normalise_document, TaskType.CREATE_ASYNC_COMMANDS, document) == field


def test_a_message_document_gets_its_defaults_and_keeps_its_options() -> None:
    assert normalise_document(TaskType.CREATE_MESSAGES, {"message": "hello"}) == {
        "message": "hello",
        "encoding": "none",
        "payload_format": "standard",
    }
    full = {
        "message_id": "m1",
        "name": "greeting",
        "message": "aGVsbG8=",
        "encoding": "base64",
        "payload_format": "raw",
        "topic": "greetings",
        "properties": {"correlation_data": "c"},
        "ttl": 1440,
    }
    assert normalise_document(TaskType.CREATE_MESSAGES, full) == full
    structured = {"message": {"temperature": 21}, "topic_full_name": "a/b", "ttl": 0}
    assert normalise_document(TaskType.CREATE_MESSAGES, structured) == {
        **structured,
        "encoding": "none",
        "payload_format": "standard",
    }


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({}, "document.message"),
        ({"message": None}, "document.message"),
        ({"message": "x" * (MAX_PARAS_BYTES + 1)}, "document.message"),
        ({"message": {"a": 1}, "encoding": "base64"}, "document.message"),
        ({"message": "not base64!", "encoding": "base64"}, "document.message"),
        ({"message": "m", "encoding": "hex"}, "document.encoding"),
        ({"message": "m", "payload_format": "xml"}, "document.payload_format"),
        ({"message": "m", "topic": "a", "topic_full_name": "b"}, "document.topic"),
        ({"message": "m", "topic": "a/#"}, "document.topic"),
        ({"message": "m", "topic_full_name": "a/+/b"}, "document.topic_full_name"),
        ({"message": "m", "topic": ""}, "document.topic"),
        ({"message": "m", "message_id": "i" * 101}, "document.message_id"),
        ({"message": "m", "name": "n" * 129}, "document.name"),
        ({"message": "m", "properties": ["a"]}, "document.properties"),
        ({"message": "m", "ttl": -1}, "document.ttl"),
        ({"message": "m", "ttl": 1441}, "document.ttl"),
        ({"message": "m", "ttl": False}, "document.ttl"),
        ({"message": "m", "qos": 1}, "document.qos"),
    ],
)
def test_a_bad_message_document_names_its_field(document: Any, field: str) -> None:
    assert refusal(normalise_document, TaskType.CREATE_MESSAGES, document) == field


def test_a_shadow_document_keeps_its_services_in_order() -> None:
    shadow = [
        {"service_id": "power", "desired": {"on": True}},
        {"service_id": "light", "desired": {"level": 3, "colour": "warm"}},
    ]
    assert normalise_document(TaskType.UPDATE_DEVICE_SHADOWS, {"shadow": shadow}) == {
        "shadow": shadow
    }
    most = [{"service_id": f"s{n}", "desired": {}} for n in range(MAX_SHADOW_SERVICES)]
    assert normalise_document(TaskType.UPDATE_DEVICE_SHADOWS, {"shadow": most}) == {"shadow": most}


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({}, "document.shadow"),
        ({"shadow": []}, "document.shadow"),
        ({"shadow": {"service_id": "s"}}, "document.shadow"),
        ({"shadow": ["power"]}, "document.shadow[0]"),
        ({"shadow": [{"desired": {}}]}, "document.shadow[0].service_id"),
        ({"shadow": [{"service_id": "s" * 65, "desired": {}}]}, "document.shadow[0].service_id"),
        ({"shadow": [{"service_id": "s"}]}, "document.shadow[0].desired"),
        ({"shadow": [{"service_id": "s", "desired": [1]}]}, "document.shadow[0].desired"),
        (
            {
                "shadow": [
                    {"service_id": "a", "desired": {}},
                    {"service_id": "b", "desired": {"": 1}},
                ]
            },
            "document.shadow[1].desired",
        ),
        ({"shadow": [{"service_id": "s", "desired": {"a.b": 1}}]}, "document.shadow[0].desired"),
        ({"shadow": [{"service_id": "s", "desired": {"$v": 1}}]}, "document.shadow[0].desired"),
        (
            {"shadow": [{"service_id": "s", "desired": {}}, {"service_id": "s", "desired": {}}]},
            "document.shadow[1].service_id",
        ),
        (
            {"shadow": [{"service_id": f"s{n}", "desired": {}} for n in range(6)]},
            "document.shadow",
        ),
        (
            {"shadow": [{"service_id": "s", "desired": {"blob": "x" * 10 * 1024}}]},
            "document.shadow",
        ),
        ({"shadow": [{"service_id": "s", "desired": {}}], "version": 1}, "document.version"),
    ],
)
def test_a_bad_shadow_document_names_its_field(document: Any, field: str) -> None:
    assert refusal(normalise_document, TaskType.UPDATE_DEVICE_SHADOWS, document) == field


@pytest.mark.parametrize("task_type", sorted(REGISTRY_TASK_TYPES))
def test_registry_tasks_take_no_document(task_type: TaskType) -> None:
    assert normalise_document(task_type, None) == {}
    assert normalise_document(task_type, {}) == {}
    assert refusal(normalise_document, task_type, {"paras": {}}) == "document"
    assert refusal(normalise_document, task_type, "x") == "document"


def test_every_task_type_has_a_document_rule() -> None:
    minimal: dict[TaskType, Any] = {
        TaskType.CREATE_COMMANDS: {"paras": {}},
        TaskType.CREATE_ASYNC_COMMANDS: {"paras": {}},
        TaskType.CREATE_MESSAGES: {"message": "m"},
        TaskType.UPDATE_DEVICE_SHADOWS: {"shadow": [{"service_id": "s", "desired": {}}]},
    }
    for task_type in TaskType:
        document = minimal.get(task_type, {})
        assert isinstance(normalise_document(task_type, document), dict)
