"""Device shadows: the desired and reported properties of one service of one device.

Pure: no I/O. The merge rules are IoTDA's (spec: iotda-v5 §5.5): a desired change is merged
into what is there, a `null` value deletes its key and an empty object clears them all.
A device's report is merged key by key over what it reported before (a report may carry
some properties only), its values taken as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ServiceShadow:
    """One service's shadow; `version` grows with every change of `desired`."""

    device_pk: int
    service_id: str
    desired: Mapping[str, Any] | None
    desired_at: int | None
    reported: Mapping[str, Any] | None
    reported_at: int | None
    version: int


def merge_properties(
    current: Mapping[str, Any] | None, change: Mapping[str, Any]
) -> dict[str, Any]:
    """`change` merged into `current`: a None value deletes its key, `{}` clears everything."""
    if not change:
        return {}
    merged = dict(current or {})
    for key, value in change.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def pushed_properties(change: Mapping[str, Any]) -> dict[str, Any]:
    """What a desired change asks the device to set: its values, deletions left out."""
    return {key: value for key, value in change.items() if value is not None}
