"""The legacy SDK's pure parts: DTO bodies and how answers become results or exceptions."""

from __future__ import annotations

import httpx
import pytest

from fleetbatch.sdk.legacy import (
    BatchTaskCreateInDTO,
    CommandDTO,
    NorthApiException,
    ObjectNode,
    QueryOneTaskOutDTO,
    TagDTO2,
)
from fleetbatch.sdk.legacy.client import _checked


def test_dto_bodies_keep_wire_names_and_leave_unset_fields_out() -> None:
    dto = BatchTaskCreateInDTO(
        taskName="t",
        taskType="DeviceCmd",
        timeout=10,
        param=ObjectNode(type="Broadcast", command=CommandDTO(serviceId="s", method="m")),
        tags=[TagDTO2(tagName="a", tagValue="b"), {"tagName": "c", "tagValue": None}],
    )
    assert dto.to_dict() == {
        "taskName": "t",
        "taskType": "DeviceCmd",
        "timeout": 10,
        "param": {"type": "Broadcast", "command": {"serviceId": "s", "method": "m"}},
        "tags": [{"tagName": "a", "tagValue": "b"}, {"tagName": "c"}],
    }
    view = QueryOneTaskOutDTO.from_json('{"taskId": "x", "status": "Complete", "unknown": 1}')
    assert (view.taskId, view.status, view.progress) == ("x", "Complete", None)


def test_success_is_the_raw_text_and_errors_raise_with_status_code_and_text() -> None:
    assert _checked(httpx.Response(200, text='{"taskID": "1"}')) == '{"taskID": "1"}'
    assert _checked(httpx.Response(204)) == ""
    # S003 answers some errors with HTTP 200: the error_code decides
    body = {"error_code": "105002", "error_desc": "The batch task name exists."}
    with pytest.raises(NorthApiException) as raised:
        _checked(httpx.Response(200, json=body))
    error = raised.value
    assert (error.httpStatus, error.error_code, error.error_desc) == (
        200,
        "105002",
        body["error_desc"],
    )
    with pytest.raises(NorthApiException) as raised:
        _checked(httpx.Response(502, text="bad gateway"))
    assert (raised.value.httpStatus, raised.value.error_code) == (502, "")
