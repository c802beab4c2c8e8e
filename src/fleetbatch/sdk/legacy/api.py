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
        return self.client.invoke(
            "POST", f"{BATCH}/tasks", access_token=accessToken, body=_as_dict(btcInDTO)
        )

    def queryOneTask(
        self,
        taskId: str,
        select: str | None,
        appId: str | None,
        accessToken: str,
    ) -> str:
        """One task's status and counters (`select="tag"` adds its tags)."""
        return self.client.invoke(
            "GET",
            f"{BATCH}/tasks/{taskId}",
            access_token=accessToken,
            query={"select": select, "appId": appId},
        )

    def queryTaskDetails(
        self,
        qtdInDTO: QueryTaskDetailsInDTO | dict[str, Any],
        accessToken: str,
    ) -> str:
        """One page of a task's subtasks."""
        return self.client.invoke(
            "GET", f"{BATCH}/taskDetails", access_token=accessToken, query=_as_dict(qtdInDTO)
        )


class SignalDelivery(_Api):
    """Single-device commands (v1.4.0)."""

    def postDeviceCommand(
        self,
        pdcInDTO: PostDeviceCommandInDTO | dict[str, Any],
        appId: str | None,
        accessToken: str,
    ) -> str:
        """Send (or hold) a command for one device; the command record text."""
        return self.client.invoke(
            "POST",
            f"{CMD}/deviceCommands",
            access_token=accessToken,
            query={"appId": appId},
            body=_as_dict(pdcInDTO),
        )

    def queryDeviceCommand(
        self,
        qdcInDTO: QueryDeviceCommandInDTO | dict[str, Any],
        accessToken: str,
    ) -> str:
        """One page of commands."""
        return self.client.invoke(
            "GET", f"{CMD}/deviceCommands", access_token=accessToken, query=_as_dict(qdcInDTO)
        )

    def updateDeviceCommand(
        self,
        udcInDTO: UpdateDeviceCommandInDTO | dict[str, Any],
        deviceCommandId: str,
        appId: str | None,
        accessToken: str,
    ) -> str:
        """Cancel one command (status CANCELED)."""
        return self.client.invoke(
            "PUT",
            f"{CMD}/deviceCommands/{deviceCommandId}",
            access_token=accessToken,
            query={"appId": appId},
            body=_as_dict(udcInDTO),
        )

    def createDeviceCmdCancelTask(
        self,
        cdcctInDTO: CreateDeviceCmdCancelTaskInDTO | dict[str, Any],
        appId: str | None,
        accessToken: str,
    ) -> str:
        """Cancel every pending command of a device."""
        return self.client.invoke(
            "POST",
            f"{CMD}/deviceCommandCancelTasks",
            access_token=accessToken,
            query={"appId": appId},
            body=_as_dict(cdcctInDTO),
        )

    def queryDeviceCmdCancelTask(
        self,
        qdcctInDTO: QueryDeviceCmdCancelTaskInDTO | dict[str, Any],
        accessToken: str,
    ) -> str:
        """One page of cancel tasks."""
        return self.client.invoke(
            "GET",
            f"{CMD}/deviceCommandCancelTasks",
            access_token=accessToken,
            query=_as_dict(qdcctInDTO),
        )


class DeviceUpgrade(_Api):
    """Firmware/software upgrades (iodm); the server side comes with the upgrade issue."""

    def queryUpgradeSubTask(
        self,
        qustInDTO: QueryUpgradeSubTaskInDTO | dict[str, Any],
        operationId: str,
        accessToken: str,
    ) -> str:
        """One page of an upgrade task's sub-operations (S004)."""
        return self.client.invoke(
            "GET",
            f"{IODM}/operations/{operationId}/subOperations",
            access_token=accessToken,
            query=_as_dict(qustInDTO),
        )
