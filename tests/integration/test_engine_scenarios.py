"""The engine's policies end to end: timeouts, retries, schedules, stop, retry, delete, abort.

Each scenario runs a server with simulated devices (on SQLite and on PostgreSQL) and ends
with the counter invariant checked against the rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from fleetbatch.domain.errors import Conflict, NotFound
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import ErrorCode, NewTask, Task, TaskPolicy, TaskType
from fleetbatch.server import Server
from fleetbatch.settings import Settings
from fleetbatch.sim.fleet import FleetDevice
from fleetbatch.sim.runner import Simulator
from fleetbatch.store.paging import PageRequest
from support.engine import Fleet, check_counters, engine_settings, fleet_on, running_fleet
from support.mosquitto import MosquittoBroker
from support.waiting import wait_until

COMMAND = {"service_id": "svc", "command_name": "reboot", "paras": {"delay": 1}}
S = SubtaskStatus

# the scenarios on the default engine settings share one server per database (starting and
# stopping one per scenario cost a third of the module's time); each registers its own app
# and devices, and waits for its tasks to finish or stops them
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(module_settings: Settings) -> AsyncIterator[Server]:
    async with Server(engine_settings(module_settings)) as running:
        yield running


def command_task(fleet: Fleet, name: str, **policy: Any) -> NewTask:
    return NewTask(
        app_id=fleet.app.app_id,
        task_type=TaskType.CREATE_COMMANDS,
        name=name,
        document=COMMAND,
        policy=TaskPolicy(**policy),
    )


async def subtasks_by_target(fleet: Fleet, task: Task) -> dict[str, Any]:
    _, page = await fleet.tasks.subtasks(task.task_id, page=PageRequest(limit=50))
    assert page.count <= 50
    return {s.target: s for s in page.items}


async def test_silent_devices_time_out_and_the_rest_succeed(server: Server) -> None:
    behaviors = ["*_n00000[0-2]:silent=true"]
    async with fleet_on(server, 6, behaviors=behaviors) as fleet:
        task = await fleet.tasks.create(
            command_task(fleet, "timeouts", subtask_timeout_s=0.5), fleet.device_ids
        )
        done = await fleet.finished(task)
        assert done.status is TaskStatus.PARTIAL_SUCCESS
        assert (done.progress.success, done.progress.timeout) == (3, 3)
        rows = await subtasks_by_target(fleet, task)
        for device_id in fleet.device_ids[:3]:
            assert rows[device_id].status is S.TIMEOUT
            assert rows[device_id].error_code == ErrorCode.NO_RESPONSE.value
        await check_counters(fleet.runtime, done)


@pytest.mark.parametrize(
    ("policy", "attempts"),
    [({"retry_count": 2}, 3), ({"max_retransmit": 1}, 2)],
    ids=["retry_count", "max_retransmit"],
)
async def test_failing_devices_are_retried_up_to_the_budget_then_fail(
    server: Server, policy: dict[str, int], attempts: int
) -> None:
    behaviors = ["*_n00000[0-1]:fail_rate=1,fail_code=7"]
    async with fleet_on(server, 5, behaviors=behaviors) as fleet:
        task = await fleet.tasks.create(command_task(fleet, "retries", **policy), fleet.device_ids)
        done = await fleet.finished(task)
        assert done.status is TaskStatus.PARTIAL_SUCCESS
        assert (done.progress.success, done.progress.fail) == (3, 2)
        rows = await subtasks_by_target(fleet, task)
        for device_id in fleet.device_ids[:2]:
            failed = rows[device_id]
            assert (failed.status, failed.attempt, failed.failures) == (S.FAIL, attempts, attempts)
            assert failed.error_code == ErrorCode.DEVICE_RESULT.value
            assert failed.output is not None
            assert '"result_code":7' in failed.output
        assert {rows[d].attempt for d in fleet.device_ids[2:]} == {1}
        await check_counters(fleet.runtime, done)


async def test_a_scheduled_task_waits_for_its_time(server: Server) -> None:
    async with fleet_on(server, 4) as fleet:
        at = fleet.runtime.clock.now_ms() + 1500
        task = await fleet.tasks.create(
            command_task(fleet, "scheduled", schedule_at_ms=at), fleet.device_ids
        )
        assert task.status is TaskStatus.WAITING
        assert task.progress.waiting == 4
        done = await fleet.finished(task)
        assert done.status is TaskStatus.SUCCESS
        assert done.started_at is not None
        assert done.started_at >= at
        await check_counters(fleet.runtime, done)


async def test_stopping_a_running_task_stops_every_unfinished_subtask(server: Server) -> None:
    async with fleet_on(server, 8, behaviors=["silent=true"]) as fleet:
        task = await fleet.tasks.create(
            command_task(fleet, "stop-me", subtask_timeout_s=60), fleet.device_ids
        )

        async def all_processing() -> bool:
            return (await fleet.tasks.get(task.task_id)).progress.processing == 8

        await wait_until(all_processing, timeout_s=10)
        await fleet.tasks.stop(task.task_id)
        done = await fleet.tasks.get(task.task_id)
        assert done.status is TaskStatus.STOPPED
        assert done.progress.stopped == 8
        await check_counters(fleet.runtime, done)
        with pytest.raises(Conflict):
            await fleet.tasks.stop(task.task_id)


async def test_retrying_failed_subtasks_after_their_devices_connect_completes_the_task(
    server: Server,
) -> None:
    async with fleet_on(server, 6, simulated=3) as fleet:
        task = await fleet.tasks.create(command_task(fleet, "retry-later"), fleet.device_ids)
        done = await fleet.finished(task)
        assert done.status is TaskStatus.PARTIAL_SUCCESS
        assert (done.progress.success, done.progress.fail) == (3, 3)
        rows = await subtasks_by_target(fleet, task)
        assert {rows[d].error_code for d in fleet.device_ids[3:]} == {
            ErrorCode.DEVICE_OFFLINE.value
        }
        late = [FleetDevice(d.device_id, d.secret) for d in fleet.devices[3:]]
        url = f"mqtt://127.0.0.1:{fleet.server.mqtt_port}"
        async with Simulator(late, url) as sim:
            await sim.wait_connected(timeout_s=10)
            results = await fleet.tasks.retry(task.task_id, targets=[fleet.device_ids[3], "nope"])
            assert [(r.target, r.ok) for r in results] == [
                (fleet.device_ids[3], True),
                ("nope", False),
            ]
            await fleet.tasks.retry(task.task_id)
            again = await fleet.finished(task)
        assert again.status is TaskStatus.SUCCESS
        assert again.progress.success == 6
        await check_counters(fleet.runtime, again)


async def test_only_a_finished_task_can_be_deleted(server: Server) -> None:
    async with fleet_on(server, 3, behaviors=["silent=true"]) as fleet:
        task = await fleet.tasks.create(
            command_task(fleet, "delete-me", subtask_timeout_s=60), fleet.device_ids
        )
        with pytest.raises(Conflict):
            await fleet.tasks.delete(task.task_id)
        await fleet.tasks.stop(task.task_id)
        await fleet.tasks.delete(task.task_id)
        with pytest.raises(NotFound):
            await fleet.tasks.get(task.task_id)


async def test_the_abort_rule_stops_a_task_whose_failures_pass_the_ratio(
    server: Server,
) -> None:
    behaviors = ["latency=constant:10", "50%:fail_rate=1"]
    async with fleet_on(server, 40, behaviors=behaviors) as fleet:
        task = await fleet.tasks.create(
            command_task(
                fleet,
                "abort",
                max_concurrency=2,
                abort_min_finished=6,
                abort_fail_ratio=0.2,
            ),
            fleet.device_ids,
        )
        done = await fleet.finished(task)
        assert done.status is TaskStatus.STOPPED
        assert done.status_desc is not None
        assert done.status_desc.startswith("aborted")
        assert done.progress.finished >= 6
        assert done.progress.stopped > 0
        assert done.progress.failed / done.progress.finished > 0.2
        await check_counters(fleet.runtime, done)


async def test_a_whole_task_timeout_times_out_what_is_unfinished(server: Server) -> None:
    async with fleet_on(server, 4, behaviors=["silent=true"]) as fleet:
        task = await fleet.tasks.create(
            command_task(fleet, "task-timeout", timeout_s=1, subtask_timeout_s=60),
            fleet.device_ids,
        )
        done = await fleet.finished(task)
        assert done.status is TaskStatus.TIMEOUT
        assert done.progress.timeout == 4
        rows = await subtasks_by_target(fleet, task)
        assert {r.error_code for r in rows.values()} == {ErrorCode.TASK_TIMEOUT.value}
        await check_counters(fleet.runtime, done)


async def test_a_new_task_wakes_the_idle_engine_instead_of_waiting_for_a_poll(
    settings: Settings,
) -> None:
    # sweeps (the only periodic look for work) far apart: only a wake-up can start the task
    quiet = engine_settings(settings, engine_sweep_s=60)
    async with running_fleet(quiet, 5) as fleet:
        await wait_until(lambda: fleet.engine.stats.claims == 0, timeout_s=1)
        task = await fleet.tasks.create(command_task(fleet, "wake"), fleet.device_ids)
        done = await fleet.finished(task, timeout_s=10)
        assert done.status is TaskStatus.SUCCESS


async def test_commands_reach_devices_through_an_external_broker(
    settings: Settings, mosquitto_broker: MosquittoBroker
) -> None:
    external = engine_settings(settings, broker=mosquitto_broker.url)
    async with running_fleet(external, 10, device_url=mosquitto_broker.url) as fleet:
        task = await fleet.tasks.create(command_task(fleet, "via-broker"), fleet.device_ids)
        done = await fleet.finished(task)
        assert done.status is TaskStatus.SUCCESS
        assert done.progress.success == 10
        await check_counters(fleet.runtime, done)


async def test_a_small_task_is_not_starved_by_a_big_one_started_before_it(
    settings: Settings,
) -> None:
    # a window of 10 in flight, answers after 20 ms: the big task alone takes about a second
    narrow = engine_settings(settings, engine_max_in_flight=10, engine_batch_size=10)
    async with running_fleet(narrow, 300, behaviors=["latency=constant:20"]) as fleet:
        big = await fleet.tasks.create(command_task(fleet, "big"), fleet.device_ids[:295])
        small = await fleet.tasks.create(command_task(fleet, "small"), fleet.device_ids[295:])
        small_done = await fleet.finished(small)
        assert small_done.status is TaskStatus.SUCCESS
        big_then = await fleet.tasks.get(big.task_id)
        assert not big_then.finished
        assert big_then.progress.success < 295
        big_done = await fleet.finished(big)
        assert big_done.status is TaskStatus.SUCCESS
        await check_counters(fleet.runtime, big_done)


async def test_a_rate_limit_spreads_the_claims_over_time(server: Server) -> None:
    async with fleet_on(server, 12) as fleet:
        task = await fleet.tasks.create(
            command_task(fleet, "rate", rate_per_min=600), fleet.device_ids
        )
        done = await fleet.finished(task)
        assert done.status is TaskStatus.SUCCESS
        _, page = await fleet.tasks.subtasks(task.task_id, page=PageRequest(limit=50))
        starts = sorted(s.started_at for s in page.items if s.started_at is not None)
        # 600 per minute is 10 per second, one at a time: 12 starts span over a second
        assert len(starts) == 12
        assert starts[-1] - starts[0] >= 1000
        await check_counters(fleet.runtime, done)


async def test_a_concurrency_limit_bounds_commands_at_devices_while_the_next_are_claimed(
    server: Server,
) -> None:
    # answers after 20 ms: a limit of 4 keeps exactly 4 commands outstanding at a time
    async with fleet_on(server, 40, behaviors=["latency=constant:20"]) as fleet:
        channel = fleet.server.channel
        assert channel is not None
        submit = channel.submit
        outstanding = peak = 0

        def counting_submit(*args: Any, **kwargs: Any) -> Any:
            nonlocal outstanding, peak
            future = submit(*args, **kwargs)
            outstanding += 1
            peak = max(peak, outstanding)

            def answered(_: object) -> None:
                nonlocal outstanding
                outstanding -= 1

            future.add_done_callback(answered)
            return future

        channel.submit = counting_submit  # type: ignore[method-assign]
        try:
            task = await fleet.tasks.create(
                command_task(fleet, "limited", max_concurrency=4), fleet.device_ids
            )
            held = 0

            async def done() -> bool:
                nonlocal held
                run = fleet.engine.runs.get(task.pk)
                if run is not None:
                    held = max(held, run.in_flight + len(run.ready))
                current = await fleet.tasks.get(task.task_id)
                return current.finished

            await wait_until(done, timeout_s=30)
        finally:
            del channel.submit  # the module's server outlives this test
        finished = await fleet.tasks.get(task.task_id)
        assert finished.status is TaskStatus.SUCCESS
        assert peak == 4
        # the next ones are claimed while some are at the devices, never more than the limit
        assert 0 < held <= 8
        await check_counters(fleet.runtime, finished)
