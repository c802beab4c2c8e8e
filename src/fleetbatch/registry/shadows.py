"""Device shadows of one device: read them, change what is desired (v5 single-device API)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleetbatch.domain.documents import normalise_document
from fleetbatch.domain.errors import Conflict
from fleetbatch.domain.shadows import ServiceShadow
from fleetbatch.domain.tasks import TaskType
from fleetbatch.registry.common import Service, require_device
from fleetbatch.store import shadows as shadow_rows


class ShadowService(Service):
    """The shadows of single devices (a batch changes them through `updateDeviceShadows`)."""

    async def get(self, project_id: str, device_id: str) -> list[ServiceShadow]:
        """Every service shadow of the project's device, by service id."""
        async with self.store.read() as conn:
            device = await require_device(conn, project_id, device_id)
            return await shadow_rows.get_shadow(conn, device.pk)

    async def update_desired(
        self,
        project_id: str,
        device_id: str,
        changes: Sequence[tuple[str, Mapping[str, Any], int | None]],
    ) -> list[ServiceShadow]:
        """Merge desired changes (service id, properties, expected version or None).

        Checked as a batch document is (≤5 services, ≤10 KB, key characters); a given
        version must be the service's current one (0 before anything was desired), or
        Conflict is raised and nothing changes.
        """
        document = normalise_document(
            TaskType.UPDATE_DEVICE_SHADOWS,
            {"shadow": [{"service_id": s, "desired": dict(d)} for s, d, _ in changes]},
        )
        merged = [(item["service_id"], item["desired"]) for item in document["shadow"]]
        async with self.store.write() as conn:
            device = await require_device(conn, project_id, device_id)
            after = await shadow_rows.merge_desired(conn, [device.pk], merged, self.clock.now_ms())
            versions = {shadow.service_id: shadow.version for shadow in after[device.pk]}
            for service_id, _, expected in changes:
                # checked on the versions the locked merge saw: no race between check and write
                if expected is not None and versions[service_id] - 1 != expected:
                    raise Conflict(
                        f"shadow {service_id} is at version {versions[service_id] - 1}, "
                        f"not {expected}"
                    )
            return await shadow_rows.get_shadow(conn, device.pk)
