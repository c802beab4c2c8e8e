"""A small IoTDA v5 client for fleetbatch's own tools: requests signed as the SDK signs them.

The CLI's `task` commands use it to work against a running server (`--endpoint --ak --sk
--project-id`, or a profile file) instead of opening the store. Signing is the same code the
server verifies with (`domain.signing`), plain `SDK-HMAC-SHA256` or, with a region, the
derived `V11-HMAC-SHA256`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from fleetbatch import __version__
from fleetbatch.domain import signing
from fleetbatch.domain.errors import FleetbatchError, InvalidInput, Unavailable
from fleetbatch.domain.timefmt import to_compact

DEFAULT_TIMEOUT_S = 60.0
PROFILE_KEYS = ("endpoint", "ak", "sk", "project_id", "region")


class ApiError(FleetbatchError):
    """The server answered with an IoTDA error body."""

    def __init__(self, status: int, error_code: str, error_msg: str, request_id: str) -> None:
        super().__init__(f"HTTP {status} {error_code}: {error_msg} (request id {request_id})")
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class V5Profile:
    """Where the server is and the credentials to sign with; `region` selects derived signing."""

    endpoint: str
    ak: str
    sk: str
    project_id: str
    region: str | None = None

    def __repr__(self) -> str:
        # the secret key never goes into logs or tracebacks
        return (
            f"V5Profile(endpoint={self.endpoint!r}, ak={self.ak!r}, project_id={self.project_id!r})"
        )


def load_profile(path: Path | None, **given: str | None) -> V5Profile | None:
    """A profile from a JSON file (keys `PROFILE_KEYS`), flags overriding it; None if neither.

    InvalidInput names what is missing or unreadable.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInput("--profile", f"cannot read {path}: {exc}") from None
        if not isinstance(loaded, dict) or set(loaded) - set(PROFILE_KEYS):
            raise InvalidInput("--profile", f"must be a JSON object of {', '.join(PROFILE_KEYS)}")
        values.update(loaded)
    values.update({key: value for key, value in given.items() if value is not None})
    if not values:
        return None
    missing = [key for key in ("endpoint", "ak", "sk", "project_id") if not values.get(key)]
    if missing:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in missing)
        raise InvalidInput("--endpoint", f"working against a server also needs {flags}")
    endpoint = str(values["endpoint"])
    if not endpoint.startswith(("http://", "https://")):
        raise InvalidInput("--endpoint", "must start with http:// or https://")
    return V5Profile(
        endpoint.rstrip("/"),
        str(values["ak"]),
        str(values["sk"]),
        str(values["project_id"]),
        values.get("region"),
    )


def sign(profile: V5Profile, method: str, url: str, body: bytes, now_ms: int) -> dict[str, str]:
    """The headers of a signed request (`url` with its encoded query)."""
    parts = urlsplit(url)
    headers = {
        "content-type": "application/json",
        "host": parts.netloc,
        "user-agent": f"fleetbatch/{__version__}",
        "x-project-id": profile.project_id,
        "x-sdk-date": to_compact(now_ms),
    }
    names = tuple(sorted(headers))
    if profile.region:
        date = headers["x-sdk-date"][:8]
        auth = signing.Authorization(
            signing.DERIVED, profile.ak, names, "", date, profile.region, signing.DERIVED_SERVICE
        )
        prefix = f"{signing.DERIVED} Credential={profile.ak}/{auth.scope}"
    else:
        auth = signing.Authorization(signing.PLAIN, profile.ak, names, "")
        prefix = f"{signing.PLAIN} Access={profile.ak}"
    canonical = signing.canonical_request(
        method, parts.path, parts.query, headers, names, signing.payload_hash(headers, body)
    )
    signature = signing.signature_for(auth, profile.sk, headers["x-sdk-date"], canonical)
    headers["authorization"] = f"{prefix}, SignedHeaders={';'.join(names)}, Signature={signature}"
    return headers


class V5Client:
    """Signed JSON requests to one server's `/v5/iot/{project_id}`; errors become ApiError."""

    def __init__(self, profile: V5Profile, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.profile = profile
        self._http = httpx.AsyncClient(timeout=timeout_s, verify=True)

    async def __aenter__(self) -> V5Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        now_ms: int,
    ) -> Any:
        """The parsed JSON answer (None when empty); ApiError for an IoTDA error answer."""
        pairs = sorted(
            (key, _query_text(value)) for key, value in (query or {}).items() if value is not None
        )
        encoded = "&".join(f"{signing.rfc3986(k)}={signing.rfc3986(v)}" for k, v in pairs)
        project = quote(self.profile.project_id, safe="")
        url = f"{self.profile.endpoint}/v5/iot/{project}{path}" + (f"?{encoded}" if encoded else "")
        content = b"" if body is None else json.dumps(body).encode()
        headers = sign(self.profile, method, url, content, now_ms)
        try:
            response = await self._http.request(method, url, headers=headers, content=content)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach {self.profile.endpoint}: {exc}") from exc
        if response.status_code >= 400:
            try:
                data = response.json()
                code, message = str(data["error_code"]), str(data["error_msg"])
            except (ValueError, KeyError, TypeError):
                code, message = str(response.status_code), response.text[:200]
            request_id = response.headers.get("x-request-id", "-")
            raise ApiError(response.status_code, code, message, request_id)
        return response.json() if response.content else None


def _query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
