"""Callback outbox rules (pure): which command phases are pushed, the legacy body, back-off."""

from __future__ import annotations

from typing import Any

# spec: oceanconnect-legacy §3.4 - the statuses an application's callbackUrl hears about
NOTIFIED_PHASES = ("SENT", "DELIVERED", "SUCCESSFUL", "FAILED", "TIMEOUT")


def command_status_body(device_id: str, command_id: str, phase: str, detail: Any) -> dict[str, Any]:
    """The legacy NotifyNBCommandStatusChangedDTO body: no notifyType, resultDetail always."""
    return {
        "deviceId": device_id,
        "commandId": command_id,
        "result": {"resultCode": phase, "resultDetail": detail},
    }


def result_detail(answer: Any) -> Any:
    """`resultDetail`: the paras of the device's command response (None when it had none)."""
    if isinstance(answer, dict) and "paras" in answer:
        return answer["paras"]
    return answer


def retry_delay_s(failures: int, base_s: float, max_s: float) -> float:
    """Exponential back-off: `base_s` after the first failure, doubling, at most `max_s`."""
    if failures <= 0:
        return 0.0
    return float(min(max_s, base_s * 2 ** min(failures - 1, 62)))
