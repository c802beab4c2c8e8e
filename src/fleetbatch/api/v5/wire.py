"""IoTDA v5 wire words and codes: the only place they meet the internal vocabulary.

Status words are spelled as IoTDA spells them (`Waitting` included; spec: iotda-v5 §4.4,
§4.8, seed 002). The internal states with no IoTDA word (`timeout`) show as the nearest one.
"""

from __future__ import annotations

from types import MappingProxyType

from fleetbatch.domain.errors import (
    AlreadyExists,
    AuthFailed,
    Conflict,
    FleetbatchError,
    InvalidInput,
    LimitExceeded,
    NotFound,
    Unavailable,
)
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import ErrorCode, Progress

S = SubtaskStatus
T = TaskStatus

SUBTASK_WORDS = MappingProxyType(
    {
        S.WAITING: "Waitting",
        S.PROCESSING: "Processing",
        S.SUCCESS: "Success",
        S.FAIL: "Fail",
        S.FAIL_WAIT_RETRY: "FailWaitRetry",
        # a device that never answered failed, as far as IoTDA's words go
        S.TIMEOUT: "Fail",
        S.STOPPED: "Stopped",
    }
)
# ShowBatchTask's task_detail_status filter: each word and the states it covers
SUBTASK_FILTERS = MappingProxyType(
    {
        "Success": (S.SUCCESS,),
        "Fail": (S.FAIL, S.TIMEOUT),
        "Processing": (S.PROCESSING,),
        "FailWaitRetry": (S.FAIL_WAIT_RETRY,),
        "Stopped": (S.STOPPED,),
        "Waitting": (S.WAITING,),
        # fleetbatch never removes a subtask from a task: the filter matches none
        "Removed": (),
    }
)
TASK_WORDS = MappingProxyType(
    {
        T.INITIALIZING: "Initializing",
        T.WAITING: "Waitting",
        T.PROCESSING: "Processing",
        T.STOPPING: "Stopping",
        T.STOPPED: "Stopped",
        T.SUCCESS: "Success",
        T.FAIL: "Fail",
        T.PARTIAL_SUCCESS: "PartialSuccess",
    }
)
TASK_FILTERS = MappingProxyType({word: status for status, word in TASK_WORDS.items()})


def task_word(status: TaskStatus, progress: Progress) -> str:
    """A task's status word; a task whose own timeout passed reads as how it ended."""
    if status is T.TIMEOUT:
        return "PartialSuccess" if progress.success else "Fail"
    return TASK_WORDS[status]


def progress_wire(progress: Progress) -> dict[str, int]:
    """TaskProgress: every counter, `waitting` spelled IoTDA's way, timeouts counted as fail."""
    return {
        "total": progress.total,
        "processing": progress.processing,
        "success": progress.success,
        "fail": progress.fail + progress.timeout,
        "waitting": progress.waiting,
        "fail_wait_retry": progress.fail_wait_retry,
        "stopped": progress.stopped,
        "removed": progress.removed,
    }


# a subtask's internal failure reason -> IoTDA's code (spec: iotda-v5 §3.2); others pass as is
SUBTASK_ERROR_CODES = MappingProxyType(
    {
        ErrorCode.DEVICE_NOT_FOUND.value: "IOTDA.014000",
        ErrorCode.DEVICE_OFFLINE.value: "IOTDA.014016",
        ErrorCode.NO_RESPONSE.value: "IOTDA.014111",
    }
)

# --- request errors (spec: iotda-v5 §3) ----------------------------------------------------

INVALID_INPUT = (400, "IOTDA.000006", "Invalid input data.")
BAD_REQUEST = (400, "IOTDA.000008", "Invalid input. Bad request.")
BAD_TIME = (400, "IOTDA.000009", "Invalid input. Invalid time format.")
BAD_LIMIT = (400, "IOTDA.000017", "Invalid input. The specified parameter 'limit' is out of range.")
BAD_MARKER = (
    400,
    "IOTDA.000018",
    "Invalid input. The specified parameter 'marker' is out of range.",
)
AUTH_FAILED = (401, "IOTDA.000002", "Authentication failed.")
DEVICE_NOT_FOUND = (404, "IOTDA.014000", "The device does not exist.")
# IoTDA's code for other missing resources is unconfirmed (spec §3.2): the generic
# invalid-input code with HTTP 404, which is what clients (Terraform) test
NOT_FOUND = (404, "IOTDA.000006", "The resource does not exist.")
DEVICE_EXISTS = (400, "IOTDA.014031", "Invalid input. The device already exists.")
INTERNAL = (500, "IOTDA.000001", "Internal server error.")
UNAVAILABLE = (503, "IOTDA.000001", "Service temporarily unavailable.")

# each error family -> (HTTP status, error_code, error_msg prefix); the most specific class wins
ERRORS: MappingProxyType[type[FleetbatchError], tuple[int, str, str]] = MappingProxyType(
    {
        InvalidInput: INVALID_INPUT,
        NotFound: NOT_FOUND,
        AlreadyExists: (400, "IOTDA.000006", "Invalid input. The resource already exists."),
        Conflict: (400, "IOTDA.000006", "Invalid input. Operation not allowed now."),
        LimitExceeded: (400, "IOTDA.000006", "Invalid input. A limit would be exceeded."),
        AuthFailed: AUTH_FAILED,
        Unavailable: UNAVAILABLE,
        FleetbatchError: INTERNAL,
    }
)
# query and body fields whose range errors have their own code
FIELD_CODES = MappingProxyType(
    {"limit": BAD_LIMIT, "marker": BAD_MARKER, "start_time": BAD_TIME, "end_time": BAD_TIME}
)


def error_for(exc: FleetbatchError) -> tuple[int, str, str]:
    """(HTTP status, error_code, error_msg) for an error raised inside."""
    if isinstance(exc, NotFound) and exc.kind == "device":
        return DEVICE_NOT_FOUND
    if isinstance(exc, AlreadyExists) and exc.kind == "device":
        return DEVICE_EXISTS
    if isinstance(exc, InvalidInput) and exc.field in FIELD_CODES:
        return FIELD_CODES[exc.field]
    for family in type(exc).__mro__:
        if family in ERRORS:
            return ERRORS[family]
    return INTERNAL
