"""Raw-HTTP helpers for the legacy dialect: login, authorized calls, error assertions."""

from __future__ import annotations

from typing import Any

import httpx

SEC = "/iocm/app/sec/v1.1.0"
BATCH = "/iocm/app/batchtask/v1.1.0"
CMD = "/iocm/app/cmd/v1.4.0"


async def login(client: httpx.AsyncClient, app_id: str, secret: str) -> str:
    """An access token for the app (form-encoded login, as the SDKs send it)."""
    response = await client.post(f"{SEC}/login", data={"appId": app_id, "secret": secret})
    assert response.status_code == 200, response.text
    token: str = response.json()["accessToken"]
    return token


def headers(app_id: str, token: str) -> dict[str, str]:
    """The headers every legacy call after login carries (spec §1.4)."""
    return {
        "app_key": app_id,
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
    }


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is the legacy error body with this HTTP status and code."""
    assert response.status_code == status, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert body["error_code"] == code, body
    assert isinstance(body["error_desc"], str)
    assert body["error_desc"]
    return body


def device_cmd(name: str, param: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A createBatchTask body for a DeviceCmd task (timeout 10 minutes unless given)."""
    body: dict[str, Any] = {
        "appId": None,
        "taskName": name,
        "taskType": "DeviceCmd",
        "timeout": 10,
        "param": {
            "command": {"serviceId": "svc", "method": "reboot", "paras": {"delay": 1}},
            **param,
        },
        "tags": None,
    }
    body.update(fields)
    return body
