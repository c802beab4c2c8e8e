"""The legacy dialect's pure parts: status words, permillage, counters, the error tables."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from hypothesis import given
from hypothesis import strategies as st

from fleetbatch.api.legacy.common import LegacyRoute
from fleetbatch.api.legacy.errors import FAMILIES, Api, error_body, fail, translate
from fleetbatch.domain import errors
from fleetbatch.domain import legacy as L
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import Progress

S = SubtaskStatus


def test_every_internal_state_has_a_legacy_word() -> None:
    assert set(L.TASK_STATUS) == set(TaskStatus)
    assert set(L.TASK_STATUS.values()) == {"Pending", "Running", "Complete", "Timeout"}
    assert set(L.SUBTASK_STATUS) == set(SubtaskStatus)
    assert set(L.SUBTASK_STATUS.values()) == {"Pending", "WaitResult", "Success", "Fail", "Timeout"}


def test_status_filters_stand_for_their_internal_states() -> None:
    assert L.statuses_for("WaitResult") == (S.FAIL_WAIT_RETRY, S.PROCESSING)
    assert L.statuses_for("Fail") == (S.FAIL, S.STOPPED)
    assert L.statuses_for("Pending") == (S.WAITING,)
    assert L.statuses_for("pending") is None
    assert L.statuses_for("Expired") is None


@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_permillage_is_rounded_down_and_bounded(part: int, whole: int) -> None:
    value = L.permillage(part, whole)
    assert 0 <= value <= 1000
    if whole and part <= whole:
        assert value == part * 1000 // whole
        assert value * whole <= part * 1000 < (value + 1) * whole


def test_counters_follow_s000() -> None:
    progress = Progress(total=7, success=3, fail=1, timeout=1, processing=1, stopped=1)
    assert L.task_counts(progress) == {
        "totalCnt": 7,
        "successCnt": 3,
        "failCnt": 1,
        "timeoutCnt": 1,
        "expiredCnt": 1,
        "completeCnt": 5,
        "progress": 857,  # 6 of 7 done, rounded down
        "successRate": 428,
    }
    assert L.task_counts(Progress())["progress"] == 0


def test_every_error_family_has_an_answer_in_every_call_family() -> None:
    families = {
        errors.FleetbatchError, errors.InvalidInput, errors.NotFound, errors.Conflict,
        errors.AlreadyExists, errors.LimitExceeded, errors.AuthFailed, errors.Unavailable,
    }  # fmt: skip
    for api in Api:
        assert set(FAMILIES[api]) == families, api


def test_create_answers_as_s003_says() -> None:
    name = translate(Api.CREATE, errors.AlreadyExists("task name", "x"))
    tag = translate(Api.CREATE, errors.AlreadyExists("task tag", "a=b"))
    busy = translate(Api.CREATE, errors.LimitExceeded("busy"))
    missing = translate(Api.CREATE, errors.NotFound("group", "g"))
    assert [(e.status, e.code) for e in (name, tag, busy, missing)] == [
        (200, "105002"),
        (400, "105201"),
        (200, "105001"),
        (200, "101001"),
    ]
    assert name.desc == "The batch task name exists."
    # the texts differ per seed page
    assert fail(Api.CREATE, 403, "100203").desc == "The application does not exist."
    assert fail(Api.QUERY, 403, "100203").desc == "The application is not existed."


def test_gateway_codes_also_carry_resultcode() -> None:
    assert error_body("1010005", "x") == {
        "error_code": "1010005",
        "error_desc": "x",
        "resultcode": "1010005",
        "resultmsg": "x",
    }
    assert error_body("100022", "y") == {"error_code": "100022", "error_desc": "y"}


async def test_an_unexpected_failure_is_500_50252() -> None:
    router = APIRouter(route_class=LegacyRoute)

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    app = FastAPI()
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"error_code": "50252", "error_desc": "Internal server error."}


@pytest.mark.parametrize("code", ["100019", "100022", "105005", "1010009", "100217"])
def test_query_codes_use_the_s000_texts(code: str) -> None:
    assert fail(Api.QUERY, 400, code).desc != code


def test_openapi_describes_every_legacy_request_body_by_its_wire_names() -> None:
    from fleetbatch.api.legacy import legacy_router

    app = FastAPI()
    app.include_router(legacy_router())
    paths = app.openapi()["paths"]

    def body(path: str, method: str, media_type: str = "application/json") -> dict[str, Any]:
        request = paths[path][method]["requestBody"]
        assert request["required"] is True
        schema: dict[str, Any] = request["content"][media_type]["schema"]
        assert "$ref" not in json.dumps(schema)
        return schema

    create = body("/iocm/app/batchtask/v1.1.0/tasks", "post")
    assert set(create["required"]) == {"taskName", "taskType", "timeout", "param"}
    assert create["properties"]["timeout"]["minimum"] == L.MIN_TIMEOUT_MIN
    assert create["properties"]["timeout"]["maximum"] == L.MAX_TIMEOUT_MIN
    tag = create["properties"]["tags"]["anyOf"][0]["items"]["properties"]
    assert set(tag) == {"tagName", "tagValue"}
    param = create["properties"]["param"]["properties"]
    assert {"type", "deviceList", "groupList", "command", "callbackUrl", "maxRetransmit"} <= set(
        param
    )
    assert set(param["command"]["properties"]) == {"serviceId", "method", "paras"}
    assert set(param["type"]["enum"]) == L.PARAM_TYPES
    assert create["properties"]["taskType"]["enum"] == ["DeviceCmd"]
    login = body("/iocm/app/sec/v1.1.0/login", "post", "application/x-www-form-urlencoded")
    assert set(login["required"]) == {"appId", "secret"}
    refresh = body("/iocm/app/sec/v1.1.0/refreshToken", "post")
    assert set(refresh["required"]) == {"appId", "secret", "refreshToken"}
    assert body("/iocm/app/sec/v1.1.0/logout", "post")["required"] == ["accessToken"]
    command = body("/iocm/app/cmd/v1.4.0/deviceCommands", "post")
    assert {"deviceId", "command", "callbackUrl", "expireTime", "maxRetransmit"} == set(
        command["properties"]
    )
    cancel = body("/iocm/app/cmd/v1.4.0/deviceCommands/{command_id}", "put")
    assert cancel["properties"]["status"]["const"] == "CANCELED"
    cancel_task = body("/iocm/app/cmd/v1.4.0/deviceCommandCancelTasks", "post")
    assert cancel_task["properties"]["deviceId"]["maxLength"] == 64
    # the GETs take no body
    assert "requestBody" not in paths["/iocm/app/batchtask/v1.1.0/taskDetails"]["get"]
