"""`createAsyncCommands`: a command per device whose life is kept in the subtask's phase.

spec: iotda-v5 §5.4 (create_async_command, show_async_device_command). PENDING from creation,
SENT when claimed and written, DELIVERED on the device's PUBACK (the broker's, in broker
mode), then SUCCESSFUL (an answer with result_code 0), FAILED (another code; or, sent
`immediately`, an offline device) or TIMEOUT (no answer in time). EXPIRED is the engine
sweeper's: a held command whose `expire_time` (from the task's creation) passed first.

`send_strategy` delay holds each command until its device is ONLINE in the registry: only
those subtasks are claimed, and the engine looks again whenever a device connects. A device
that left between that check and the send is held again, not failed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import ClassVar

from fleetbatch.clock import Clock
from fleetbatch.devices import topics
from fleetbatch.devices.channel import DeviceChannel, DeviceOffline, NoResponse
from fleetbatch.devices.topics import Uplink
from fleetbatch.domain.errors import Unavailable
from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.tasks import DEFAULT_COMMAND_TIMEOUT_S, Task, request_id_for
from fleetbatch.engine.executors.base import PhaseReport, Report, TaskRun
from fleetbatch.engine.executors.commands import answer_outcome, failure_outcome
from fleetbatch.store.subtasks import Claimed, Outcome

S = SubtaskStatus

PENDING = "PENDING"
SENT = "SENT"
DELIVERED = "DELIVERED"
SUCCESSFUL = "SUCCESSFUL"
FAILED = "FAILED"
TIMEOUT = "TIMEOUT"
EXPIRED = "EXPIRED"


def is_delayed(task: Task) -> bool:
    """Whether the task's commands wait for their devices to come online.

    An `expire_time` of 0 means "do not cache": the command goes out at once whatever the
    strategy (IoTDA CreateAsyncCommand).
    """
    document = task.document
    return document.get("send_strategy", "delay") == "delay" and document.get("expire_time") != 0


def with_phase(outcome: Outcome) -> Outcome:
    """The outcome with the async-command status its subtask status stands for."""
    if outcome.status is S.SUCCESS:
        phase = SUCCESSFUL
    elif outcome.status is S.TIMEOUT:
        phase = TIMEOUT
    else:
        phase = FAILED
    return replace(outcome, phase=phase)


class AsyncCommandExecutor:
    """Sends each claimed subtask's command; the phase follows it to the device and back."""

    kind: ClassVar[str] = "device"
    default_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S

    def __init__(self, channel: DeviceChannel, clock: Clock, *, timeout_s: float | None = None):
        self.channel = channel
        self.clock = clock
        self._phase_report: PhaseReport | None = None
        if timeout_s is not None:
            self.default_timeout_s = timeout_s

    def bind_phase_report(self, phase_report: PhaseReport) -> None:
        """Where DELIVERED goes (the engine writes it in batches)."""
        self._phase_report = phase_report

    def claim_phase(self, task: Task) -> str | None:
        return SENT

    def online_only(self, task: Task) -> bool:
        return is_delayed(task)

    def dispatch(self, run: TaskRun, claimed: Sequence[Claimed], report: Report) -> None:
        document = run.task.document
        service_id = document.get("service_id")
        command_name = document.get("command_name")
        paras = document.get("paras", {})
        delayed = is_delayed(run.task)
        phase_report = self._phase_report
        for item in claimed:
            downlink = topics.command(
                item.target,
                request_id_for(item.id, item.attempt),
                service_id=service_id,
                command_name=command_name,
                paras=paras,
            )
            on_delivered = (
                functools.partial(phase_report, item, DELIVERED) if phase_report else None
            )
            try:
                future = self.channel.submit(
                    downlink, timeout_s=run.timeout_s, on_delivered=on_delivered
                )
            except DeviceOffline as exc:
                now = self.clock.now_ms()
                if delayed:
                    # gone since the claim saw it online: held again until it connects
                    report(run, run.outcome(item, S.WAITING, now, phase=PENDING))
                else:
                    report(run, with_phase(failure_outcome(run, item, exc, now)))
                continue
            except Unavailable as exc:
                report(run, with_phase(failure_outcome(run, item, exc, self.clock.now_ms())))
                continue
            future.add_done_callback(self._done_callback(run, item, report))

    def _done_callback(
        self, run: TaskRun, item: Claimed, report: Report
    ) -> Callable[[asyncio.Future[Uplink]], None]:
        def done(future: asyncio.Future[Uplink]) -> None:
            now = self.clock.now_ms()
            if future.cancelled():
                outcome = failure_outcome(run, item, NoResponse(item.target, run.timeout_s), now)
            elif (error := future.exception()) is not None:
                outcome = failure_outcome(run, item, error, now)
            else:
                outcome = answer_outcome(run, item, future.result(), now)
            report(run, with_phase(outcome))

        return done
