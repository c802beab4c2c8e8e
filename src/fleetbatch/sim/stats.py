"""The simulator's counters: one mutable record per process, summed across processes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class SimStats:
    """Running totals of what the simulated devices did, plus `connected` (a current level)."""

    connected: int = 0  # ready now: CONNACK 0, and SUBACK when subscribing
    connects: int = 0  # CONNACK 0 received, first connects and reconnects
    reconnects: int = 0  # CONNACK 0 of a device that had been connected before
    disconnects: int = 0  # connections lost or dropped after they were ready
    connect_errors: int = 0  # TCP/TLS failures, timeouts, connections lost before ready
    refused: dict[int, int] = field(default_factory=dict)  # CONNACK return code -> count
    commands_received: int = 0
    commands_answered: int = 0  # responses sent, successful or not
    commands_failed: int = 0  # responses sent with a non-zero result_code
    answers_lost: int = 0  # delayed answers whose connection went away before they were due
    requests_ignored: int = 0  # commands and property requests a silent device dropped
    properties_set: int = 0
    properties_get: int = 0
    messages_received: int = 0
    shadow_responses: int = 0
    events_received: int = 0
    version_reports: int = 0
    reports_sent: int = 0
    publish_acks_received: int = 0
    pings_sent: int = 0
    errors: int = 0  # malformed packets, unexpected packets, dead connections

    def snapshot(self) -> dict[str, Any]:
        """A plain-dict copy (refusal codes as string keys, as JSON wants)."""
        data = asdict(self)
        data["refused"] = {str(code): count for code, count in sorted(self.refused.items())}
        return data

    @property
    def refused_total(self) -> int:
        """Devices refused by CONNACK, all return codes together."""
        return sum(self.refused.values())


FIELD_NAMES = tuple(f.name for f in fields(SimStats))


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum `SimStats.snapshot()` dicts from several processes (keys in `SimStats` order)."""
    refused: dict[str, int] = {}
    for snapshot in snapshots:
        for code, count in snapshot.get("refused", {}).items():
            refused[code] = refused.get(code, 0) + int(count)
    total: dict[str, Any] = {}
    for name in FIELD_NAMES:
        if name == "refused":
            total[name] = dict(sorted(refused.items(), key=lambda item: int(item[0])))
        else:
            total[name] = sum(int(snapshot.get(name, 0)) for snapshot in snapshots)
    return total
