"""The legacy OceanConnect dialect's words and limits over the internal model (pure).

DESIGN's mapping table (internal → legacy batch DeviceCmd) and the seeds' limits
(S000 queryOneTask, S001 taskDetails, S003 createBatchTask) live here, so the HTTP layer
and the tests share one source for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import Progress

S = SubtaskStatus
T = TaskStatus

# S003: timeout in minutes, names, tags, command fields
MIN_TIMEOUT_MIN = 10
MAX_TIMEOUT_MIN = 2880
MAX_TASK_NAME = 256
MAX_TAG_NAME = 128
MAX_TAG_VALUE = 1024
MAX_SERVICE_ID = 64
MAX_METHOD = 128
MAX_RETRANSMIT = 3
MAX_APP_ID = 64
MAX_CALLBACK_URL = 1024
# S001: taskDetails paging
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 250

DEVICE_CMD = "DeviceCmd"
# S000 lists these types; only DeviceCmd can be created here (S003)
DOCUMENTED_TASK_TYPES = frozenset(
    {"DeviceReg", DEVICE_CMD, "DeviceLocation", "DeviceMod", "DeviceDel", "DeviceLicense"}
)
PARAM_TYPES = frozenset(
    {"DeviceList", "DeviceType", "DeviceArea", "GroupList", "Broadcast", "GroupIdList"}
)

TASK_STATUS: Mapping[TaskStatus, str] = MappingProxyType(
    {
        T.INITIALIZING: "Pending",
        T.WAITING: "Pending",
        T.PROCESSING: "Running",
        T.STOPPING: "Running",
        T.STOPPED: "Complete",
        T.SUCCESS: "Complete",
        T.FAIL: "Complete",
        T.PARTIAL_SUCCESS: "Complete",
        T.TIMEOUT: "Timeout",
    }
)

# DESIGN: a stopped subtask counts as expired; it is shown as failed (S001 has no other word)
SUBTASK_STATUS: Mapping[SubtaskStatus, str] = MappingProxyType(
    {
        S.WAITING: "Pending",
        S.PROCESSING: "WaitResult",
        S.FAIL_WAIT_RETRY: "WaitResult",
        S.SUCCESS: "Success",
        S.FAIL: "Fail",
        S.STOPPED: "Fail",
        S.TIMEOUT: "Timeout",
    }
)


def statuses_for(wire_status: str) -> tuple[SubtaskStatus, ...] | None:
    """The internal states an S001 status filter stands for; None for an unknown word."""
    found = tuple(sorted(s for s, word in SUBTASK_STATUS.items() if word == wire_status))
    return found or None


def permillage(part: int, whole: int) -> int:
    """`part` of `whole` in thousandths, rounded down (S000); 0 of nothing is 0."""
    if whole <= 0:
        return 0
    return min(1000, part * 1000 // whole)


def task_counts(progress: Progress) -> dict[str, int]:
    """S000's counters from a task's progress.

    completeCnt is success + fail + timeout; stopped subtasks are the expired ones
    (never executed); progress counts those too, so a stopped task reads 1000.
    """
    complete = progress.success + progress.fail + progress.timeout
    return {
        "totalCnt": progress.total,
        "successCnt": progress.success,
        "failCnt": progress.fail,
        "timeoutCnt": progress.timeout,
        "expiredCnt": progress.stopped,
        "completeCnt": complete,
        "progress": permillage(complete + progress.stopped, progress.total),
        "successRate": permillage(progress.success, progress.total),
    }


def task_from(source: str) -> str:
    """S000 taskFrom: tasks made through an API are Northbound, the others Portal."""
    return "Northbound" if source in ("legacy", "v5") else "Portal"


# The per-app call limit (S000/S001/S003 1010009: "100 calls per minute by default") as a
# sliding window over one-second slots: a call is admitted when the app's calls counted in
# the slots from 60 s before the current slot's start up to now are fewer than the limit.
# The counted range always reaches back at least 60 s, so no 60-second span ever holds more
# admitted calls than the limit; an admitted call is counted for 60 to 61 s.
CALL_SLOT_MS = 1_000
CALL_WINDOW_MS = 60_000


def call_slot(now_ms: int) -> int:
    """Start (epoch ms) of the one-second slot a call made at `now_ms` is counted in."""
    return now_ms - now_ms % CALL_SLOT_MS


def first_counted_slot(now_ms: int) -> int:
    """Start of the oldest slot whose calls still count against the limit at `now_ms`."""
    return call_slot(now_ms) - CALL_WINDOW_MS
