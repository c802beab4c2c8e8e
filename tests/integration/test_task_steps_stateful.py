"""Random sequences of the engine's units of work against a model, on SQLite and PostgreSQL.

A Hypothesis state machine creates a task over registered devices (repeats and unknown ids
included), then claims batches for two workers, reports outcomes (success, fail, timeout),
re-delivers duplicate and late ones, lets attempts and the whole task time out and a
scheduled task start on a clock it moves, requeues a dead worker's claims, retries, stops,
finishes and aborts, in any order. After every step the store must agree with a plain
Python model, and:

- the task row's counters equal the per-status row counts, `n_total` the number of rows;
- an attempt's outcome counts once (the model records which attempt each outcome was
  applied for; `failures` in the store must match it);
- terminal subtasks and finished tasks change only through a retry;
- attempt numbers only grow.

The machine runs its coroutines on an `asyncio.Runner` of its own (Hypothesis drives it
synchronously), over one runtime opened per database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fleetbatch.domain.errors import Conflict
from fleetbatch.domain.states import (
    FINISHED_TASK_STATUSES,
    TERMINAL_SUBTASK_STATUSES,
    SubtaskStatus,
    TaskStatus,
)
from fleetbatch.domain.tasks import (
    NewTask,
    Progress,
    Task,
    TaskPolicy,
    TaskType,
    final_status,
    should_abort,
)
from fleetbatch.engine import steps
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from fleetbatch.store.subtasks import Outcome
from support.engine import register_devices
from support.tasks import FakeClock, Snapshot, snapshot

S = SubtaskStatus
T = TaskStatus
R = TypeVar("R")

DEVICES = 6
WORKERS = ("w1", "w2")
LEASE_MS = 5_000
RETRY_INTERVAL_S = 2
UNFINISHED = (S.WAITING, S.PROCESSING, S.FAIL_WAIT_RETRY)
RETRYABLE = (S.FAIL, S.TIMEOUT, S.STOPPED, S.FAIL_WAIT_RETRY)
OUTCOMES = st.sampled_from([S.SUCCESS, S.FAIL, S.TIMEOUT])
# a stop or retry of the whole task (one in three; most name some devices)
WHOLE_TASK = st.sampled_from([False, False, True])


@dataclass
class Env:
    """What every example shares: one event loop, one opened runtime, registered devices."""

    runner: asyncio.Runner
    runtime: Runtime
    clock: FakeClock
    app_id: str
    devices: list[str]

    def run(self, make: Callable[[], Awaitable[R]]) -> R:
        async def call() -> R:
            return await make()

        return self.runner.run(call())


@dataclass
class Sub:
    """The model of one subtask."""

    target: str
    id: int
    known: bool  # the target names a registered device
    status: SubtaskStatus
    attempt: int = 0
    failures: int = 0
    due_at: int | None = None
    claimed_by: str | None = None
    lease_until: int | None = None
    applied: list[int] = field(default_factory=list)  # attempts whose outcome counted


class TaskSteps(RuleBasedStateMachine):
    """One task driven through the steps and the service, compared with a model."""

    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env = env
        self.task: Task | None = None
        self.subs: dict[str, Sub] = {}
        self.status = T.PROCESSING
        self.deadline_at: int | None = None
        self.policy = TaskPolicy()
        self.issued: list[tuple[str, int]] = []  # every (target, attempt) ever claimed
        self.sent: list[tuple[str, int, SubtaskStatus]] = []  # every outcome reported
        self.last_rule = ""
        self.previous: Snapshot | None = None

    # --- helpers ------------------------------------------------------------------------

    @property
    def now(self) -> int:
        return self.env.clock.ms

    @property
    def pk(self) -> int:
        assert self.task is not None
        return self.task.pk

    @property
    def task_id(self) -> str:
        assert self.task is not None
        return self.task.task_id

    def progress(self) -> Progress:
        counts = {status.value: 0 for status in S}
        for sub in self.subs.values():
            counts[sub.status.value] += 1
        return Progress(total=len(self.subs), **counts)

    def count(self, *statuses: SubtaskStatus) -> int:
        return sum(1 for s in self.subs.values() if s.status in statuses)

    def claimable(self) -> bool:
        # the dispatcher claims for running tasks only
        return self.status is T.PROCESSING and bool(self.count(S.WAITING, S.FAIL_WAIT_RETRY))

    def processing(self) -> list[tuple[str, int]]:
        return sorted((s.target, s.attempt) for s in self.subs.values() if s.status is S.PROCESSING)

    def apply(self, target: str, attempt: int, status: SubtaskStatus) -> bool:
        """The model of one guarded outcome: only the current attempt of a processing subtask."""
        sub = self.subs[target]
        if sub.status is not S.PROCESSING or sub.attempt != attempt:
            return False
        assert attempt not in sub.applied, "the model applied an attempt twice"
        sub.applied.append(attempt)
        sub.claimed_by = sub.lease_until = None
        sub.due_at = None
        if status is S.SUCCESS:
            sub.status = S.SUCCESS
        else:
            if sub.failures < self.policy.retry_budget:
                sub.status = S.FAIL_WAIT_RETRY
                sub.due_at = self.now + self.policy.retry_interval_s * 1000
            else:
                sub.status = status
            sub.failures += 1
        return True

    def move(self, sub: Sub, status: SubtaskStatus) -> None:
        sub.status = status
        sub.claimed_by = sub.lease_until = None

    def finish(self) -> TaskStatus | None:
        """The model of `steps.finish`."""
        if self.progress().unfinished or self.status not in (T.PROCESSING, T.STOPPING):
            return None
        self.status = T.STOPPED if self.status is T.STOPPING else final_status(self.progress())
        return self.status

    def send(self, outcomes: list[tuple[str, int, SubtaskStatus]]) -> None:
        """Report outcomes in one batch and check which of them counted."""
        budget, interval = self.policy.retry_budget, self.policy.retry_interval_s
        batch = [
            Outcome(
                self.subs[target].id,
                attempt,
                status,
                error_code=None if status is S.SUCCESS else f"test.{status.value}",
                retry_budget=budget,
                retry_at=self.now + interval * 1000,
            )
            for target, attempt, status in outcomes
        ]
        store, now = self.env.runtime.store, self.now
        changed = self.env.run(lambda: steps.apply_outcomes(store, batch, now_ms=now))
        applied = False
        for target, attempt, status in dict.fromkeys(outcomes):
            applied |= self.apply(target, attempt, status)
        assert (self.pk in changed) == applied
        self.sent.extend(outcomes)

    # --- create -------------------------------------------------------------------------

    @initialize(
        picked=st.lists(st.integers(0, DEVICES - 1), min_size=1, max_size=7),
        unknown=st.integers(0, 2),
        retry_count=st.integers(0, 2),
        max_retransmit=st.integers(0, 1),
        interval_s=st.sampled_from([0, RETRY_INTERVAL_S]),
        timeout_s=st.sampled_from([None, 20]),
        schedule_in_ms=st.sampled_from([None, None, 3_000]),
        abort=st.sampled_from([None, (1, 0.0), (2, 0.5), (3, 0.3)]),
    )
    def create(
        self,
        picked: list[int],
        unknown: int,
        retry_count: int,
        max_retransmit: int,
        interval_s: int,
        timeout_s: int | None,
        schedule_in_ms: int | None,
        abort: tuple[int, float] | None,
    ) -> None:
        self.last_rule = "create"
        self.policy = TaskPolicy(
            retry_count=retry_count,
            max_retransmit=max_retransmit,
            retry_interval_s=interval_s,
            timeout_s=timeout_s,
            schedule_at_ms=self.now + schedule_in_ms if schedule_in_ms else None,
            abort_min_finished=abort[0] if abort else None,
            abort_fail_ratio=abort[1] if abort else None,
        )
        listed = [self.env.devices[i] for i in picked] + [f"ghost-{n}" for n in range(unknown)]
        new = NewTask(
            app_id=self.env.app_id,
            task_type=TaskType.CREATE_COMMANDS,
            name="stateful",
            document={"paras": {}},
            policy=self.policy,
        )
        service = self.env.runtime.tasks
        self.task = self.env.run(lambda: service.create(new, listed))
        assert self.task.policy == self.policy
        if schedule_in_ms:
            # scheduled: waiting, and its timeout runs from when it starts
            self.status, self.deadline_at = T.WAITING, None
        else:
            self.deadline_at = self.now + timeout_s * 1000 if timeout_s else None
        rows = self.env.run(lambda: snapshot(self.env.runtime.store, self.pk))
        for target in dict.fromkeys(listed):
            known = not target.startswith("ghost-")
            self.subs[target] = Sub(
                target, rows.subtasks[target].id, known, S.WAITING if known else S.FAIL
            )

    # --- the engine's steps -------------------------------------------------------------

    @precondition(lambda self: self.claimable())
    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 4))
    def claim(self, worker: str, limit: int) -> None:
        self.last_rule = "claim"
        self.claim_batch(worker, limit)

    @precondition(lambda self: self.claimable())
    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 4), data=st.data())
    def dispatch(self, worker: str, limit: int, data: st.DataObject) -> None:
        """A claim whose devices answer at once (some of them; the rest stay in flight)."""
        self.last_rule = "dispatch"
        claimed = self.claim_batch(worker, limit)
        if claimed:
            answered = data.draw(st.lists(st.sampled_from(claimed), min_size=1, unique=True))
            self.send([(target, attempt, data.draw(OUTCOMES)) for target, attempt in answered])

    def claim_batch(self, worker: str, limit: int) -> list[tuple[str, int]]:
        """Claim through the step and check it took exactly what the model says is due."""
        now = self.now
        request = steps.ClaimRequest(self.pk, limit, lease_until=now + LEASE_MS)
        store = self.env.runtime.store
        got = self.env.run(lambda: steps.claim_batch(store, request, worker_id=worker, now_ms=now))
        # retries that are due first, then waiting ones, each in id order
        due = sorted(
            (
                s
                for s in self.subs.values()
                if s.status is S.FAIL_WAIT_RETRY and (s.due_at or 0) <= now
            ),
            key=lambda s: s.id,
        )[:limit]
        waiting = sorted(
            (s for s in self.subs.values() if s.status is S.WAITING), key=lambda s: s.id
        )[: limit - len(due)]
        expected = due + waiting
        assert [(c.id, c.attempt) for c in got] == [(s.id, s.attempt + 1) for s in expected]
        for sub in expected:
            sub.status = S.PROCESSING
            sub.attempt += 1
            sub.claimed_by, sub.lease_until, sub.due_at = worker, now + LEASE_MS, None
            self.issued.append((sub.target, sub.attempt))
        return [(sub.target, sub.attempt) for sub in expected]

    @precondition(lambda self: self.processing())
    @rule(data=st.data())
    def report(self, data: st.DataObject) -> None:
        """Outcomes of current attempts; the same answer may come twice in one batch."""
        self.last_rule = "report"
        chosen = data.draw(st.lists(st.sampled_from(self.processing()), min_size=1, max_size=4))
        statuses = {key: data.draw(OUTCOMES) for key in dict.fromkeys(chosen)}
        self.send([(target, attempt, statuses[target, attempt]) for target, attempt in chosen])

    @precondition(lambda self: self.issued)
    @rule(data=st.data(), status=OUTCOMES)
    def report_late(self, data: st.DataObject, status: SubtaskStatus) -> None:
        """An answer to any attempt ever made: usually one retried, timed out or stopped."""
        self.last_rule = "report_late"
        target, attempt = data.draw(st.sampled_from(self.issued))
        self.send([(target, attempt, status)])

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """An answer already reported comes again."""
        self.last_rule = "redeliver"
        self.send([data.draw(st.sampled_from(self.sent))])

    @rule(ms=st.sampled_from([1, 1_000, RETRY_INTERVAL_S * 1000, LEASE_MS, LEASE_MS + 1]))
    def advance(self, ms: int) -> None:
        self.last_rule = "advance"
        self.env.clock.advance(ms)

    @precondition(lambda self: self.count(S.PROCESSING))
    @rule()
    def time_out_overdue(self) -> None:
        self.last_rule = "time_out_overdue"
        service, store, now = self.env.runtime.tasks, self.env.runtime.store, self.now
        task = self.env.run(lambda: service.get(self.task_id))
        changed = self.env.run(lambda: steps.time_out_overdue(store, task, now_ms=now))
        late = [
            s for s in self.subs.values() if s.status is S.PROCESSING and (s.lease_until or 0) < now
        ]
        for sub in late:
            assert self.apply(sub.target, sub.attempt, S.TIMEOUT)
        assert (self.pk in changed) == bool(late)

    @precondition(lambda self: self.count(S.PROCESSING))
    @rule(worker=st.sampled_from(WORKERS))
    def requeue_orphans(self, worker: str) -> None:
        self.last_rule = "requeue_orphans"
        store, now = self.env.runtime.store, self.now
        changed = self.env.run(lambda: steps.requeue_orphans(store, [worker], now_ms=now))
        orphans = [
            s for s in self.subs.values() if s.status is S.PROCESSING and s.claimed_by == worker
        ]
        for sub in orphans:
            self.move(sub, S.WAITING)  # the attempt number stays: the next claim moves it on
        assert (self.pk in changed) == bool(orphans)

    @rule()
    def finish_if_done(self) -> None:
        self.last_rule = "finish_if_done"
        store, now = self.env.runtime.store, self.now
        got = self.env.run(lambda: steps.finish_if_done(store, self.pk, now_ms=now))
        assert got == self.finish()

    @precondition(lambda self: self.status is T.WAITING)
    @rule()
    def start_if_due(self) -> None:
        self.last_rule = "start_if_due"
        store, now = self.env.runtime.store, self.now
        got = self.env.run(lambda: steps.start_if_due(store, self.pk, now_ms=now))
        schedule_at = self.policy.schedule_at_ms
        assert schedule_at is not None
        assert got == (schedule_at <= now)
        if got:
            self.status = T.PROCESSING
            timeout_s = self.policy.timeout_s
            self.deadline_at = now + timeout_s * 1000 if timeout_s else None

    @precondition(lambda self: self.policy.abort_min_finished is not None)
    @rule()
    def abort_if_failing(self) -> None:
        self.last_rule = "abort_if_failing"
        store, now = self.env.runtime.store, self.now
        got = self.env.run(lambda: steps.abort_if_failing(store, self.pk, now_ms=now))
        expected = self.status is T.PROCESSING and should_abort(self.progress(), self.policy)
        assert got == expected
        if expected:
            self.status = T.STOPPING
            for sub in self.subs.values():
                if sub.status in UNFINISHED:
                    self.move(sub, S.STOPPED)
            assert self.finish() is T.STOPPED

    @precondition(lambda self: self.deadline_at is not None)
    @rule()
    def time_out_task(self) -> None:
        self.last_rule = "time_out_task"
        store, now = self.env.runtime.store, self.now
        got = self.env.run(lambda: steps.time_out_task(store, self.pk, now_ms=now))
        expected = (
            self.status in (T.PROCESSING, T.WAITING)
            and self.deadline_at is not None
            and self.deadline_at <= now
        )
        assert got == expected
        if expected:
            for sub in self.subs.values():
                if sub.status in UNFINISHED:
                    self.move(sub, S.TIMEOUT)
            self.status = T.TIMEOUT

    # --- the service ----------------------------------------------------------------------

    def chosen_targets(self, data: st.DataObject) -> list[str]:
        names = [*sorted(self.subs), "nobody"]
        return data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))

    @rule(data=st.data(), whole=WHOLE_TASK)
    def retry(self, data: st.DataObject, whole: bool) -> None:
        self.last_rule = "retry"
        targets = None if whole else self.chosen_targets(data)
        service = self.env.runtime.tasks
        if self.status in (T.INITIALIZING, T.WAITING, T.STOPPING):
            with pytest.raises(Conflict):
                self.env.run(lambda: service.retry(self.task_id, targets=targets))
            return
        results = self.env.run(lambda: service.retry(self.task_id, targets=targets))
        named = set(self.subs) if targets is None else set(targets)
        expected_results = []
        moved = 0
        for target in targets or ():
            sub = self.subs.get(target)
            if sub is None:
                expected_results.append((target, False, "task.target_not_found"))
            elif sub.status in RETRYABLE and sub.known:
                expected_results.append((target, True, None))
            else:
                expected_results.append((target, False, "task.target_state"))
        for sub in self.subs.values():
            if sub.target in named and sub.status in RETRYABLE and sub.known:
                self.move(sub, S.WAITING)
                sub.failures, sub.due_at = 0, None
                moved += 1
        assert [(r.target, r.ok, r.error_code) for r in results] == expected_results
        if moved and self.status in FINISHED_TASK_STATUSES:
            self.status = T.PROCESSING
            timeout_s = self.policy.timeout_s
            self.deadline_at = self.now + timeout_s * 1000 if timeout_s else None

    @rule(data=st.data(), whole=WHOLE_TASK)
    def stop(self, data: st.DataObject, whole: bool) -> None:
        self.last_rule = "stop"
        targets = None if whole else self.chosen_targets(data)
        service = self.env.runtime.tasks
        if self.status in FINISHED_TASK_STATUSES:
            with pytest.raises(Conflict):
                self.env.run(lambda: service.stop(self.task_id, targets=targets))
            return
        results = self.env.run(lambda: service.stop(self.task_id, targets=targets))
        if targets is None:
            assert results == []
            before = self.status
            self.status = T.STOPPING
            for sub in self.subs.values():
                if sub.status in UNFINISHED:
                    self.move(sub, S.STOPPED)
            if before is not T.INITIALIZING:
                assert self.finish() is T.STOPPED
            return
        expected_results = []
        for target in targets:
            sub = self.subs.get(target)
            if sub is None:
                expected_results.append((target, False, "task.target_not_found"))
            elif sub.status in UNFINISHED:
                expected_results.append((target, True, None))
                self.move(sub, S.STOPPED)
            else:
                expected_results.append((target, False, "task.target_state"))
        assert [(r.target, r.ok, r.error_code) for r in results] == expected_results
        if self.status is T.PROCESSING:
            self.finish()

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def the_store_agrees_with_the_model(self) -> None:
        if self.task is None:
            return
        # `snapshot` itself checks counters == per-status row counts and n_total == rows
        now = self.env.run(lambda: snapshot(self.env.runtime.store, self.pk))
        assert now.status is self.status
        assert set(now.subtasks) == set(self.subs)
        for target, sub in self.subs.items():
            row = now.subtasks[target]
            assert (row.status, row.attempt, row.failures) == (
                sub.status,
                sub.attempt,
                sub.failures,
            ), target
        if now.status in FINISHED_TASK_STATUSES:
            assert now.progress.unfinished == 0

        before = self.previous
        if before is not None:
            for target, row in now.subtasks.items():
                old = before.subtasks[target]
                assert row.attempt >= old.attempt, "an attempt number went back"
                if old.status in TERMINAL_SUBTASK_STATUSES and row.status is not old.status:
                    assert self.last_rule == "retry", (
                        f"{target} left {old.status} by {self.last_rule}"
                    )
            if before.status in FINISHED_TASK_STATUSES and now.status is not before.status:
                assert self.last_rule == "retry", f"the task left {before.status}"
        self.previous = now


def open_env(runner: asyncio.Runner, settings: Settings) -> Env:
    """A runtime on the test's database, read by a fake clock, with devices registered."""
    clock = FakeClock()
    runtime = runner.run(Runtime.open(settings, clock=clock))

    async def register() -> tuple[str, list[str]]:
        node_ids = (f"d{n}" for n in range(DEVICES))
        app, made = await register_devices(runtime.registry, "stateful", node_ids)
        return app.app_id, [d.device_id for d in made]

    app_id, devices = runner.run(register())
    return Env(runner, runtime, clock, app_id, devices)


def test_task_steps_keep_their_invariants(settings: Settings) -> None:
    with asyncio.Runner() as runner:
        env = open_env(runner, settings)
        try:
            run_state_machine_as_test(
                lambda: TaskSteps(env),
                settings=hypothesis_settings(
                    max_examples=100,
                    stateful_step_count=25,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                ),
            )
        finally:
            runner.run(env.runtime.close())
