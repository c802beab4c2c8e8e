"""Reading the fleet file (`fleetbatch.fleetfile`) the simulator connects devices from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class FleetDevice:
    """One device of the fleet file: its id and the secret it signs its password with."""

    device_id: str
    secret: str
    node_id: str = ""
    product_id: str = ""


@dataclass(frozen=True, slots=True)
class FleetFile:
    """The fleet file's header and devices."""

    devices: list[FleetDevice]
    app_id: str | None = None
    project_id: str | None = None
    product_id: str | None = None


def _text(entry: dict[str, Any], key: str, where: str, *, required: bool) -> str:
    value = entry.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ValueError(f"{where}: {key} must be a non-empty string")
    return value


def parse_fleet(document: Any, source: str = "fleet file") -> FleetFile:
    """Validate a decoded fleet file; raises ValueError naming the first problem."""
    if not isinstance(document, dict):
        raise ValueError(f"{source}: expected a JSON object with a devices list")
    entries = document.get("devices")
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a devices list")
    devices: list[FleetDevice] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        where = f"{source}: devices[{position}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object")
        device_id = _text(entry, "device_id", where, required=True)
        if device_id in seen:
            raise ValueError(f"{where}: device_id {device_id!r} appears twice")
        seen.add(device_id)
        devices.append(
            FleetDevice(
                device_id,
                _text(entry, "secret", where, required=True),
                _text(entry, "node_id", where, required=False),
                _text(entry, "product_id", where, required=False),
            )
        )
    header = {
        key: value if isinstance(value, str) else None
        for key in ("app_id", "project_id", "product_id")
        for value in (document.get(key),)
    }
    return FleetFile(devices, **header)


def load_fleet(path: Path) -> FleetFile:
    """Read and validate a fleet file (blocking); raises ValueError with a one-line reason."""
    try:
        with path.open("rb") as file:
            document = json.load(file)
    except FileNotFoundError:
        raise ValueError(f"fleet file {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot read fleet file {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"fleet file {path} is not valid JSON: {exc}") from None
    return parse_fleet(document, f"fleet file {path}")
