"""The fleet file: the devices `admin create-devices` registered, with their secrets.

Shape: `{"app_id": ..., "project_id": ..., "product_id": ..., "devices": [{"device_id",
"node_id", "product_id", "secret"}, ...]}`. The simulator reads it. It holds secrets, so it
is written with mode 0600, and only appears once the devices are committed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from fleetbatch.domain.registry import CreatedDevice


class FleetFileWriter:
    """Streams devices into a temporary file; `commit` moves it into place."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file: IO[str] = os.fdopen(fd, "w")
        head = json.dumps(header)[:-1]  # reopen the object to append "devices"
        self._file.write(head + (", " if header else "") + '"devices": [\n')
        self._count = 0

    def add(self, devices: Sequence[CreatedDevice]) -> None:
        """Append devices (called once per committed-or-not chunk)."""
        for device in devices:
            entry = {
                "device_id": device.device_id,
                "node_id": device.node_id,
                "product_id": device.product_id,
                "secret": device.secret,
            }
            self._file.write((",\n" if self._count else "") + json.dumps(entry))
            self._count += 1

    def commit(self) -> None:
        """Finish the JSON and atomically replace `path` with it."""
        self._file.write("\n]}\n")
        self._file.close()
        self._tmp.replace(self.path)

    def discard(self) -> None:
        """Drop the temporary file (the devices were not created)."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)
