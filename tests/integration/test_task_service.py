"""The task service and the engine's units of work on a real store (SQLite and PostgreSQL).

Nothing here runs the engine's loops: the tests call the expander and the steps themselves,
with a clock they move, so every state is reached on purpose and nothing waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial

import pytest
from sqlalchemy import func, select, text, update

from fleetbatch.domain.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from fleetbatch.domain.ids import MAX_MARKER, format_record_id
from fleetbatch.domain.registry import NewDevice, NewProduct
from fleetbatch.domain.states import SubtaskStatus, TaskStatus
from fleetbatch.domain.tasks import (
    ErrorCode,
    NewTask,
    Selector,
    SelectorKind,
    Task,
    TaskPolicy,
    TaskType,
)
from fleetbatch.engine import steps
from fleetbatch.engine.expander import expand_step
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from fleetbatch.store.paging import PageRequest
from fleetbatch.store.schema import subtasks, task_tags, tasks
from fleetbatch.store.subtasks import Claimed, Outcome
from support.tasks import FakeClock, count_rows, snapshot
from support.waiting import wait_until

S = SubtaskStatus
T = TaskStatus
COMMAND = {"service_id": "svc", "command_name": "reboot", "paras": {"delay": 1}}
LEASE_MS = 30_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rt(settings: Settings, clock: FakeClock) -> AsyncIterator[Runtime]:
    """A migrated runtime whose services read the fake clock."""
    opened = await Runtime.open(settings, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


@dataclass
class World:
    """Three apps: `app` and `neighbour` share a project, `stranger` has its own."""

    app_id: str
    project_id: str
    neighbour_id: str
    stranger_id: str
    stranger_project: str
    meters_m1: list[str]  # Meter / acme / m1; the first two in the north
    meters_m2: list[str]  # Meter / acme / m2; the first in the north
    pumps: list[str]  # Pump / acme / m1
    neighbour_devices: list[str]  # in the north too
    stranger_devices: list[str]
    product_m1: str
    product_pump: str
    groups: dict[str, str]  # name -> id: top > child > grandchild, and side

    @property
    def devices(self) -> list[str]:
        return self.meters_m1 + self.meters_m2 + self.pumps


async def build_world(rt: Runtime) -> World:
    registry = rt.registry
    app = await registry.apps.create("factory")
    neighbour = await registry.apps.create("neighbour", project_id=app.project_id)
    stranger = await registry.apps.create("stranger")

    async def product(app_id: str, name: str, device_type: str, model: str) -> str:
        spec = NewProduct(name=name, device_type=device_type, manufacturer_id="acme", model=model)
        return (await registry.products.create(app_id, spec)).product_id

    async def register(app_id: str, product_id: str, prefix: str, n: int, north: int) -> list[str]:
        specs = [
            NewDevice(node_id=f"{prefix}{i}", location="north" if i < north else "south")
            for i in range(n)
        ]
        made = await registry.devices.create_many(app_id, product_id, specs)
        return [d.device_id for d in made]

    m1 = await product(app.app_id, "meter-m1", "Meter", "m1")
    m2 = await product(app.app_id, "meter-m2", "Meter", "m2")
    pump = await product(app.app_id, "pump", "Pump", "m1")
    world = World(
        app_id=app.app_id,
        project_id=app.project_id,
        neighbour_id=neighbour.app_id,
        stranger_id=stranger.app_id,
        stranger_project=stranger.project_id,
        meters_m1=await register(app.app_id, m1, "ma", 4, north=2),
        meters_m2=await register(app.app_id, m2, "mb", 3, north=1),
        pumps=await register(app.app_id, pump, "pu", 3, north=0),
        neighbour_devices=await register(
            neighbour.app_id,
            await product(neighbour.app_id, "n-meter", "Meter", "m1"),
            "nb",
            2,
            north=2,
        ),
        stranger_devices=await register(
            stranger.app_id, await product(stranger.app_id, "s", "Meter", "m1"), "st", 2, north=2
        ),
        product_m1=m1,
        product_pump=pump,
        groups={},
    )
    groups = registry.groups
    top = await groups.create(app.app_id, "top")
    child = await groups.create(app.app_id, "child", parent_group_id=top.group_id)
    grandchild = await groups.create(app.app_id, "grandchild", parent_group_id=child.group_id)
    side = await groups.create(app.app_id, "side")
    project = app.project_id
    await groups.add_members(project, top.group_id, world.meters_m1[:2])
    await groups.add_members(project, child.group_id, [world.meters_m1[1], world.meters_m2[0]])
    await groups.add_members(project, grandchild.group_id, [world.pumps[0]])
    await groups.add_members(project, side.group_id, [world.pumps[1]])
    world.groups = {
        "top": top.group_id,
        "child": child.group_id,
        "grandchild": grandchild.group_id,
        "side": side.group_id,
    }
    return world


@pytest.fixture
async def world(rt: Runtime) -> World:
    return await build_world(rt)


def a_task(app_id: str, name: str = "reboot", **changes: object) -> NewTask:
    values: dict[str, object] = {
        "app_id": app_id,
        "task_type": TaskType.CREATE_COMMANDS,
        "name": name,
        "document": COMMAND,
    }
    values.update(changes)
    return NewTask(**values)  # type: ignore[arg-type]


async def expand(rt: Runtime, task: Task, *, chunk: int = 1000) -> tuple[Task, int]:
    """Run the expander on `task` until it says done; the task afterwards and the steps taken."""
    taken = 0
    while True:
        taken += 1
        if await expand_step(rt.store, task, chunk=chunk, now_ms=rt.clock.now_ms()):
            return await rt.tasks.get(task.task_id), taken
        assert taken < 10_000, "the expander never finished"


async def claim(rt: Runtime, task: Task, limit: int = 100, worker: str = "w1") -> list[Claimed]:
    now = rt.clock.now_ms()
    request = steps.ClaimRequest(task.pk, limit, lease_until=now + LEASE_MS)
    return await steps.claim_batch(rt.store, request, worker_id=worker, now_ms=now)


async def report(
    rt: Runtime, task: Task, *results: tuple[Claimed, SubtaskStatus]
) -> dict[int, object]:
    policy = task.policy
    now = rt.clock.now_ms()
    outcomes = [
        Outcome(
            c.id,
            c.attempt,
            status,
            error_code=None if status is S.SUCCESS else ErrorCode.DEVICE_RESULT.value,
            retry_budget=policy.retry_budget,
            retry_at=now + policy.retry_interval_s * 1000,
        )
        for c, status in results
    ]
    return dict(await steps.apply_outcomes(rt.store, outcomes, now_ms=now))


async def targets(rt: Runtime, task: Task) -> set[str]:
    return set((await snapshot(rt.store, task.pk)).subtasks)


# --- create ------------------------------------------------------------------------------


async def test_a_refused_task_writes_nothing(rt: Runtime, world: World, clock: FakeClock) -> None:
    app = world.app_id
    devices = world.devices[:3]
    await rt.tasks.create(a_task(app, tags={"batch": "b1"}), devices)
    cases: list[tuple[NewTask, Sequence[str] | None, type[Exception], str | None]] = [
        (a_task(app, name=""), devices, InvalidInput, "task_name"),
        (a_task(app, document={"paras": []}), devices, InvalidInput, "document.paras"),
        (a_task(app, policy=TaskPolicy(retry_count=6)), devices, InvalidInput, "retry_count"),
        (
            a_task(app, policy=TaskPolicy(schedule_at_ms=clock.ms + 8 * 24 * 3600 * 1000)),
            devices,
            InvalidInput,
            "schedule_time",
        ),
        (a_task(app), None, InvalidInput, "targets"),
        (a_task(app, selector=Selector(SelectorKind.ALL)), devices, InvalidInput, "targets"),
        (a_task(app), [*devices, ""], InvalidInput, "targets"),
        (a_task(app), [*devices, "x" * 129], InvalidInput, "targets"),
        (a_task(app, selector=Selector(SelectorKind.AREA)), None, InvalidInput, "area"),
        # a list selector without its list could never be expanded
        (a_task(app, selector=Selector(SelectorKind.DEVICES)), None, InvalidInput, "selector"),
        (a_task("no-such-app"), devices, NotFound, None),
        (
            a_task(app, selector=Selector(SelectorKind.PRODUCT, product_id="nope")),
            None,
            NotFound,
            None,
        ),
        (
            a_task(app, selector=Selector(SelectorKind.GROUPS, group_ids=("no-such-group",))),
            None,
            NotFound,
            None,
        ),
        (
            a_task(app, selector=Selector(SelectorKind.GROUP_NAMES, group_names=("top", "nope"))),
            None,
            NotFound,
            None,
        ),
        (a_task(app, name="again", tags={"batch": "b1"}), devices, AlreadyExists, None),
        (
            a_task(world.neighbour_id, tags={"other": "x", "batch": "b1"}),
            devices,
            AlreadyExists,
            None,
        ),
    ]
    before = await count_rows(rt.store)
    for new, device_ids, error, field in cases:
        with pytest.raises(error) as raised:
            await rt.tasks.create(new, device_ids)
        if field is not None:
            assert raised.value.field == field  # type: ignore[attr-defined]
        assert await count_rows(rt.store) == before, f"{new} wrote something"


async def test_an_explicit_list_drops_repeats_and_fails_unknown_ids(
    rt: Runtime, world: World, clock: FakeClock
) -> None:
    d = world.devices
    listed = [d[0], d[1], d[0], "ghost", d[2], "ghost", world.stranger_devices[0]]
    task = await rt.tasks.create(a_task(world.app_id, policy=TaskPolicy(timeout_s=60)), listed)

    assert task.status is T.PROCESSING
    assert (task.started_at, task.deadline_at) == (clock.ms, clock.ms + 60_000)
    state = await snapshot(rt.store, task.pk)
    assert set(state.subtasks) == {d[0], d[1], d[2], "ghost", world.stranger_devices[0]}
    assert state.by_status(S.WAITING) == {d[0], d[1], d[2]}
    # a device of another project is as unknown as one that does not exist
    assert state.by_status(S.FAIL) == {"ghost", world.stranger_devices[0]}
    for unknown in ("ghost", world.stranger_devices[0]):
        assert state.subtasks[unknown].error_code == ErrorCode.DEVICE_NOT_FOUND.value
        assert state.subtasks[unknown].device_pk is None
    assert state.progress.total == 5
    assert (state.progress.waiting, state.progress.fail) == (3, 1 + 1)
    # in the order given: the record ids grow with the list
    ids = [state.subtasks[t].id for t in (d[0], d[1], "ghost", d[2])]
    assert ids == sorted(ids)


async def test_an_async_command_task_starts_its_subtasks_pending(rt: Runtime, world: World) -> None:
    new = a_task(
        world.app_id, task_type=TaskType.CREATE_ASYNC_COMMANDS, document={"paras": {"a": 1}}
    )
    listed = await rt.tasks.create(new, world.devices[:2])
    assert listed.document == {"paras": {"a": 1}, "send_strategy": "delay", "expire_time": 86400}
    selected = await rt.tasks.create(
        a_task(
            world.app_id,
            "by product",
            task_type=TaskType.CREATE_ASYNC_COMMANDS,
            document={"paras": {}},
            selector=Selector(SelectorKind.PRODUCT, product_id=world.product_pump),
        )
    )
    await expand(rt, selected)
    async with rt.store.read() as conn:
        phases = (
            await conn.execute(
                select(subtasks.c.phase).where(subtasks.c.task_pk.in_([listed.pk, selected.pk]))
            )
        ).scalars()
        assert set(phases) == {"PENDING"}


# --- expansion ---------------------------------------------------------------------------


def selectors(world: World) -> list[tuple[Selector, set[str]]]:
    m1, m2, pumps = world.meters_m1, world.meters_m2, world.pumps
    g = world.groups
    return [
        # a group with its sub-groups; a device in two of them counts once
        (Selector(SelectorKind.GROUPS, group_ids=(g["top"],)), {*m1[:2], m2[0], pumps[0]}),
        (
            Selector(SelectorKind.GROUPS, group_ids=(g["child"], g["side"])),
            {m1[1], m2[0], *pumps[:2]},
        ),
        (Selector(SelectorKind.GROUP_NAMES, group_names=("child",)), {m1[1], m2[0], pumps[0]}),
        (Selector(SelectorKind.GROUP_NAMES, group_names=("grandchild", "side")), set(pumps[:2])),
        (Selector(SelectorKind.PRODUCT, product_id=world.product_m1), set(m1)),
        (
            Selector(
                SelectorKind.DEVICE_TYPE, device_type="Meter", manufacturer_id="acme", model="m1"
            ),
            set(m1),
        ),
        (
            Selector(
                SelectorKind.DEVICE_TYPE, device_type="Pump", manufacturer_id="acme", model="m1"
            ),
            set(pumps),
        ),
        (
            Selector(
                SelectorKind.DEVICE_TYPE, device_type="Meter", manufacturer_id="other", model="m1"
            ),
            set(),
        ),
        (Selector(SelectorKind.AREA, area="north"), {*m1[:2], m2[0]}),
        (Selector(SelectorKind.AREA, area="nowhere"), set()),
        # a broadcast reaches the app's devices only, not its neighbour's or a stranger's
        (Selector(SelectorKind.ALL), set(world.devices)),
    ]


async def test_every_selector_expands_to_its_devices(
    rt: Runtime, world: World, clock: FakeClock
) -> None:
    for n, (selector, expected) in enumerate(selectors(world)):
        task = await rt.tasks.create(
            a_task(world.app_id, f"t{n}", selector=selector, policy=TaskPolicy(timeout_s=5))
        )
        assert task.status is T.INITIALIZING
        assert (task.progress.total, task.started_at, task.deadline_at) == (0, None, None)
        clock.advance(1000)
        done, _ = await expand(rt, task, chunk=1000)
        assert await targets(rt, task) == expected, selector
        assert done.status is T.PROCESSING
        assert (done.started_at, done.deadline_at) == (clock.ms, clock.ms + 5000)
        assert done.progress.total == done.progress.waiting == len(expected)
        assert done.selector is not None
        if selector.kind is SelectorKind.GROUP_NAMES:
            # the names are resolved to ids at creation, sub-groups included
            assert set(done.selector.group_ids) >= {world.groups[n] for n in selector.group_names}
        # a second run of the expander changes nothing
        assert await expand_step(rt.store, done, chunk=1000, now_ms=clock.ms)
        assert await targets(rt, task) == expected


async def test_expansion_in_small_chunks_equals_one_chunk(rt: Runtime, world: World) -> None:
    selector = Selector(SelectorKind.ALL)
    expected = set(world.devices)
    for chunk in (1, 3, len(expected), 1000):
        task = await rt.tasks.create(a_task(world.app_id, f"chunk {chunk}", selector=selector))
        done, taken = await expand(rt, task, chunk=chunk)
        assert await targets(rt, task) == expected
        assert done.progress.total == done.progress.waiting == len(expected)
        assert done.status is T.PROCESSING
        # one step per full chunk, and one that finds the rest (or nothing) and says done
        assert taken == len(expected) // chunk + 1


async def test_concurrent_expanders_of_one_task_never_duplicate_rows(
    rt: Runtime, world: World
) -> None:
    task = await rt.tasks.create(a_task(world.app_id, selector=Selector(SelectorKind.ALL)))

    async def expander() -> None:
        while not await expand_step(rt.store, task, chunk=2, now_ms=rt.clock.now_ms()):
            pass

    await asyncio.gather(*(expander() for _ in range(4)))
    done = await rt.tasks.get(task.task_id)
    state = await snapshot(rt.store, task.pk)
    assert set(state.subtasks) == set(world.devices)
    assert done.progress.total == len(world.devices)
    assert done.status is T.PROCESSING


async def test_a_scheduled_selector_task_waits_after_expansion(
    rt: Runtime, world: World, clock: FakeClock
) -> None:
    policy = TaskPolicy(schedule_at_ms=clock.ms + 60_000, timeout_s=10)
    task = await rt.tasks.create(
        a_task(world.app_id, selector=Selector(SelectorKind.ALL), policy=policy)
    )
    done, _ = await expand(rt, task, chunk=4)
    assert done.status is T.WAITING
    assert (done.started_at, done.deadline_at) == (None, None)
    clock.advance(60_000)
    assert await steps.start_if_due(rt.store, task.pk, now_ms=clock.ms)
    started = await rt.tasks.get(task.task_id)
    assert started.status is T.PROCESSING
    assert (started.started_at, started.deadline_at) == (clock.ms, clock.ms + 10_000)


# --- reading -----------------------------------------------------------------------------


async def test_subtasks_page_newest_first_below_the_marker(rt: Runtime, world: World) -> None:
    listed = [*world.devices, "ghost-1", "ghost-2"]
    task = await rt.tasks.create(a_task(world.app_id), listed)
    state = await snapshot(rt.store, task.pk)
    newest_first = sorted((s.id for s in state.subtasks.values()), reverse=True)
    assert len(newest_first) == 12

    seen: list[int] = []
    marker = MAX_MARKER
    while True:
        _, page = await rt.tasks.subtasks(task.task_id, page=PageRequest(limit=5, marker=marker))
        assert page.count == 12
        if not page.items:
            assert page.marker is None
            break
        seen.extend(s.id for s in page.items)
        assert page.marker == format_record_id(page.items[-1].id)
        marker = page.marker
    assert seen == newest_first

    _, skipped = await rt.tasks.subtasks(task.task_id, page=PageRequest(limit=3, offset=2))
    assert [s.id for s in skipped.items] == newest_first[2:5]
    below = format_record_id(newest_first[3])
    _, after = await rt.tasks.subtasks(
        task.task_id, page=PageRequest(limit=3, marker=below, offset=1)
    )
    assert [s.id for s in after.items] == newest_first[5:8]

    _, failed = await rt.tasks.subtasks(task.task_id, status=S.FAIL)
    assert {s.target for s in failed.items} == {"ghost-1", "ghost-2"}
    assert failed.count == 2
    _, waiting = await rt.tasks.subtasks(task.task_id, status=S.WAITING, page=PageRequest(limit=4))
    assert [s.id for s in waiting.items] == newest_first[2:6]
    assert waiting.count == 10
    _, one = await rt.tasks.subtasks(task.task_id, target=world.devices[3])
    assert [s.target for s in one.items] == [world.devices[3]]
    assert one.count == 1
    _, none = await rt.tasks.subtasks(task.task_id, target="ghost-1", status=S.WAITING)
    assert (none.items, none.count) == ([], 0)

    for bad, field in (
        ({"limit": 0}, "limit"),
        ({"limit": 51}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 501}, "offset"),
        ({"marker": "not-hex"}, "marker"),
    ):
        with pytest.raises(InvalidInput) as raised:
            PageRequest(**bad)  # type: ignore[arg-type]
        assert raised.value.field == field
    with pytest.raises(NotFound):
        await rt.tasks.subtasks("0" * 24)
    with pytest.raises(NotFound):
        await rt.tasks.subtasks(task.task_id, project_id=world.stranger_project)


async def test_subtasks_page_by_number_in_creation_order(rt: Runtime, world: World) -> None:
    listed = [*world.devices, "ghost-1", "ghost-2"]
    task = await rt.tasks.create(a_task(world.app_id), listed)
    pages = []
    for page_no in range(4):
        _, page = await rt.tasks.subtasks_by_number(task.task_id, page_no, 5)
        assert page.count == 12
        pages.append([s.target for s in page.items])
    assert [len(p) for p in pages] == [5, 5, 2, 0]
    assert [t for p in pages for t in p] == listed
    _, failed = await rt.tasks.subtasks_by_number(task.task_id, 0, 250, status=S.FAIL)
    assert ([s.target for s in failed.items], failed.count) == (["ghost-1", "ghost-2"], 2)
    _, one = await rt.tasks.subtasks_by_number(task.task_id, 0, 1, target=listed[7])
    assert ([s.target for s in one.items], one.count) == ([listed[7]], 1)
    for page_no, size, field in ((-1, 5, "pageNo"), (0, 0, "pageSize"), (0, 251, "pageSize")):
        with pytest.raises(InvalidInput) as raised:
            await rt.tasks.subtasks_by_number(task.task_id, page_no, size)
        assert raised.value.field == field


async def test_tasks_list_newest_first_with_filters(rt: Runtime, world: World) -> None:
    d = world.devices
    first = await rt.tasks.create(a_task(world.app_id, "first"), d[:2])
    message = await rt.tasks.create(
        a_task(
            world.app_id, "hello", task_type=TaskType.CREATE_MESSAGES, document={"message": "hi"}
        ),
        d[:2],
    )
    stopped = await rt.tasks.create(a_task(world.app_id, "stopped"), d[:2])
    await rt.tasks.stop(stopped.task_id)
    neighbour = await rt.tasks.create(a_task(world.neighbour_id, "n"), world.neighbour_devices)
    await rt.tasks.create(a_task(world.stranger_id, "s"), world.stranger_devices)
    newest_first = [neighbour.task_id, stopped.task_id, message.task_id, first.task_id]

    everything = await rt.tasks.list_tasks(world.project_id)
    assert [t.task_id for t in everything.items] == newest_first
    assert everything.count == 4
    front = await rt.tasks.list_tasks(world.project_id, PageRequest(limit=3))
    assert [t.task_id for t in front.items] == newest_first[:3]
    assert front.marker is not None
    rest = await rt.tasks.list_tasks(world.project_id, PageRequest(limit=3, marker=front.marker))
    assert [t.task_id for t in rest.items] == newest_first[3:]
    assert rest.count == 4
    skipped = await rt.tasks.list_tasks(world.project_id, PageRequest(limit=2, offset=1))
    assert [t.task_id for t in skipped.items] == newest_first[1:3]

    mine = await rt.tasks.list_tasks(world.project_id, app_id=world.app_id)
    assert ([t.task_id for t in mine.items], mine.count) == (newest_first[1:], 3)
    messages = await rt.tasks.list_tasks(world.project_id, task_type="createMessages")
    assert [t.task_id for t in messages.items] == [message.task_id]
    done = await rt.tasks.list_tasks(world.project_id, status=T.STOPPED)
    assert ([t.task_id for t in done.items], done.count) == ([stopped.task_id], 1)
    running = await rt.tasks.list_tasks(world.project_id, app_id=world.app_id, status=T.PROCESSING)
    assert [t.task_id for t in running.items] == [message.task_id, first.task_id]
    assert (await rt.tasks.list_tasks(world.stranger_project)).count == 1
    assert everything.items[0].progress.total == 2


# --- stop --------------------------------------------------------------------------------


async def test_stopping_chosen_devices_reports_each_and_ignores_late_answers(
    rt: Runtime, world: World
) -> None:
    d = world.devices
    task = await rt.tasks.create(a_task(world.app_id), d[:4])
    first, second = await claim(rt, task, limit=2)
    await report(rt, task, (first, S.SUCCESS))

    results = await rt.tasks.stop(task.task_id, targets=[d[0], d[1], "ghost"])
    assert [r.target for r in results] == [d[0], d[1], "ghost"]
    assert [r.ok for r in results] == [False, True, False]
    assert [r.error_code for r in results] == ["task.target_state", None, "task.target_not_found"]
    state = await snapshot(rt.store, task.pk)
    assert state.status is T.PROCESSING
    assert state.by_status(S.STOPPED) == {d[1]}
    assert state.by_status(S.WAITING) == {d[2], d[3]}
    # the stopped attempt's answer comes late: nothing changes, nothing counts
    assert await report(rt, task, (second, S.SUCCESS)) == {}
    assert (await snapshot(rt.store, task.pk)).subtasks == state.subtasks

    # stopping the last unfinished devices finishes the task on what it achieved
    results = await rt.tasks.stop(task.task_id, targets=[d[2], d[3]])
    assert all(r.ok for r in results)
    done = await rt.tasks.get(task.task_id)
    assert done.status is T.PARTIAL_SUCCESS
    with pytest.raises(Conflict):
        await rt.tasks.stop(task.task_id)


async def test_stopping_a_whole_task_stops_every_unfinished_subtask(
    rt: Runtime, world: World, clock: FakeClock
) -> None:
    d = world.devices
    task = await rt.tasks.create(a_task(world.app_id), [*d[:4], "ghost"])
    first, second = await claim(rt, task, limit=2)
    await report(rt, task, (first, S.SUCCESS))
    clock.advance(5)
    assert await rt.tasks.stop(task.task_id) == []
    done = await rt.tasks.get(task.task_id)
    assert done.status is T.STOPPED
    assert done.finished_at == clock.ms
    state = await snapshot(rt.store, task.pk)
    assert state.by_status(S.SUCCESS) == {d[0]}
    assert state.by_status(S.FAIL) == {"ghost"}
    assert state.by_status(S.STOPPED) == {d[1], d[2], d[3]}
    assert await report(rt, task, (second, S.FAIL)) == {}
    with pytest.raises(Conflict):
        await rt.tasks.stop(task.task_id)
    with pytest.raises(Conflict):
        await rt.tasks.stop(task.task_id, targets=[d[1]])


async def test_stopping_a_task_still_being_expanded_stops_its_expansion(
    rt: Runtime, world: World
) -> None:
    task = await rt.tasks.create(a_task(world.app_id, selector=Selector(SelectorKind.ALL)))
    assert not await expand_step(rt.store, task, chunk=3, now_ms=rt.clock.now_ms())
    await rt.tasks.stop(task.task_id)
    assert (await rt.tasks.get(task.task_id)).status is T.STOPPING
    with pytest.raises(Conflict):
        await rt.tasks.retry(task.task_id)
    # the expander sees the stop and inserts nothing more
    assert await expand_step(rt.store, task, chunk=3, now_ms=rt.clock.now_ms())
    state = await snapshot(rt.store, task.pk)
    assert len(state.subtasks) == 3
    assert state.by_status(S.STOPPED) == set(state.subtasks)
    assert await steps.finish_if_done(rt.store, task.pk, now_ms=rt.clock.now_ms()) is T.STOPPED


@pytest.mark.parametrize("first", ["expander", "stop"])
async def test_a_stop_racing_the_expander_leaves_nothing_waiting(
    rt: Runtime, world: World, first: str
) -> None:
    task = await rt.tasks.create(a_task(world.app_id, selector=Selector(SelectorKind.ALL)))
    assert not await expand_step(rt.store, task, chunk=3, now_ms=rt.clock.now_ms())
    runs: list[asyncio.Task[object]] = []
    async with rt.store.write() as holder:
        await holder.execute(update(tasks).where(tasks.c.pk == task.pk).values(name="held"))
        for name in (first, "stop" if first == "expander" else "expander"):
            if name == "stop":
                runs.append(asyncio.create_task(rt.tasks.stop(task.task_id)))
            else:
                now = rt.clock.now_ms()
                runs.append(asyncio.create_task(expand_step(rt.store, task, chunk=3, now_ms=now)))
            if rt.store.dialect == "postgresql":
                await wait_until(partial(queued_on_locks, rt, len(runs)), timeout_s=10)
    await asyncio.gather(*runs)
    await expand(rt, task, chunk=3)
    assert await steps.finish_if_done(rt.store, task.pk, now_ms=rt.clock.now_ms()) is T.STOPPED
    state = await snapshot(rt.store, task.pk)
    assert state.by_status(S.STOPPED) == set(state.subtasks)
    assert len(state.subtasks) in (3, 6)


# --- outcomes ----------------------------------------------------------------------------


async def test_answers_to_one_attempt_count_once_even_within_one_batch(
    rt: Runtime, world: World
) -> None:
    d = world.devices
    task = await rt.tasks.create(a_task(world.app_id, policy=TaskPolicy(retry_count=1)), d[:3])
    one, two, three = await claim(rt, task, limit=3)
    # the same answer twice, and two different answers to one attempt, in one batch
    changed = await report(
        rt, task, (one, S.SUCCESS), (one, S.SUCCESS), (two, S.FAIL), (two, S.SUCCESS)
    )
    assert changed[task.pk].processing == 1  # type: ignore[attr-defined]
    state = await snapshot(rt.store, task.pk)
    assert state.subtasks[d[0]].status is S.SUCCESS
    two_now = state.subtasks[d[1]]
    assert (two_now.status, two_now.failures) in ((S.SUCCESS, 0), (S.FAIL_WAIT_RETRY, 1))
    assert await report(rt, task, (one, S.FAIL), (two, S.FAIL)) == {}
    assert (await snapshot(rt.store, task.pk)).subtasks == state.subtasks
    # an answer for an attempt not yet made counts nothing either
    ahead = Claimed(three.id, three.target, three.device_pk, three.attempt + 1, 0)
    assert await report(rt, task, (ahead, S.SUCCESS)) == {}


async def test_one_batch_of_answers_for_two_tasks_moves_each_tasks_counters(
    rt: Runtime, world: World
) -> None:
    d = world.devices
    policy = TaskPolicy(retry_count=1, retry_interval_s=0)
    first = await rt.tasks.create(a_task(world.app_id, policy=policy), d[:3])
    second = await rt.tasks.create(a_task(world.app_id, "other", policy=policy), d[3:5])
    a1, a2, a3 = await claim(rt, first, limit=3)
    b1, b2 = await claim(rt, second, limit=2)
    changed = await report(
        rt, first, (a1, S.SUCCESS), (a2, S.FAIL), (b1, S.TIMEOUT), (b2, S.SUCCESS), (a3, S.FAIL)
    )
    assert (changed[first.pk].success, changed[first.pk].fail_wait_retry) == (1, 2)  # type: ignore[attr-defined]
    assert (changed[second.pk].success, changed[second.pk].fail_wait_retry) == (1, 1)  # type: ignore[attr-defined]
    # the retries are claimed again (their own counter moves), then fail for good
    again = await claim(rt, first, limit=5)
    assert {c.target for c in again} == {d[1], d[2]}
    assert (await snapshot(rt.store, first.pk)).progress.processing == 2
    await report(rt, first, *((c, S.FAIL) for c in again))
    state = await snapshot(rt.store, first.pk)
    assert (state.progress.success, state.progress.fail) == (1, 2)
    assert (await snapshot(rt.store, second.pk)).by_status(S.FAIL_WAIT_RETRY) == {d[3]}


# --- retry -------------------------------------------------------------------------------


async def test_retry_runs_failed_timed_out_and_stopped_subtasks_again(
    rt: Runtime, world: World, clock: FakeClock
) -> None:
    d = world.devices
    task = await rt.tasks.create(
        a_task(world.app_id, policy=TaskPolicy(timeout_s=60)), [*d[:4], "ghost"]
    )
    ok, failed, silent, stopped = await claim(rt, task, limit=4)
    await report(rt, task, (ok, S.SUCCESS), (failed, S.FAIL))
    await rt.tasks.stop(task.task_id, targets=[d[3]])
    clock.advance(LEASE_MS + 1)
    await steps.time_out_overdue(rt.store, task, now_ms=clock.ms)
    assert await steps.finish_if_done(rt.store, task.pk, now_ms=clock.ms) is T.PARTIAL_SUCCESS
    state = await snapshot(rt.store, task.pk)
    assert (state.subtasks[d[1]].failures, state.subtasks[d[2]].failures) == (1, 1)
    assert state.subtasks[d[2]].status is S.TIMEOUT

    clock.advance(1000)
    assert await rt.tasks.retry(task.task_id) == []
    again = await rt.tasks.get(task.task_id)
    assert again.status is T.PROCESSING
    assert (again.finished_at, again.status_desc) == (None, None)
    assert again.deadline_at == clock.ms + 60_000
    state = await snapshot(rt.store, task.pk)
    assert state.by_status(S.WAITING) == {d[1], d[2], d[3]}
    assert state.by_status(S.SUCCESS) == {d[0]}
    # a target that named no device stays failed: another try cannot help it
    assert state.by_status(S.FAIL) == {"ghost"}
    assert all(state.subtasks[t].failures == 0 for t in (d[1], d[2], d[3]))
    assert all(state.subtasks[t].error_code is None for t in (d[1], d[2], d[3]))

    # the old attempts' answers come late and change nothing
    late = ((failed, S.SUCCESS), (silent, S.SUCCESS), (stopped, S.SUCCESS))
    assert await report(rt, task, *late) == {}
    reclaimed = {c.target: c.attempt for c in await claim(rt, task)}
    assert reclaimed == {d[1]: 2, d[2]: 2, d[3]: 2}


async def test_retrying_chosen_devices_reports_each(
    rt: Runtime, world: World, clock: FakeClock
) -> None:
    d = world.devices
    task = await rt.tasks.create(a_task(world.app_id), [*d[:3], "ghost"])
    ok, failed, _ = await claim(rt, task, limit=3)
    await report(rt, task, (ok, S.SUCCESS), (failed, S.FAIL))
    results = await rt.tasks.retry(task.task_id, targets=[d[0], d[1], d[2], "ghost", "nobody"])
    assert [(r.target, r.ok, r.error_code) for r in results] == [
        (d[0], False, "task.target_state"),
        (d[1], True, None),
        (d[2], False, "task.target_state"),
        # its subtask is failed, yet names no device: it is not retried, so not "ok"
        ("ghost", False, "task.target_state"),
        ("nobody", False, "task.target_not_found"),
    ]
    state = await snapshot(rt.store, task.pk)
    assert state.by_status(S.WAITING) == {d[1]}
    assert state.by_status(S.FAIL) == {"ghost"}


async def test_retry_is_refused_while_a_task_is_created_scheduled_or_stopping(
    rt: Runtime, world: World, clock: FakeClock
) -> None:
    expanding = await rt.tasks.create(a_task(world.app_id, selector=Selector(SelectorKind.ALL)))
    with pytest.raises(Conflict):
        await rt.tasks.retry(expanding.task_id)
    scheduled = await rt.tasks.create(
        a_task(world.app_id, "later", policy=TaskPolicy(schedule_at_ms=clock.ms + 1000)),
        world.devices[:2],
    )
    assert scheduled.status is T.WAITING
    with pytest.raises(Conflict):
        await rt.tasks.retry(scheduled.task_id, targets=world.devices[:1])
    await rt.tasks.stop(expanding.task_id)
    with pytest.raises(Conflict):
        await rt.tasks.retry(expanding.task_id)
    with pytest.raises(NotFound):
        await rt.tasks.retry("0" * 24)


async def test_retrying_a_task_with_nothing_to_retry_leaves_it_finished(
    rt: Runtime, world: World
) -> None:
    task = await rt.tasks.create(a_task(world.app_id), world.devices[:2])
    claimed = await claim(rt, task)
    await report(rt, task, *((c, S.SUCCESS) for c in claimed))
    assert await steps.finish_if_done(rt.store, task.pk, now_ms=rt.clock.now_ms()) is T.SUCCESS
    await rt.tasks.retry(task.task_id)
    assert (await rt.tasks.get(task.task_id)).status is T.SUCCESS


async def queued_on_locks(rt: Runtime, sessions: int) -> bool:
    """Whether `sessions` transactions of this PostgreSQL database wait for a lock."""
    async with rt.store.read() as conn:
        query = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int((await conn.execute(query)).scalar_one()) >= sessions


@pytest.mark.parametrize("first", ["finish", "retry"])
async def test_a_retry_racing_the_finaliser_never_leaves_work_in_a_finished_task(
    rt: Runtime, world: World, first: str
) -> None:
    # The finaliser reads the counters, then moves the status; a retry reads the status,
    # then moves subtasks and counters. Each must see what the other committed meanwhile,
    # or the task ends up finished with waiting subtasks that nobody will ever claim.
    d = world.devices
    task = await rt.tasks.create(a_task(world.app_id), d[:2])
    ok, failed = await claim(rt, task, limit=2)
    await report(rt, task, (ok, S.SUCCESS), (failed, S.FAIL))
    now = rt.clock.now_ms()
    runs: list[asyncio.Task[object]] = []
    async with rt.store.write() as holder:
        # hold the task row so both wait at the same point; on SQLite the whole store
        await holder.execute(update(tasks).where(tasks.c.pk == task.pk).values(name="held"))
        for name in (first, "retry" if first == "finish" else "finish"):
            if name == "finish":
                runs.append(
                    asyncio.create_task(steps.finish_if_done(rt.store, task.pk, now_ms=now))
                )
            else:
                runs.append(asyncio.create_task(rt.tasks.retry(task.task_id)))
            if rt.store.dialect == "postgresql":
                await wait_until(
                    partial(queued_on_locks, rt, len(runs)),
                    timeout_s=10,
                    message=f"{name} never queued for the held task row",
                )
    await asyncio.gather(*runs)
    state = await snapshot(rt.store, task.pk)
    assert state.by_status(S.WAITING) == {d[1]}
    assert state.status is T.PROCESSING
    assert await steps.finish_if_done(rt.store, task.pk, now_ms=now) is None


@pytest.mark.parametrize("stopper", ["stop", "abort"])
async def test_stopping_a_task_while_a_worker_claims_from_it_does_not_deadlock(
    rt: Runtime, world: World, stopper: str
) -> None:
    # every writer takes subtask rows first and the (hot) task row last; a stop that took
    # the task row first would wait for a claimed row while the claim waits for the task row
    d = world.devices
    policy = TaskPolicy(abort_min_finished=1, abort_fail_ratio=0.0)
    task = await rt.tasks.create(a_task(world.app_id, policy=policy), d[:5])
    (failed,) = await claim(rt, task, limit=1)
    await report(rt, task, (failed, S.FAIL))
    held = (await snapshot(rt.store, task.pk)).subtasks[d[1]].id
    postgres = rt.store.dialect == "postgresql"
    async with rt.store.write() as holder:
        # hold one waiting row, so the stop waits on it half way through its subtasks
        await holder.execute(
            update(subtasks).where(subtasks.c.id == held).values(updated_at=subtasks.c.updated_at)
        )
        if stopper == "stop":
            stopping = asyncio.create_task(rt.tasks.stop(task.task_id))
        else:
            now = rt.clock.now_ms()
            stopping = asyncio.create_task(steps.abort_if_failing(rt.store, task.pk, now_ms=now))
        if postgres:
            await wait_until(partial(queued_on_locks, rt, 1), timeout_s=10)
        claiming = asyncio.create_task(claim(rt, task, limit=4))
        if postgres:

            async def claimed_or_queued() -> bool:
                return claiming.done() or await queued_on_locks(rt, 2)

            await wait_until(claimed_or_queued, timeout_s=10)
    assert await stopping == ([] if stopper == "stop" else True)
    await claiming
    state = await snapshot(rt.store, task.pk)
    assert state.status is T.STOPPED
    assert state.by_status(S.STOPPED) == set(d[1:5])


# --- delete ------------------------------------------------------------------------------


async def test_deleting_a_task_removes_its_subtasks_and_frees_its_tags(
    rt: Runtime, world: World
) -> None:
    tags = {"batch": "b7", "owner": "ops"}
    task = await rt.tasks.create(a_task(world.app_id, tags=tags), world.devices[:3])
    keep = await rt.tasks.create(a_task(world.app_id, "keep"), world.devices[:3])
    assert (await rt.tasks.get(task.task_id)).tags == tags
    with pytest.raises(Conflict):
        await rt.tasks.delete(task.task_id)
    with pytest.raises(NotFound):
        await rt.tasks.delete(task.task_id, project_id=world.stranger_project)
    await rt.tasks.stop(task.task_id)
    await rt.tasks.delete(task.task_id)
    with pytest.raises(NotFound):
        await rt.tasks.get(task.task_id)
    with pytest.raises(NotFound):
        await rt.tasks.delete(task.task_id)
    async with rt.store.read() as conn:
        left = (
            await conn.execute(
                select(subtasks.c.task_pk, func.count()).group_by(subtasks.c.task_pk)
            )
        ).all()
        tag_rows = (await conn.execute(select(func.count()).select_from(task_tags))).scalar_one()
    assert [tuple(r) for r in left] == [(keep.pk, 3)]
    assert tag_rows == 0
    again = await rt.tasks.create(a_task(world.app_id, "again", tags=tags), world.devices[:1])
    assert (await rt.tasks.get(again.task_id)).tags == tags


# --- time --------------------------------------------------------------------------------


async def test_a_scheduled_task_waits_for_its_time(
    rt: Runtime, world: World, clock: FakeClock
) -> None:
    created_at = clock.ms
    policy = TaskPolicy(schedule_at_ms=created_at + 60_000, timeout_s=30)
    task = await rt.tasks.create(a_task(world.app_id, policy=policy), world.devices[:2])
    assert task.status is T.WAITING
    assert (task.scheduled_at, task.started_at, task.deadline_at) == (
        created_at + 60_000,
        None,
        None,
    )
    clock.advance(59_999)
    assert not await steps.start_if_due(rt.store, task.pk, now_ms=clock.ms)
    assert not await steps.time_out_task(rt.store, task.pk, now_ms=clock.ms)
    assert (await rt.tasks.get(task.task_id)).status is T.WAITING
    clock.advance(1)
    assert await steps.start_if_due(rt.store, task.pk, now_ms=clock.ms)
    assert not await steps.start_if_due(rt.store, task.pk, now_ms=clock.ms)
    started = await rt.tasks.get(task.task_id)
    assert started.status is T.PROCESSING
    assert (started.started_at, started.deadline_at) == (clock.ms, clock.ms + 30_000)


async def test_a_task_past_its_timeout_times_out_with_its_unfinished_subtasks(
    rt: Runtime, world: World, clock: FakeClock
) -> None:
    d = world.devices
    policy = TaskPolicy(timeout_s=10, retry_count=2, retry_interval_s=60)
    task = await rt.tasks.create(a_task(world.app_id, policy=policy), d[:4])
    ok, retried, busy = await claim(rt, task, limit=3)
    await report(rt, task, (ok, S.SUCCESS), (retried, S.FAIL))
    assert (await snapshot(rt.store, task.pk)).subtasks[d[1]].status is S.FAIL_WAIT_RETRY
    clock.advance(9_999)
    assert not await steps.time_out_task(rt.store, task.pk, now_ms=clock.ms)
    clock.advance(1)
    assert await steps.time_out_task(rt.store, task.pk, now_ms=clock.ms)
    assert not await steps.time_out_task(rt.store, task.pk, now_ms=clock.ms)
    done = await rt.tasks.get(task.task_id)
    assert (done.status, done.finished_at) == (T.TIMEOUT, clock.ms)
    state = await snapshot(rt.store, task.pk)
    assert state.by_status(S.SUCCESS) == {d[0]}
    assert state.by_status(S.TIMEOUT) == {d[1], d[2], d[3]}
    assert {state.subtasks[t].error_code for t in (d[1], d[2], d[3])} == {
        ErrorCode.TASK_TIMEOUT.value
    }
    assert await report(rt, task, (busy, S.SUCCESS)) == {}
    assert await steps.finish_if_done(rt.store, task.pk, now_ms=clock.ms) is None
    assert (await rt.tasks.get(task.task_id)).status is T.TIMEOUT

    await rt.tasks.retry(task.task_id)
    again = await rt.tasks.get(task.task_id)
    assert (again.status, again.deadline_at) == (T.PROCESSING, clock.ms + 10_000)


async def test_an_empty_task_fails_saying_why(rt: Runtime, world: World) -> None:
    task = await rt.tasks.create(a_task(world.app_id, selector=Selector(SelectorKind.ALL)))
    # nothing matches an area nobody is in
    empty = await rt.tasks.create(
        a_task(world.app_id, "empty", selector=Selector(SelectorKind.AREA, area="moon"))
    )
    await expand(rt, task)
    done, _ = await expand(rt, empty)
    assert (done.status, done.progress.total) == (T.PROCESSING, 0)
    assert await steps.finish_if_done(rt.store, empty.pk, now_ms=rt.clock.now_ms()) is T.FAIL
    finished = await rt.tasks.get(empty.task_id)
    assert finished.status_desc == "no device matched the task's targets"


# --- tags --------------------------------------------------------------------------------


async def test_a_tag_pair_belongs_to_one_task_of_a_project(rt: Runtime, world: World) -> None:
    d = world.devices
    first = await rt.tasks.create(a_task(world.app_id, tags={"batch": "b1"}), d[:1])
    assert first.tags == {"batch": "b1"}
    before = await count_rows(rt.store)
    with pytest.raises(AlreadyExists):
        await rt.tasks.create(a_task(world.app_id, "second", tags={"batch": "b1"}), d[:2])
    with pytest.raises(AlreadyExists):
        await rt.tasks.create(
            a_task(world.neighbour_id, "third", tags={"site": "x", "batch": "b1"}),
            world.neighbour_devices,
        )
    assert await count_rows(rt.store) == before
    # the same name with another value, or the same pair in another project, is free
    await rt.tasks.create(a_task(world.app_id, "fourth", tags={"batch": "b2"}), d[:1])
    stranger = await rt.tasks.create(
        a_task(world.stranger_id, tags={"batch": "b1"}), world.stranger_devices
    )
    assert (await rt.tasks.get(stranger.task_id)).tags == {"batch": "b1"}
