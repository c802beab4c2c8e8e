"""The transport of the legacy SDK: one configured HTTPS client and the error it raises.

Unlike Huawei's original SDK, which hands back the response text whatever the status, a
call here raises `NorthApiException` (HTTP status, error_code, error_desc) when the
platform answers with an error: any status of 300 or more, or a body with a top-level
`error_code` (S003 answers some errors with HTTP 200). Success still returns the raw
response text, as the original did, so `json.loads(result)["taskID"]` keeps working.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx

# the original SDK's login timeout; ordinary calls had none, which hangs on a dead server
DEFAULT_TIMEOUT_S = 30.0


class NorthApiException(Exception):
    """The platform refused a call: `httpStatus`, `error_code`, `error_desc`."""

    def __init__(self, http_status: int, error_code: str, error_desc: str) -> None:
        super().__init__(f"HTTP {http_status}: {error_code} {error_desc}")
        self.httpStatus = http_status
        self.error_code = error_code
        self.error_desc = error_desc
        # the original class carried its text here
        self.message = f"{error_code}: {error_desc}"


class NorthApiClient:
    """Where the platform is and how to reach it (the original read this from an ini file).

    `verify`: a CA file (e.g. `<data-dir>/tls/ca.pem` of `fleetbatch serve`), True for the
    system's CAs, or False to skip the check as the original did; `cert`: an optional
    client certificate (`(crt, key)` paths), as the real platform required.
    """

    def __init__(
        self,
        platform_ip: str,
        platform_port: int | str,
        app_id: str,
        secret: str | None = None,
        *,
        scheme: str = "https",
        verify: bool | str = False,
        cert: tuple[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        host = f"[{platform_ip}]" if ":" in platform_ip else platform_ip
        self.base_url = f"{scheme}://{host}:{platform_port}"
        self.app_id = app_id
        self.secret = secret
        trust: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        if cert is not None:
            if not isinstance(trust, ssl.SSLContext):
                trust = ssl.create_default_context() if trust else _unverified()
            trust.load_cert_chain(*cert)
        self._http = httpx.Client(base_url=self.base_url, verify=trust, timeout=timeout_s)

    @classmethod
    def from_client_info(cls, client_info: Mapping[str, Any], **options: Any) -> NorthApiClient:
        """From the original's clientInfo dict: platformIp, platformPort, appId, secret."""
        return cls(
            str(client_info["platformIp"]),
            client_info["platformPort"],
            str(client_info["appId"]),
            client_info.get("secret"),
            **options,
        )

    def close(self) -> None:
        """Release the connections."""
        self._http.close()

    def __enter__(self) -> NorthApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def invoke(
        self,
        method: str,
        path: str,
        *,
        access_token: str | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        form: Mapping[str, str] | None = None,
    ) -> str:
        """One call; the response text, or NorthApiException for an error answer."""
        headers = {"Content-Type": "application/json"}
        if access_token is not None:
            headers["app_key"] = self.app_id
            headers["Authorization"] = f"Bearer {access_token}"
        params = {k: _text(v) for k, v in (query or {}).items() if v is not None}
        url = f"{path}?{urlencode(params)}" if params else path
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            response = self._http.request(method, url, headers=headers, data=dict(form))
        else:
            content = json.dumps(_without_none(body)) if body is not None else None
            response = self._http.request(method, url, headers=headers, content=content)
        return _checked(response)


def _unverified() -> ssl.SSLContext:
    # the original SDK's default: the platform's certificate is not checked
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _text(value: Any) -> str:
    # the original concatenated strings only (an int raised TypeError): accept both
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _without_none(value: Any) -> Any:
    """Unset fields are left out (the server also reads null as absent)."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _checked(response: httpx.Response) -> str:
    text = response.text
    body: Any = None
    if text:
        try:
            body = response.json()
        except ValueError:
            body = None
    code = body.get("error_code") if isinstance(body, dict) else None
    if code is not None or response.status_code >= 300:
        desc = body.get("error_desc", "") if isinstance(body, dict) else text[:200]
        raise NorthApiException(response.status_code, str(code or ""), str(desc))
    return text
