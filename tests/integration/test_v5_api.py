"""The v5 dialect in process (httpx over ASGI): every tampered part of a signed request is
refused with IoTDA's 401, nothing is created by a refused request, every response carries
`X-Request-Id`, and OpenAPI shows the wire names, enums and limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from fleetbatch.api import create_app
from fleetbatch.domain import signing
from fleetbatch.domain.registry import AppCredentials
from fleetbatch.domain.timefmt import to_compact
from fleetbatch.runtime import Runtime

HOST = "127.0.0.1:8080"


@dataclass
class SignedClient:
    """Signs requests as huaweicloudsdkcore does, and can send them altered afterwards."""

    http: httpx.AsyncClient
    credentials: AppCredentials
    now_ms: int

    def sign(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        *,
        derived: bool = False,
        date_ms: int | None = None,
    ) -> dict[str, str]:
        parts = urlsplit(url)
        headers = {
            "content-type": "application/json",
            "host": HOST,
            "user-agent": "huaweicloud-usdk-python/3.0; test",
            "x-project-id": self.credentials.project_id,
            "x-sdk-date": to_compact(self.now_ms if date_ms is None else date_ms),
        }
        names = tuple(sorted(headers))
        ak = self.credentials.access_key
        if derived:
            scope = f"{headers['x-sdk-date'][:8]}/cn-north-4/iotdm"
            prefix = f"{signing.DERIVED} Credential={ak}/{scope}"
            date, region, service = scope.split("/")
            auth = signing.Authorization(
                signing.DERIVED, ak, names, "0" * 64, date, region, service
            )
        else:
            prefix = f"{signing.PLAIN} Access={ak}"
            auth = signing.Authorization(signing.PLAIN, ak, names, "0" * 64)
        canonical = signing.canonical_request(
            method, parts.path, parts.query, headers, names, signing.payload_hash(headers, body)
        )
        signature = signing.signature_for(
            auth, self.credentials.secret_key, headers["x-sdk-date"], canonical
        )
        headers["authorization"] = (
            f"{prefix}, SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return headers

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> httpx.Response:
        return await self.http.request(method, url, headers=dict(headers), content=body)


@pytest.fixture
async def v5(runtime: Runtime) -> AsyncIterator[SignedClient]:
    credentials = await runtime.registry.apps.create("v5-api")
    app = create_app(runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{HOST}") as http:
        yield SignedClient(http, credentials, runtime.clock.now_ms())


def tasks_url(client: SignedClient, suffix: str = "") -> str:
    return f"/v5/iot/{client.credentials.project_id}/batchtasks{suffix}"


BODY = json.dumps(
    {"task_name": "t1", "task_type": "deleteDevices", "targets": ["dev-1", "dev-2"]}
).encode()


def assert_refused(response: httpx.Response, status: int = 401, code: str = "IOTDA.000002") -> None:
    assert response.status_code == status, response.text
    assert response.json()["error_code"] == code
    assert set(response.json()) == {"error_code", "error_msg"}
    assert len(response.headers["x-request-id"]) == 32


async def count_tasks(client: SignedClient) -> int:
    url = tasks_url(client, "?task_type=deleteDevices")
    response = await client.send("GET", url, client.sign("GET", url))
    assert response.status_code == 200, response.text
    assert len(response.headers["x-request-id"]) == 32
    count: int = response.json()["page"]["count"]
    return count


@pytest.mark.parametrize("derived", [False, True], ids=["plain", "derived"])
async def test_every_tampered_part_is_refused_and_creates_nothing(
    v5: SignedClient, derived: bool
) -> None:
    url = tasks_url(v5)
    good = v5.sign("POST", url, BODY, derived=derived)
    stale = v5.sign("POST", url, BODY, derived=derived, date_ms=v5.now_ms - 16 * 60_000)
    tampered: list[tuple[str, str, dict[str, str], bytes]] = [
        ("PUT", url, good, BODY),
        ("POST", url + "/x/stop", good, BODY),
        ("POST", url + "?app_id=x", good, BODY),
        ("POST", url, {**good, "user-agent": "curl"}, BODY),
        ("POST", url, {**good, "host": "127.0.0.1:9090"}, BODY),
        ("POST", url, good, BODY.replace(b"dev-2", b"dev-3")),
        ("POST", url, {k: v for k, v in good.items() if k != "authorization"}, BODY),
        ("POST", url, {**good, "authorization": good["authorization"].replace("=", "=X", 1)}, BODY),
        ("POST", url, stale, BODY),
    ]  # fmt: skip
    for method, sent_url, headers, body in tampered:
        response = await v5.send(method, sent_url, headers, body)
        if method == "PUT":
            # no PUT operation there: IoTDA's 404 body, before any signature check
            assert_refused(response, 404, "IOTDA.000006")
        else:
            assert_refused(response)
    assert await count_tasks(v5) == 0
    response = await v5.send("POST", url, good, BODY)
    assert response.status_code == 201, response.text
    assert await count_tasks(v5) == 1


async def test_the_path_project_is_bound_to_the_key(v5: SignedClient, runtime: Runtime) -> None:
    other = await runtime.registry.apps.create("other")
    url = f"/v5/iot/{other.project_id}/batchtasks?task_type=deleteDevices"
    response = await v5.send("GET", url, v5.sign("GET", url))
    assert_refused(response)


async def test_bad_json_and_instance_id(v5: SignedClient) -> None:
    url = tasks_url(v5)
    body = b'{"task_name": '
    response = await v5.send("POST", url, v5.sign("POST", url, body), body)
    assert_refused(response, 400, "IOTDA.000008")
    headers = {**v5.sign("POST", url, BODY), "instance-id": "i" * 37}
    response = await v5.send("POST", url, headers, BODY)
    # Instance-Id is not signed here, so only its length is at fault
    assert_refused(response, 400, "IOTDA.000006")
    assert await count_tasks(v5) == 0


async def test_openapi_shows_the_wire_names_enums_and_limits(v5: SignedClient) -> None:
    spec = (await v5.http.get("/openapi.json")).json()
    show = spec["paths"]["/v5/iot/{project_id}/batchtasks/{task_id}"]["get"]
    params = {p["name"]: p for p in show["parameters"]}
    assert {"project_id", "task_id", "limit", "marker", "offset", "target"} <= set(params)
    assert "Waitting" in json.dumps(params["task_detail_status"]["schema"])
    assert params["limit"]["schema"]["maximum"] == 50
    assert params["offset"]["schema"]["maximum"] == 500
    assert params["marker"]["schema"]["pattern"] == "^[0-9a-f]{24}$"
    progress = spec["components"]["schemas"]["TaskProgressWire"]["properties"]
    assert set(progress) == {
        "total", "processing", "success", "fail", "waitting", "fail_wait_retry", "stopped",
        "removed",
    }  # fmt: skip
    create = spec["components"]["schemas"]["CreateBatchTask"]["properties"]
    assert create["targets"]["anyOf"][0]["maxItems"] == 30_000
    docs = await v5.http.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
