"""`createCommands`: a synchronous command per device, done when the device answers.

Success is the device's answer with result_code 0 within the command timeout; the answer
becomes the subtask's output. Another result_code fails the subtask and is kept in the
output. An offline device fails at once (its retries, if any, come later).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from fleetbatch.clock import Clock
from fleetbatch.devices import topics
from fleetbatch.devices.channel import DeviceChannel, DeviceOffline, NoResponse
from fleetbatch.devices.topics import CommandResponse, Uplink
from fleetbatch.domain.errors import Unavailable
from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.tasks import DEFAULT_COMMAND_TIMEOUT_S, ErrorCode, Task, request_id_for
from fleetbatch.engine.executors.base import Report, TaskRun
from fleetbatch.store.subtasks import Claimed, Outcome

S = SubtaskStatus


def answer_outcome(run: TaskRun, claimed: Claimed, answer: Uplink, now_ms: int) -> Outcome:
    """The outcome a device's command answer gives one attempt."""
    body = answer.body if isinstance(answer.body, dict) else None
    output = orjson.dumps(body).decode() if body is not None else None
    code = answer.result_code if isinstance(answer, CommandResponse) else None
    if code == 0:
        return run.outcome(claimed, S.SUCCESS, now_ms, output=output)
    return run.outcome(
        claimed,
        S.FAIL,
        now_ms,
        output=output,
        error_code=ErrorCode.DEVICE_RESULT,
        error_msg=(
            f"the device answered result_code {code}"
            if code is not None
            else "the device's answer carries no result_code"
        ),
    )


def failure_outcome(run: TaskRun, claimed: Claimed, error: BaseException, now_ms: int) -> Outcome:
    """The outcome of an attempt that got no answer."""
    if isinstance(error, NoResponse):
        return run.outcome(
            claimed, S.TIMEOUT, now_ms, error_code=ErrorCode.NO_RESPONSE, error_msg=str(error)
        )
    if isinstance(error, DeviceOffline):
        return run.outcome(
            claimed, S.FAIL, now_ms, error_code=ErrorCode.DEVICE_OFFLINE, error_msg=str(error)
        )
    return run.outcome(claimed, S.FAIL, now_ms, error_code=ErrorCode.INTERNAL, error_msg=str(error))


class CommandExecutor:
    """Sends each claimed subtask's command and reports the device's answer."""

    kind: ClassVar[str] = "device"
    default_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S

    def __init__(self, channel: DeviceChannel, clock: Clock, *, timeout_s: float | None = None):
        self.channel = channel
        self.clock = clock
        if timeout_s is not None:
            self.default_timeout_s = timeout_s

    def claim_phase(self, task: Task) -> str | None:
        return None

    def online_only(self, task: Task) -> bool:
        return False

    def dispatch(self, run: TaskRun, claimed: Sequence[Claimed], report: Report) -> None:
        document = run.task.document
        service_id = document.get("service_id")
        command_name = document.get("command_name")
        paras = document.get("paras", {})
        for item in claimed:
            downlink = topics.command(
                item.target,
                request_id_for(item.id, item.attempt),
                service_id=service_id,
                command_name=command_name,
                paras=paras,
            )
            try:
                future = self.channel.submit(downlink, timeout_s=run.timeout_s)
            except Unavailable as exc:
                report(run, failure_outcome(run, item, exc, self.clock.now_ms()))
                continue
            future.add_done_callback(self._done_callback(run, item, report))

    def _done_callback(self, run: TaskRun, item: Claimed, report: Report) -> Any:
        def done(future: asyncio.Future[Uplink]) -> None:
            now = self.clock.now_ms()
            if future.cancelled():
                report(run, failure_outcome(run, item, NoResponse(item.target, 0), now))
            elif (error := future.exception()) is not None:
                report(run, failure_outcome(run, item, error, now))
            else:
                report(run, answer_outcome(run, item, future.result(), now))

        return done
