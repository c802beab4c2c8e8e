"""A Python client of the legacy OceanConnect northbound API with the original SDK's names.

    from fleetbatch.sdk.legacy import Authentication, BatchProcess, BatchTaskCreateInDTO
    info = {"platformIp": "127.0.0.1", "platformPort": 8743, "appId": app, "secret": secret}
    token = json.loads(Authentication().getAuthToken(info))["accessToken"]
    task_id = json.loads(BatchProcess().createBatchTask(dto, token))["taskID"]

Differences from Huawei's original (spec: oceanconnect-legacy §7): an error answer raises
`NorthApiException` (HTTP status, error_code, error_desc) instead of coming back as text;
the platform is given as a `NorthApiClient` (or clientInfo dict), not an ini file; query
values are URL-encoded and numbers accepted; TLS verification is configurable.
"""

from fleetbatch.sdk.legacy.api import (
    Authentication,
    BatchProcess,
    DeviceUpgrade,
    SignalDelivery,
    set_default_client,
)
from fleetbatch.sdk.legacy.client import NorthApiClient, NorthApiException
from fleetbatch.sdk.legacy.dto import (
    AuthOutDTO,
    AuthRefreshInDTO,
    BatchTaskCreateInDTO,
    BatchTaskCreateOutDTO,
    CommandDTO,
    CommandDTOV4,
    CreateDeviceCmdCancelTaskInDTO,
    ObjectNode,
    PostDeviceCommandInDTO,
    QueryDeviceCmdCancelTaskInDTO,
    QueryDeviceCommandInDTO,
    QueryOneTaskOutDTO,
    QueryTaskDetailDTOCloud2NA,
    QueryTaskDetailsInDTO,
    QueryTaskDetailsOutDTO,
    QueryUpgradeSubTaskInDTO,
    TagDTO2,
    UpdateDeviceCommandInDTO,
)

__all__ = [
    "AuthOutDTO",
    "AuthRefreshInDTO",
    "Authentication",
    "BatchProcess",
    "BatchTaskCreateInDTO",
    "BatchTaskCreateOutDTO",
    "CommandDTO",
    "CommandDTOV4",
    "CreateDeviceCmdCancelTaskInDTO",
    "DeviceUpgrade",
    "NorthApiClient",
    "NorthApiException",
    "ObjectNode",
    "PostDeviceCommandInDTO",
    "QueryDeviceCmdCancelTaskInDTO",
    "QueryDeviceCommandInDTO",
    "QueryOneTaskOutDTO",
    "QueryTaskDetailDTOCloud2NA",
    "QueryTaskDetailsInDTO",
    "QueryTaskDetailsOutDTO",
    "QueryUpgradeSubTaskInDTO",
    "SignalDelivery",
    "TagDTO2",
    "UpdateDeviceCommandInDTO",
    "set_default_client",
]
