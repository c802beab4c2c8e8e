"""createCommands through the engine, the built-in transport and simulated devices."""

from __future__ import annotations

from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import NewTask, TaskType
from fleetbatch.settings import Settings
from support.engine import check_counters, engine_settings, running_fleet

COMMAND = {"service_id": "svc", "command_name": "reboot", "paras": {"delay": 1}}


async def test_a_command_task_succeeds_on_every_device(settings: Settings) -> None:
    async with running_fleet(engine_settings(settings), 20) as fleet:
        task = await fleet.tasks.create(
            NewTask(
                app_id=fleet.app.app_id,
                task_type=TaskType.CREATE_COMMANDS,
                name="t1",
                document=COMMAND,
            ),
            fleet.device_ids,
        )
        done = await fleet.finished(task)
        assert done.status is TaskStatus.SUCCESS
        assert done.progress.success == done.progress.total == 20
        await check_counters(fleet.runtime, done)
        _, page = await fleet.tasks.subtasks(task.task_id, status=SubtaskStatus.SUCCESS)
        assert page.count == 20
        assert all(s.output and '"result_code":0' in s.output for s in page.items)
