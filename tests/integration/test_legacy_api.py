"""The legacy OceanConnect dialect over raw HTTP against an in-process server with devices.

Auth (login, refresh, logout, token refusals), throttling through the store, acting for
another app, and every error code of S000 / S001 / S003 in its situation, on SQLite and
PostgreSQL. The happy paths with every selector type are in tests/e2e/test_legacy_e2e.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from fleetbatch.api import create_app
from fleetbatch.domain.states import TaskStatus
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from fleetbatch.store import tokens as token_rows
from fleetbatch.vault import hash_token
from support.cli import run_cli_json, store_flags
from support.engine import Fleet, engine_settings, running_fleet
from support.legacy import BATCH, SEC, assert_error, device_cmd, headers, login
from support.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@asynccontextmanager
async def client_for(fleet: Fleet) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{fleet.server.http_port}", timeout=10
    ) as client:
        yield client


async def count_tasks(fleet: Fleet) -> int:
    page = await fleet.tasks.list_tasks(fleet.app.project_id)
    return page.count


# --- auth -------------------------------------------------------------------------------


async def test_login_refresh_logout_and_every_refused_token(settings: Settings) -> None:
    async with running_fleet(engine_settings(settings), 0) as fleet, client_for(fleet) as client:
        app = fleet.app
        response = await client.post(
            f"{SEC}/login", data={"appId": app.app_id, "secret": app.secret}
        )
        assert response.status_code == 200
        body = response.json()
        assert list(body) == ["accessToken", "tokenType", "refreshToken", "expiresIn", "scope"]
        assert (body["tokenType"], body["expiresIn"], body["scope"]) == ("bearer", 3600, "default")
        token, refresh_token = body["accessToken"], body["refreshToken"]
        one_task = f"{BATCH}/tasks/{'0' * 24}"

        # a good token reaches the call (404: no such task), `bearer` in any case
        for scheme in ("Bearer", "bearer", "BEARER"):
            response = await client.get(
                one_task, headers={"app_key": app.app_id, "Authorization": f"{scheme} {token}"}
            )
            assert_error(response, 404, "105005")

        # tokens are stored hashed only
        async with fleet.runtime.store.read() as conn:
            assert await token_rows.live_token_app(conn, token, "access", 0) is None
            found = await token_rows.live_token_app(conn, hash_token(token), "access", 0)
            assert found is not None
            assert found[0] == app.app_id

        wrong = await client.post(f"{SEC}/login", data={"appId": app.app_id, "secret": "nope"})
        assert_error(wrong, 401, "100208")
        missing = await client.post(f"{SEC}/login", data={"appId": app.app_id})
        assert_error(missing, 400, "100022")
        # bodies are read by their wire names only, each field a non-empty string
        for path, bad in (
            ("login", {"app_id": app.app_id, "secret": app.secret}),
            ("refreshToken", {"appId": app.app_id, "secret": app.secret, "refreshToken": ""}),
            ("refreshToken", {"appId": app.app_id, "secret": app.secret, "refresh_token": "x"}),
            ("logout", {"accessToken": 7}),
            ("logout", {"access_token": token}),
        ):
            assert_error(await client.post(f"{SEC}/{path}", json=bad), 400, "100022")

        other = await fleet.runtime.registry.apps.create("other")
        other_token = await login(client, other.app_id, other.secret)
        expired = "expired-token"
        async with fleet.runtime.store.write() as conn:
            await token_rows.insert_token(conn, hash_token(expired), "access", app.app_id, 1, 0)
        refused: list[dict[str, str]] = [
            {},  # no credentials at all
            {"app_key": app.app_id},  # no token
            {"app_key": app.app_id, "Authorization": "Bearer unknown"},
            {"app_key": app.app_id, "Authorization": f"Basic {token}"},
            {"app_key": app.app_id, "Authorization": f"Bearer {expired}"},
            {"app_key": app.app_id, "Authorization": f"Bearer {other_token}"},  # mismatched
            {"Authorization": f"Bearer {token}"},  # no app_key
        ]
        for sent in refused:
            body = assert_error(await client.get(one_task, headers=sent), 403, "1010005")
            assert body["resultcode"] == "1010005"  # what re-login clients test (spec §1.4)
            created = await client.post(f"{BATCH}/tasks", headers=sent, json={})
            assert_error(created, 403, "1010005")

        # refresh: new tokens; the refresh token is spent
        refreshed = await client.post(
            f"{SEC}/refreshToken",
            json={"appId": app.app_id, "secret": app.secret, "refreshToken": refresh_token},
        )
        assert refreshed.status_code == 200, refreshed.text
        new_token = refreshed.json()["accessToken"]
        assert new_token != token
        again = await client.post(
            f"{SEC}/refreshToken",
            json={"appId": app.app_id, "secret": app.secret, "refreshToken": refresh_token},
        )
        assert_error(again, 401, "100006")
        assert_error(await client.get(one_task, headers=headers(app.app_id, new_token)), 404,
                     "105005")  # fmt: skip

        # logout: the token is refused from then on
        out = await client.post(f"{SEC}/logout", json={"accessToken": new_token})
        assert out.status_code == 204
        gone = await client.get(one_task, headers=headers(app.app_id, new_token))
        assert_error(gone, 403, "1010005")


async def test_throttling_counts_calls_per_app_in_the_store(settings: Settings) -> None:
    async with running_fleet(engine_settings(settings), 0) as fleet, client_for(fleet) as client:
        limited = await fleet.runtime.registry.apps.create("limited", throttle_per_min=4)
        token = await login(client, limited.app_id, limited.secret)
        call = f"{BATCH}/tasks/{'0' * 24}"
        sent = headers(limited.app_id, token)
        for _ in range(2):
            assert_error(await client.get(call, headers=sent), 404, "105005")
        # a second API process over the same store (its own app, runtime and memory)
        async with await Runtime.open(fleet.runtime.settings) as runtime:
            transport = httpx.ASGITransport(app=create_app(runtime))
            async with httpx.AsyncClient(transport=transport, base_url="http://other") as other:
                for _ in range(2):
                    assert_error(await other.get(call, headers=sent), 404, "105005")
                body = assert_error(await other.get(call, headers=sent), 403, "1010009")
                assert body["resultcode"] == "1010009"
        assert_error(await client.get(call, headers=sent), 403, "1010009")
        # another app's budget is its own
        own = await login(client, fleet.app.app_id, fleet.app.secret)
        assert_error(await client.get(call, headers=headers(fleet.app.app_id, own)), 404,
                     "105005")  # fmt: skip


def test_an_app_gets_its_own_call_limit_from_the_cli(settings: Settings) -> None:
    flags = store_flags(settings)
    created = run_cli_json(
        "admin", "create-app", *flags, "--name", "slow", "--throttle-per-min", "7", "--json"
    )
    listed = run_cli_json("admin", "list-apps", *flags, "--json")
    (app,) = [a for a in listed if a["app_id"] == created["app_id"]]
    assert app["throttle_per_min"] == 7


# --- batch tasks: errors --------------------------------------------------------------


async def test_create_refuses_bad_input_and_creates_nothing(settings: Settings) -> None:
    async with running_fleet(engine_settings(settings), 2) as fleet, client_for(fleet) as client:
        app = fleet.app
        sent = headers(app.app_id, await login(client, app.app_id, app.secret))
        listed = {"type": "DeviceList", "deviceList": fleet.device_ids}
        good = device_cmd("good", listed)
        command = good["param"]["command"]

        def variant(**changes: Any) -> dict[str, Any]:
            return {**good, **changes}

        def with_param(**changes: Any) -> dict[str, Any]:
            return {**good, "param": {**good["param"], **changes}}

        bad_bodies: list[Any] = [
            [],
            "text",
            variant(taskName=""),
            variant(taskName="n" * 257),
            variant(taskName=None),
            variant(taskType="DeviceReg"),  # documented, not creatable here
            variant(taskType="Nonsense"),
            variant(timeout=9),
            variant(timeout=2881),
            variant(timeout="10"),
            variant(timeout=None),
            variant(param=None),
            variant(tags=[{"tagName": "", "tagValue": "v"}]),
            variant(tags=[{"tagName": "n" * 129, "tagValue": "v"}]),
            variant(tags=[{"tagName": "n", "tagValue": "v" * 1025}]),
            variant(tags=[{"tagName": "n", "tagValue": ""}]),
            variant(tags=[{"tagName": "n", "tagValue": "a"}, {"tagName": "n", "tagValue": "b"}]),
            with_param(type="Everything"),
            with_param(type=None),
            with_param(deviceList=None),
            with_param(deviceList=[]),
            with_param(deviceList=["x" * 129]),
            with_param(type="DeviceType", deviceType="Default", manufacturerId="fleetbatch"),
            with_param(type="DeviceArea"),
            with_param(type="GroupList", groupList=[]),
            with_param(type="GroupIdList"),
            with_param(command=None),
            with_param(command={**command, "serviceId": ""}),
            with_param(command={**command, "serviceId": "s" * 65}),
            with_param(command={**command, "method": "m" * 129}),
            with_param(command={**command, "paras": "not an object"}),
            with_param(maxRetransmit=4),
            with_param(maxRetransmit=-1),
            with_param(callbackUrl="ftp://127.0.0.1/x"),
            with_param(callbackUrl="http://127.0.0.1/" + "x" * 1024),
        ]
        for body in bad_bodies:
            response = await client.post(f"{BATCH}/tasks", headers=sent, json=body)
            assert_error(response, 400, "50400")
        not_json = await client.post(f"{BATCH}/tasks", headers=sent, content=b"{nope")
        assert_error(not_json, 400, "50400")

        # named things that do not exist: HTTP 200 + 101001 (S003)
        for param in (
            {"type": "GroupList", "groupList": ["no-such-group"]},
            {"type": "GroupIdList", "groupList": ["0" * 36]},
        ):
            body = device_cmd("g", param)
            response = await client.post(f"{BATCH}/tasks", headers=sent, json=body)
            assert_error(response, 200, "101001")

        # a device of another app: no right over it (401 / 100028)
        other = await fleet.runtime.registry.apps.create("other")
        product = await fleet.runtime.registry.products.default(other.app_id)
        (foreign,) = await fleet.runtime.registry.devices.create_many(
            other.app_id, product.product_id, [_new_device("foreign")]
        )
        mixed = {"type": "DeviceList", "deviceList": [fleet.device_ids[0], foreign.device_id]}
        response = await client.post(f"{BATCH}/tasks", headers=sent, json=device_cmd("f", mixed))
        assert_error(response, 401, "100028")
        assert await count_tasks(fleet) == 0


async def test_name_limit_and_tag_conflicts_answer_as_the_seed_says(settings: Settings) -> None:
    # devices that never answer keep the first task unfinished for the whole test
    async with (
        running_fleet(engine_settings(settings), 2, simulate=False) as fleet,
        client_for(fleet) as client,
    ):
        app = fleet.app
        sent = headers(app.app_id, await login(client, app.app_id, app.secret))
        listed = {"type": "DeviceList", "deviceList": fleet.device_ids}
        tags = [{"tagName": "site", "tagValue": "berlin"}]
        first = await client.post(
            f"{BATCH}/tasks/", headers=sent, json=device_cmd("first", listed, tags=tags)
        )
        assert first.status_code == 200, first.text
        task_id = first.json()["taskID"]
        assert list(first.json()) == ["taskID"]

        tasks = f"{BATCH}/tasks"
        dup = await client.post(tasks, headers=sent, json=device_cmd("first", listed))
        assert_error(dup, 200, "105002")
        busy = await client.post(tasks, headers=sent, json=device_cmd("second", listed))
        assert_error(busy, 200, "105001")
        assert await count_tasks(fleet) == 1

        # once the first has finished, a second may start, but not with its tag pair
        await fleet.tasks.stop(task_id)
        taken = await client.post(
            f"{BATCH}/tasks", headers=sent, json=device_cmd("second", listed, tags=tags)
        )
        assert_error(taken, 400, "105201")
        assert await count_tasks(fleet) == 1
        other_tags = [{"tagName": "site", "tagValue": "paris"}]
        ok = await client.post(
            f"{BATCH}/tasks", headers=sent, json=device_cmd("second", listed, tags=other_tags)
        )
        assert ok.status_code == 200, ok.text
        assert "taskID" in ok.json()


async def test_acting_for_another_app_needs_its_authorization(settings: Settings) -> None:
    async with (
        running_fleet(engine_settings(settings), 1, simulate=False) as fleet,
        client_for(fleet) as client,
    ):
        registry = fleet.runtime.registry
        owner = fleet.app
        agent = await registry.apps.create("agent", project_id=owner.project_id)
        sent = headers(agent.app_id, await login(client, agent.app_id, agent.secret))
        listed = {"type": "DeviceList", "deviceList": fleet.device_ids}
        body = device_cmd("for-owner", listed, appId=owner.app_id)
        details = f"{BATCH}/taskDetails"

        missing = {"appId": "no-such-app"}
        assert_error(await client.post(f"{BATCH}/tasks", headers=sent,
                                       json={**body, **missing}), 403, "100203")  # fmt: skip
        some_id = "0" * 24
        for params in (missing, {**missing, "taskId": some_id}):
            assert_error(await client.get(f"{BATCH}/tasks/{some_id}", headers=sent,
                                          params=params), 403, "100203")  # fmt: skip
            assert_error(await client.get(details, headers=sent, params=params), 403, "100203")
        unauthorized = await client.post(f"{BATCH}/tasks", headers=sent, json=body)
        assert_error(unauthorized, 403, "100217")
        owner_q = {"appId": owner.app_id, "taskId": some_id}
        assert_error(await client.get(f"{BATCH}/tasks/{some_id}", headers=sent,
                                      params=owner_q), 403, "100217")  # fmt: skip
        assert_error(await client.get(details, headers=sent, params=owner_q), 403, "100217")
        assert await count_tasks(fleet) == 0

        await registry.apps.grant(owner.app_id, agent.app_id)
        created = await client.post(f"{BATCH}/tasks", headers=sent, json=body)
        assert created.status_code == 200, created.text
        task_id = created.json()["taskID"]
        task = await fleet.tasks.get(task_id)
        assert (task.app_id, task.creator_app_id, task.source) == (
            owner.app_id,
            agent.app_id,
            "legacy",
        )
        one = await client.get(
            f"{BATCH}/tasks/{task_id}", headers=sent, params={"appId": owner.app_id}
        )
        assert one.status_code == 200
        assert (one.json()["appId"], one.json()["operator"]) == (owner.app_id, agent.app_id)
        # without appId the agent asks about its own tasks: this one is not among them
        assert_error(await client.get(f"{BATCH}/tasks/{task_id}", headers=sent), 404, "105005")


async def test_queries_refuse_bad_input(settings: Settings) -> None:
    async with (
        running_fleet(engine_settings(settings), 1, simulate=False) as fleet,
        client_for(fleet) as client,
    ):
        app = fleet.app
        sent = headers(app.app_id, await login(client, app.app_id, app.secret))
        listed = {"type": "DeviceList", "deviceList": fleet.device_ids}
        body = device_cmd("q", listed)
        created = await client.post(f"{BATCH}/tasks", headers=sent, json=body)
        task_id = created.json()["taskID"]
        for path in (f"{BATCH}/tasks", f"{BATCH}/tasks/"):
            assert_error(await client.get(path, headers=sent), 400, "100019")
        one = f"{BATCH}/tasks/{task_id}"
        assert_error(await client.get(one, headers=sent, params={"select": "all"}), 400,
                     "100022")  # fmt: skip
        for unknown in ("0" * 24, "not-a-task", "f" * 24):
            assert_error(await client.get(f"{BATCH}/tasks/{unknown}", headers=sent), 404,
                         "105005")  # fmt: skip
        details = f"{BATCH}/taskDetails"
        for params in (
            {},
            {"taskId": task_id, "pageSize": "0"},
            {"taskId": task_id, "pageSize": "251"},
            {"taskId": task_id, "pageNo": "-1"},
            {"taskId": task_id, "pageNo": "one"},
            {"taskId": task_id, "status": "Done"},
            {"taskId": task_id, "commandId": "xyz"},
        ):
            assert_error(await client.get(details, headers=sent, params=params), 400,
                         "100022")  # fmt: skip
        unknown = await client.get(details, headers=sent, params={"taskId": "0" * 24})
        assert_error(unknown, 404, "105005")
        assert (await fleet.tasks.get(task_id)).status is not TaskStatus.FAIL


def _new_device(node_id: str) -> Any:
    from fleetbatch.domain.registry import NewDevice

    return NewDevice(node_id=node_id)


async def _finished(fleet: Fleet, task_id: str) -> None:
    async def done() -> bool:
        return (await fleet.tasks.get(task_id)).finished

    await wait_until(done, timeout_s=15, message=f"task {task_id} finished")
