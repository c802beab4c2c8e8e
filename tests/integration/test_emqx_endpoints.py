"""The EMQX-shaped HTTP endpoints (external-broker mode), on a real store: SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from fleetbatch.api import create_app
from fleetbatch.api.emqx import router
from fleetbatch.devices.auth import make_client_id, sign_password
from fleetbatch.domain.registry import NewDevice
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from support.broker import plain_broker_channel

PLATFORM_PASSWORD = "platform-secret-0123"
BEARER = {"Authorization": f"Bearer {PLATFORM_PASSWORD}"}
STALE_HOUR = "2020010100"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings, with the platform's broker account configured."""
    return settings.model_copy(update={"broker_password": SecretStr(PLATFORM_PASSWORD)})


@dataclass
class Fleet:
    project_id: str
    device_id: str
    secret: str
    other_device_id: str


@dataclass
class RecordingSink:
    """Stands in for the presence recorder: keeps what it is told."""

    changes: list[tuple[str, bool, int]]

    def record(self, device_id: str, online: bool, at_ms: int) -> None:
        self.changes.append((device_id, online, at_ms))


def emqx_app(runtime: Runtime) -> FastAPI:
    app = create_app(runtime)
    if not any(getattr(route, "path", "").startswith("/emqx/") for route in app.routes):
        app.include_router(router)
    return app


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    return emqx_app(runtime)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fleetbatch") as client:
        yield client


@pytest.fixture
async def fleet(runtime: Runtime) -> Fleet:
    registry = runtime.registry
    app = await registry.apps.create("fleet")
    product = await registry.products.default(app.app_id)
    device = await registry.devices.create(app.app_id, product.product_id, NewDevice("meter-1"))
    other = await registry.devices.create(app.app_id, product.product_id, NewDevice("meter-2"))
    return Fleet(app.project_id, device.device_id, device.secret, other.device_id)


def current_hour(runtime: Runtime) -> str:
    return datetime.fromtimestamp(runtime.clock.now_ms() / 1000, UTC).strftime("%Y%m%d%H")


def credentials(device_id: str, secret: str, hour: str, sign_type: str) -> dict[str, str]:
    return {
        "clientid": make_client_id(device_id, hour, sign_type),
        "username": device_id,
        "password": sign_password(secret, hour),
        "peerhost": "10.0.0.7",
    }


async def auth(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post("/emqx/auth", json=body, headers=BEARER)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def acl(http: httpx.AsyncClient, device_id: str, action: str, topic: str) -> str:
    body = {
        "clientid": make_client_id(device_id, "2024061503"),
        "username": device_id,
        "topic": topic,
        "action": action,
    }
    response = await http.post("/emqx/acl", json=body, headers=BEARER)
    assert response.status_code == 200
    result: str = response.json()["result"]
    return result


@pytest.mark.parametrize("sign_type", ["0", "1"])
async def test_a_device_signing_with_its_secret_is_allowed(
    http: httpx.AsyncClient, runtime: Runtime, fleet: Fleet, sign_type: str
) -> None:
    body = credentials(fleet.device_id, fleet.secret, current_hour(runtime), sign_type)

    assert await auth(http, body) == {"result": "allow", "is_superuser": False}


async def test_wrong_password_unknown_device_and_foreign_user_name_are_denied(
    http: httpx.AsyncClient, runtime: Runtime, fleet: Fleet
) -> None:
    hour = current_hour(runtime)
    good = credentials(fleet.device_id, fleet.secret, hour, "1")

    wrong_password = {**good, "password": sign_password(fleet.secret + "x", hour)}
    swapped = {**good, "password": sign_password(hour, fleet.secret)}  # key and message swapped
    unknown = credentials(fleet.device_id + "9", fleet.secret, hour, "1")
    foreign_user = {**good, "username": fleet.other_device_id}
    for body in (wrong_password, swapped, unknown, foreign_user):
        assert await auth(http, body) == {"result": "deny"}


async def test_a_stale_hour_is_denied_only_when_the_device_asked_for_the_check(
    http: httpx.AsyncClient, fleet: Fleet
) -> None:
    checked = credentials(fleet.device_id, fleet.secret, STALE_HOUR, "1")
    unchecked = credentials(fleet.device_id, fleet.secret, STALE_HOUR, "0")

    assert await auth(http, checked) == {"result": "deny"}
    assert (await auth(http, unchecked))["result"] == "allow"


async def test_a_frozen_device_is_denied_until_unfrozen(
    http: httpx.AsyncClient, runtime: Runtime, fleet: Fleet
) -> None:
    body = credentials(fleet.device_id, fleet.secret, current_hour(runtime), "1")

    await runtime.registry.devices.freeze(fleet.project_id, fleet.device_id)
    assert await auth(http, body) == {"result": "deny"}
    await runtime.registry.devices.unfreeze(fleet.project_id, fleet.device_id)
    assert (await auth(http, body))["result"] == "allow"


async def test_the_platform_account_is_a_superuser_with_its_password_only(
    http: httpx.AsyncClient, runtime: Runtime
) -> None:
    user = runtime.settings.broker_username
    platform = {"clientid": "fleetbatch-node-1", "username": user, "password": PLATFORM_PASSWORD}

    assert await auth(http, platform) == {"result": "allow", "is_superuser": True}
    assert await auth(http, {**platform, "password": PLATFORM_PASSWORD + "x"}) == {"result": "deny"}
    assert await auth(http, {**platform, "password": ""}) == {"result": "deny"}


async def test_without_a_configured_password_the_endpoints_serve_nobody(
    settings: Settings, fleet: Fleet
) -> None:
    unset = settings.model_copy(update={"broker_password": None})
    async with await Runtime.open(unset) as runtime:
        transport = httpx.ASGITransport(app=emqx_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://fb") as http:
            device = credentials(fleet.device_id, fleet.secret, current_hour(runtime), "1")
            answers = [
                await http.post("/emqx/auth", json=device),
                await http.post("/emqx/acl", json={**device, "topic": "x", "action": "publish"}),
                await http.post(
                    "/emqx/events",
                    json={"event": "client.connected", "clientid": device["clientid"]},
                ),
            ]

    # EMQX takes a non-200 answer as "ignore": with no other source, the device is refused
    assert [answer.status_code for answer in answers] == [503, 503, 503]
    assert "FLEETBATCH_BROKER_PASSWORD" in answers[0].json()["detail"]


async def test_form_bodies_are_read_and_unreadable_bodies_are_denied_not_errors(
    http: httpx.AsyncClient, runtime: Runtime, fleet: Fleet
) -> None:
    form = credentials(fleet.device_id, fleet.secret, current_hour(runtime), "1")
    by_form = await http.post("/emqx/auth", data=form, headers=BEARER)
    assert by_form.status_code == 200
    assert by_form.json()["result"] == "allow"

    unreadable: list[dict[str, Any]] = [
        {"content": b"{not json"},
        {"content": b""},
        {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
        {"json": ["a", "list"]},
        {"json": {"clientid": 5, "username": None, "password": []}},
        {"json": {"clientid": "x_0_1_2024061503", "username": "x"}},
        {
            "content": b"clientid=%ZZ&username",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
        },
    ]
    for request in unreadable:
        headers = {**BEARER, **request.pop("headers", {})}
        for path in ("/emqx/auth", "/emqx/acl"):
            response = await http.post(path, headers=headers, **request)
            assert response.status_code == 200, (path, request)
            assert response.json() == {"result": "deny"}, (path, request)


async def test_a_device_publishes_and_subscribes_only_under_its_own_prefix(
    http: httpx.AsyncClient, fleet: Fleet
) -> None:
    own = f"$oc/devices/{fleet.device_id}"
    other = f"$oc/devices/{fleet.other_device_id}"

    assert await acl(http, fleet.device_id, "publish", f"{own}/sys/properties/report") == "allow"
    assert await acl(http, fleet.device_id, "publish", f"{own}/user/anything") == "allow"
    assert await acl(http, fleet.device_id, "subscribe", f"{own}/sys/commands/#") == "allow"
    assert await acl(http, fleet.device_id, "subscribe", f"{own}/sys/messages/down") == "allow"
    denied = [
        ("publish", f"{other}/sys/properties/report"),
        ("subscribe", f"{other}/sys/commands/#"),
        ("subscribe", "$oc/devices/+/sys/commands/#"),
        ("subscribe", "#"),
        ("publish", "elsewhere/topic"),
        ("subscribe", f"$share/g/{own}/sys/commands/#"),
        ("subscribe", f"$queue/{own}/sys/commands/#"),
        ("retain", f"{own}/sys/properties/report"),
    ]
    for action, topic in denied:
        assert await acl(http, fleet.device_id, action, topic) == "deny", (action, topic)


async def test_a_client_id_of_another_device_gets_no_rights(
    http: httpx.AsyncClient, fleet: Fleet
) -> None:
    body = {
        "clientid": make_client_id(fleet.other_device_id, "2024061503"),
        "username": fleet.device_id,
        "topic": f"$oc/devices/{fleet.device_id}/sys/messages/up",
        "action": "publish",
    }
    response = await http.post("/emqx/acl", json=body, headers=BEARER)
    assert response.json() == {"result": "deny"}
    not_iotda = {**body, "clientid": "some-tool"}
    assert (await http.post("/emqx/acl", json=not_iotda, headers=BEARER)).json()["result"] == (
        "deny"
    )


async def test_the_platform_account_may_publish_and_subscribe_anywhere(
    http: httpx.AsyncClient, runtime: Runtime
) -> None:
    for action, topic in (
        ("subscribe", "$share/fleetbatch/$oc/devices/+/sys/commands/response/#"),
        ("publish", "$oc/devices/p_n/sys/commands/request_id=1"),
    ):
        body = {
            "clientid": "fleetbatch-node-1",
            "username": runtime.settings.broker_username,
            "topic": topic,
            "action": action,
        }
        response = await http.post("/emqx/acl", json=body, headers=BEARER)
        assert response.json() == {"result": "allow"}


async def test_connect_and_disconnect_events_reach_the_presence_sink(
    app: FastAPI, http: httpx.AsyncClient, fleet: Fleet
) -> None:
    sink = RecordingSink([])
    app.state.presence = sink
    # the broker channel's presence handlers hear the same changes (not connected: not needed)
    channel = plain_broker_channel("mqtt://127.0.0.1:1", "fleetbatch-test")
    heard: list[tuple[str, bool, int]] = []
    channel.add_presence_handler(lambda *change: heard.append(change))
    app.state.channel = channel
    client_id = make_client_id(fleet.device_id, "2024061503")
    device = {"clientid": client_id, "username": fleet.device_id}
    events: list[Any] = [
        {**device, "event": "client.connected", "connected_at": 1_000, "timestamp": 1_001},
        {**device, "event": "client.disconnected", "reason": "takenover", "timestamp": 1_500},
        {**device, "event": "client.disconnected", "reason": "sock_closed", "timestamp": 2_000},
        [{**device, "action": "client_connected", "connected_at": 3_000}],  # 4.x web hook
        {**device, "event": "message.publish", "timestamp": 4_000},
        {"event": "client.connected", "clientid": "fleetbatch-node-1", "username": "fb"},
        {"event": "client.connected", "clientid": client_id, "username": fleet.other_device_id},
        "not an event",
    ]
    for event in events:
        response = await http.post("/emqx/events", json=event, headers=BEARER)
        assert response.status_code == 200
        assert response.json() == {}

    assert sink.changes == [
        (fleet.device_id, True, 1_000),
        (fleet.device_id, False, 2_000),
        (fleet.device_id, True, 3_000),
    ]
    assert heard == sink.changes


async def test_events_are_accepted_when_no_presence_sink_is_set(
    http: httpx.AsyncClient, fleet: Fleet
) -> None:
    event = {"event": "client.connected", "clientid": make_client_id(fleet.device_id, "2024061503")}

    response = await http.post("/emqx/events", json=event, headers=BEARER)

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/emqx/auth", "/emqx/acl", "/emqx/events"])
async def test_every_endpoint_wants_the_platform_password_as_bearer_token(
    http: httpx.AsyncClient, path: str
) -> None:
    body = {"clientid": "x_0_1_2024061503", "username": "x", "password": "p", "topic": "t"}
    for headers in (
        {},
        {"Authorization": f"Bearer {PLATFORM_PASSWORD}x"},
        {"Authorization": f"Basic {PLATFORM_PASSWORD}"},
        {"Authorization": "Bearer"},
    ):
        response = await http.post(path, json=body, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
