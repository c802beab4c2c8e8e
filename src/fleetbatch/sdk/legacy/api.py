"""The legacy SDK's API classes, with the original class, method and argument names.

Each class takes an optional `NorthApiClient`; without one it uses the default client,
which `Authentication.getAuthToken(clientInfo)` sets from its clientInfo (the original
read the same platform and app from one ini file for every call).
"""

from __future__ import annotations

from typing import Any

from fleetbatch.sdk.legacy.client import NorthApiClient
from fleetbatch.sdk.legacy.dto import (
    DTO,
    AuthRefreshInDTO,
    BatchTaskCreateInDTO,
    CreateDeviceCmdCancelTaskInDTO,
    PostDeviceCommandInDTO,
    QueryDeviceCmdCancelTaskInDTO,
    QueryDeviceCommandInDTO,
    QueryTaskDetailsInDTO,
    QueryUpgradeSubTaskInDTO,
    UpdateDeviceCommandInDTO,
)

SEC = "/iocm/app/sec/v1.1.0"
BATCH = "/iocm/app/batchtask/v1.1.0"
CMD = "/iocm/app/cmd/v1.4.0"
IODM = "/iodm/northbound/v1.5.0"

_default: NorthApiClient | None = None


def set_default_client(client: NorthApiClient | None) -> None:
    """The client the API classes use when given none."""
    global _default
    _default = client


def _as_dict(dto: DTO | dict[str, Any] | None) -> dict[str, Any]:
    if dto is None:
        return {}
    return dto.to_dict() if isinstance(dto, DTO) else dict(dto)


class _Api:
    def __init__(self, client: NorthApiClient | None = None) -> None:
        self._client = client

    @property
    def client(self) -> NorthApiClient:
        client = self._client or _default
        if client is None:
            raise RuntimeError("no NorthApiClient: pass one, or call getAuthToken(clientInfo)")
        return client

    def _call(
        self,
        method: str,
        path: str,
        accessToken: str,
        *,
        query: DTO | dict[str, Any] | None = None,
        body: DTO | dict[str, Any] | None = None,
    ) -> str:
        """One call with the token: a DTO (or dict) as the query or the JSON body."""
        return self.client.invoke(
            method,
            path,
            access_token=accessToken,
            query=_as_dict(query),
            body=None if body is None else _as_dict(body),
        )


class Authentication(_Api):
    """Login and token refresh."""

    def getAuthToken(self, clientInfo: dict[str, Any] | None = None) -> str:
        """Login with clientInfo's appId and secret (or the client's); the AuthOutDTO text."""
        client = self._client
        if clientInfo is not None and client is None:
            client = NorthApiClient.from_client_info(clientInfo)
            if _default is None:
                set_default_client(client)
            self._client = client
        client = client or self.client
        app_id = (clientInfo or {}).get("appId", client.app_id)
        secret = (clientInfo or {}).get("secret", client.secret)
        return client.invoke(
            "POST", f"{SEC}/login", form={"appId": str(app_id), "secret": str(secret or "")}
        )

    def refreshAuthToken(self, arInDTO: AuthRefreshInDTO | dict[str, Any]) -> str:
        """New tokens for a refresh token (spent by this call)."""
        return self.client.invoke("POST", f"{SEC}/refreshToken", body=_as_dict(arInDTO))

    def logoutAuthToken(self, accessToken: str) -> str:
        """End an access token (and its refresh token)."""
        return self.client.invoke("POST", f"{SEC}/logout", body={"accessToken": accessToken})


class BatchProcess(_Api):
    """Batch tasks (S000, S001, S003)."""

    def createBatchTask(
        self,
        btcInDTO: BatchTaskCreateInDTO | dict[str, Any],
        accessToken: str,
    ) -> str:
        """Create a DeviceCmd task; the text `{"taskID": ...}`."""
        return self._call("POST", f"{BATCH}/tasks", accessToken, body=btcInDTO)

    def queryOneTask(
        self,
        taskId: str,
        select: str | None,
        appId: str | None,
        accessToken: str,
    ) -> str:
        """One task's status and counters (`select="tag"` adds its tags)."""
        query = {"select": select, "appId": appId}
        return self._call("GET", f"{BATCH}/tasks/{taskId}", accessToken, query=query)

    def queryTaskDetails(
        self,
        qtdInDTO: QueryTaskDetailsInDTO | dict[str, Any],
        accessToken: str,
    ) -> str:
        """One page of a task's subtasks."""
        return self._call("GET", f"{BATCH}/taskDetails", accessToken, query=qtdInDTO)


class SignalDelivery(_Api):
    """Single-device commands (v1.4.0)."""

    def postDeviceCommand(
        self,
        pdcInDTO: PostDeviceCommandInDTO | dict[str, Any],
        appId: str | None,
        accessToken: str,
    ) -> str:
        """Send (or hold) a command for one device; the command record text."""
        query = {"appId": appId}
        return self._call("POST", f"{CMD}/deviceCommands", accessToken, query=query, body=pdcInDTO)

    def queryDeviceCommand(
        self,
        qdcInDTO: QueryDeviceCommandInDTO | dict[str, Any],
        accessToken: str,
    ) -> str:
        """One page of commands."""
        return self._call("GET", f"{CMD}/deviceCommands", accessToken, query=qdcInDTO)

    def updateDeviceCommand(
        self,
        udcInDTO: UpdateDeviceCommandInDTO | dict[str, Any],
        deviceCommandId: str,
        appId: str | None,
        accessToken: str,
    ) -> str:
        """Cancel one command (status CANCELED)."""
        path = f"{CMD}/deviceCommands/{deviceCommandId}"
        return self._call("PUT", path, accessToken, query={"appId": appId}, body=udcInDTO)

    def createDeviceCmdCancelTask(
        self,
        cdcctInDTO: CreateDeviceCmdCancelTaskInDTO | dict[str, Any],
        appId: str | None,
        accessToken: str,
    ) -> str:
        """Cancel every pending command of a device."""
        path = f"{CMD}/deviceCommandCancelTasks"
        return self._call("POST", path, accessToken, query={"appId": appId}, body=cdcctInDTO)

    def queryDeviceCmdCancelTask(
        self,
        qdcctInDTO: QueryDeviceCmdCancelTaskInDTO | dict[str, Any],
        accessToken: str,
    ) -> str:
        """One page of cancel tasks."""
        return self._call("GET", f"{CMD}/deviceCommandCancelTasks", accessToken, query=qdcctInDTO)


class DeviceUpgrade(_Api):
    """Firmware/software upgrades (iodm); the server side comes with the upgrade issue."""

    def queryUpgradeSubTask(
        self,
        qustInDTO: QueryUpgradeSubTaskInDTO | dict[str, Any],
        operationId: str,
        accessToken: str,
    ) -> str:
        """One page of an upgrade task's sub-operations (S004)."""
        path = f"{IODM}/operations/{operationId}/subOperations"
        return self._call("GET", path, accessToken, query=qustInDTO)
