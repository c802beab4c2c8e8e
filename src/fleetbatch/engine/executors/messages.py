"""`createMessages`: a down message per device, done when the device acknowledges it.

spec: iotda-v5 §5.4 (create_message), device-mqtt §2.2. The message goes at QoS 1 and the
device's PUBACK is its only acknowledgement (in broker mode, the broker's PUBACK).
`payload_format` standard wraps the message in the system envelope (`id`, `name`,
`content`); raw sends it as it is, a base64 message decoded to its bytes. `topic` sends
it on the custom topic `user/{topic}`, `topic_full_name` on the topic named; a device
receives those only once it subscribed to them.

An offline device fails at once; no acknowledgement within the timeout times out. IoTDA's
`ttl` (it keeps messages for offline devices) and `properties` (MQTT 5) are not acted on.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import orjson

from fleetbatch.clock import Clock
from fleetbatch.devices import topics
from fleetbatch.devices.channel import Delivery, DeviceChannel
from fleetbatch.devices.topics import Downlink
from fleetbatch.domain.errors import Unavailable
from fleetbatch.domain.states import SubtaskStatus
from fleetbatch.domain.tasks import DEFAULT_DELIVERY_TIMEOUT_S, ErrorCode, Task, request_id_for
from fleetbatch.engine.executors.base import Report, TaskRun
from fleetbatch.engine.executors.commands import failure_outcome
from fleetbatch.store.subtasks import Claimed, Outcome

S = SubtaskStatus


def raw_payload(message: Any, encoding: str | None) -> bytes:
    """The bytes a raw message carries: base64 decoded, text as UTF-8, anything else as JSON."""
    if encoding == "base64":
        return base64.b64decode(message)
    if isinstance(message, str):
        return message.encode()
    return orjson.dumps(message)


def message_downlink(
    device_id: str, document: Mapping[str, Any], message_id: str, raw: bytes | None = None
) -> Downlink:
    """The downlink of one device's message; `raw` is the payload for `payload_format` raw."""
    if raw is not None:
        downlink = topics.raw_message(device_id, raw)
    else:
        downlink = topics.message(
            device_id, document["message"], message_id=message_id, name=document.get("name")
        )
    if (suffix := document.get("topic")) is not None:
        return Downlink(device_id, topics.user_topic(device_id, suffix), downlink.payload)
    if (full_name := document.get("topic_full_name")) is not None:
        return Downlink(device_id, full_name, downlink.payload)
    return downlink


def delivery_outcome(
    run: TaskRun, claimed: Claimed, delivery: Delivery, output: str, now_ms: int
) -> Outcome:
    """The outcome of one attempt from what became of its message."""
    if delivery is Delivery.DELIVERED:
        return run.outcome(claimed, S.SUCCESS, now_ms, output=output)
    if delivery is Delivery.OFFLINE:
        return run.outcome(
            claimed,
            S.FAIL,
            now_ms,
            output=output,
            error_code=ErrorCode.DEVICE_OFFLINE,
            error_msg=f"device {claimed.target} is offline",
        )
    return run.outcome(
        claimed,
        S.TIMEOUT,
        now_ms,
        output=output,
        error_code=ErrorCode.NOT_ACKNOWLEDGED,
        error_msg="the device did not acknowledge the message in time (or is not subscribed)",
    )


class MessageExecutor:
    """Sends each claimed subtask's message and reports the device's acknowledgement."""

    kind: ClassVar[str] = "device"
    default_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S

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
        raw = None
        if document.get("payload_format") == "raw":
            raw = raw_payload(document["message"], document.get("encoding"))
        given_id = document.get("message_id")
        for item in claimed:
            message_id = given_id or request_id_for(item.id, item.attempt)
            output = orjson.dumps({"message_id": message_id}).decode()
            downlink = message_downlink(item.target, document, message_id, raw)
            try:
                # post, not send: a future and a callback per message, no task each
                future = self.channel.post(downlink, timeout_s=run.timeout_s)
            except Unavailable as exc:
                report(run, failure_outcome(run, item, exc, self.clock.now_ms()))
                continue
            future.add_done_callback(self._done_callback(run, item, output, report))

    def _done_callback(
        self, run: TaskRun, item: Claimed, output: str, report: Report
    ) -> Callable[[asyncio.Future[Delivery]], None]:
        def done(future: asyncio.Future[Delivery]) -> None:
            now = self.clock.now_ms()
            if future.cancelled():
                delivery = Delivery.UNACKNOWLEDGED
            elif (error := future.exception()) is not None:
                report(run, failure_outcome(run, item, error, now))
                return
            else:
                delivery = future.result()
            report(run, delivery_outcome(run, item, delivery, output, now))

        return done
