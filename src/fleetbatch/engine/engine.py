"""The engine worker: dispatcher, ingestor, sweeper and expander loops over the store.

- The **dispatcher** claims due subtasks in batches, round-robin across running tasks,
  within each task's concurrency and rate limits and this worker's in-flight window, and
  hands them to the task type's executor. It sleeps on an event: a task created in this
  process, a freed slot or a sweep wakes it; nothing polls while the fleet is idle.
- The **ingestor** gathers outcomes for `flush_ms` and applies them in one guarded,
  set-based UPDATE per batch; the counters change in the same transaction.
- The **sweeper** renews this worker's lease, hands a dead worker's subtasks out again,
  times out attempts whose lease ran out, starts scheduled tasks, times out whole tasks,
  applies the abort rule and finalises tasks whose subtasks are all terminal. It also
  picks up tasks other processes (the CLI) created.
- The **expander** turns selectors into subtasks, chunk by chunk.

Outcomes waiting in memory are lost with the process, but their subtasks stay processing,
claimed by this worker; once its lease runs out another worker (or this one restarted)
sends them again, so nothing is lost and the attempt guard keeps anything from counting
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError

from fleetbatch.clock import Clock
from fleetbatch.devices.channel import DeviceChannel
from fleetbatch.devices.topics import CommandResponse, Uplink
from fleetbatch.domain.errors import FleetbatchError
from fleetbatch.domain.states import TaskStatus
from fleetbatch.domain.tasks import Progress, Task, TaskType, parse_request_id, should_abort
from fleetbatch.engine import steps
from fleetbatch.engine.executors.async_commands import is_delayed
from fleetbatch.engine.executors.base import DeviceExecutor, Executor, StoreExecutor, TaskRun
from fleetbatch.engine.expander import expand_step
from fleetbatch.engine.service import WAKE_CHANNEL, TaskService
from fleetbatch.settings import Settings
from fleetbatch.store import outbox as outbox_rows
from fleetbatch.store import subtasks as subtask_rows
from fleetbatch.store import tasks as task_rows
from fleetbatch.store.database import Store
from fleetbatch.store.schema import engine_workers
from fleetbatch.store.subtasks import Claimed, Outcome

log = logging.getLogger(__name__)

T = TaskStatus
# beyond an attempt's own timeout, before the sweeper assumes its answer was lost
LEASE_GRACE_S = 5.0
# at most this many outcomes per write transaction
MAX_APPLY = 5000
RETRY_DB_S = 0.5


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's knobs (from Settings)."""

    batch_size: int = 500
    max_in_flight: int = 2000
    sweep_s: float = 0.5
    lease_s: float = 10.0
    flush_ms: float = 2.0
    expand_chunk: int = 20_000
    command_timeout_s: float = 20.0
    close_wait_s: float = 2.0  # on close, how long answers in flight are awaited

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            batch_size=settings.engine_batch_size,
            max_in_flight=settings.engine_max_in_flight,
            sweep_s=settings.engine_sweep_s,
            lease_s=settings.engine_lease_s,
            flush_ms=settings.engine_flush_ms,
            expand_chunk=settings.engine_expand_chunk,
            command_timeout_s=settings.command_timeout_s,
            close_wait_s=settings.engine_close_wait_s,
        )


@dataclass
class EngineStats:
    """Counts since start, for logs, metrics and benchmarks."""

    claimed: int = 0
    applied: int = 0
    flushes: int = 0
    claims: int = 0
    late_answers: int = 0
    db_errors: int = 0
    finished_tasks: int = 0
    expanded: int = 0
    recent: list[int] = field(default_factory=list)


def new_worker_id() -> str:
    """A worker id unique to this process (host, pid and a random part)."""
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{os.urandom(3).hex()}"


class Engine:
    """One engine worker. `async with Engine(...)`, or `start()` / `close()`."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        service: TaskService,
        executors: dict[TaskType, Executor],
        *,
        channel: DeviceChannel | None = None,
        config: EngineConfig | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.service = service
        self.executors = executors
        self.channel = channel
        self.config = config or EngineConfig()
        self.worker_id = worker_id or new_worker_id()
        self.stats = EngineStats()
        self.runs: dict[int, TaskRun] = {}
        self._in_flight = 0
        self._ready = 0  # claimed subtasks in the runs' `ready` queues, not sent yet
        self._send_scheduled = False
        self._send_round = 0
        self._closing = False
        self._outcomes: list[tuple[TaskRun | None, Outcome]] = []
        self._phases: list[tuple[int, int, str]] = []
        self._late: list[tuple[str, Outcome]] = []
        self._wake = asyncio.Event()
        self._flush_wanted = asyncio.Event()
        self._sweep_now = asyncio.Event()
        self._expand_wanted = asyncio.Event()
        self._finish_check: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._round = 0
        self._listeners: list[Callable[[Task, TaskStatus], None]] = []
        service.add_listener(self.wake)
        for executor in executors.values():
            bind = getattr(executor, "bind_phase_report", None)
            if bind is not None:
                # an executor that records finer steps of an attempt (async commands' DELIVERED)
                bind(self.phase_report)
        if channel is not None:
            channel.add_uplink_handler(self._on_uplink)
            channel.add_presence_handler(self._on_presence)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register this worker and start the loops."""
        await self._heartbeat()
        await self._refresh()
        for name, loop in (
            ("dispatch", self._dispatch_loop),
            ("ingest", self._ingest_loop),
            ("sweep", self._sweep_loop),
            ("expand", self._expand_loop),
            *((("listen", self._listen_loop),) if self.store.dialect == "postgresql" else ()),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=f"fleetbatch-engine-{name}"))

    async def close(self) -> None:
        """Stop dispatching, give answers in flight a moment, apply them, retire this worker."""
        self._closing = True  # nothing more is sent; what is claimed is handed out again
        loops = {t.get_name(): t for t in self._tasks}
        ingest = loops.pop("fleetbatch-engine-ingest", None)
        for task in loops.values():
            task.cancel()
        for task in loops.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # answers already on their way count now instead of being sent again by the next
        # worker; the wait is short, for a restart must not hang on silent devices
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.close_wait_s):
                while self._in_flight > 0:
                    self._wake.clear()
                    await self._wake.wait()
        if ingest is not None:
            ingest.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ingest
        self._tasks.clear()
        with contextlib.suppress(FleetbatchError, DBAPIError, OSError, TimeoutError):
            async with asyncio.timeout(5):
                await self._flush()
                # what is still in flight is handed out again at once by the next worker
                async with self.store.write() as conn:
                    await conn.execute(
                        update(engine_workers)
                        .where(engine_workers.c.worker_id == self.worker_id)
                        .values(lease_until=0)
                    )

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def wake(self) -> None:
        """Look for work now (a task was created, stopped or retried)."""
        for run in self.runs.values():
            run.idle = False
            run.retries = True
        self._sweep_now.set()
        self._wake.set()

    def add_finish_listener(self, listener: Callable[[Task, TaskStatus], None]) -> None:
        """Call `listener(task, status)` when this worker finalises a task."""
        self._listeners.append(listener)

    @property
    def in_flight(self) -> int:
        """Device operations this worker has sent and not yet heard back about."""
        return self._in_flight

    # --- dispatcher -----------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                progressed = await self._dispatch_round()
            except (DBAPIError, OSError, FleetbatchError) as exc:
                self.stats.db_errors += 1
                log.warning("engine.dispatch_failed error=%s", exc)
                progressed = False
                await asyncio.sleep(RETRY_DB_S)
            if progressed:
                # let answers and the ingestor run between rounds
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.sweep_s):
                    await self._wake.wait()

    async def _dispatch_round(self) -> bool:
        runs = [r for r in self.runs.values() if r.task.status is T.PROCESSING and not r.idle]
        if not runs:
            return False
        # round-robin: each round starts one task further, so no task waits behind another
        self._round += 1
        start = self._round % len(runs)
        progressed = False
        batch = self.config.batch_size
        limit_all = self.config.max_in_flight
        for run in runs[start:] + runs[:start]:
            # what this worker holds: sent and not answered, plus claimed ahead (as many
            # again as the window); claim in batches, once a quarter of that is free, not
            # one subtask per answer
            held = self._in_flight + self._ready
            window = 2 * limit_all - held
            if window <= 0 or (held and window < _low_mark(limit_all, batch)):
                break
            room = run.claim_room()
            limit = run.task.policy.max_concurrency
            if (
                (run.in_flight or run.ready)
                and limit is not None
                and room < _low_mark(limit, batch)
            ):
                continue
            now = time.monotonic()
            wanted = min(batch, window, room, run.allowance(now))
            if wanted <= 0:
                continue
            executor = self.executors[run.task.task_type]
            if executor.kind == "store":
                count = await self._run_store_batch(run, executor, wanted)  # type: ignore[arg-type]
            else:
                count = await self._run_device_batch(run, executor, wanted)  # type: ignore[arg-type]
            if count:
                progressed = True
                run.spend(count)
            if count < wanted:
                run.idle = True
        return progressed

    async def _run_device_batch(self, run: TaskRun, executor: DeviceExecutor, wanted: int) -> int:
        now = self.clock.now_ms()
        request = steps.ClaimRequest(
            task_pk=run.pk,
            limit=wanted,
            # a subtask claimed ahead waits for a slot at most one attempt's timeout (the
            # ones in flight before it answer or time out by then), then has its own
            lease_until=now + int((2 * run.timeout_s + LEASE_GRACE_S) * 1000),
            online_only=executor.online_only(run.task),
            phase=executor.claim_phase(run.task),
            retries=run.retries,
            notify=bool(run.task.callback_url),
        )
        claimed = await steps.claim_batch(self.store, request, worker_id=self.worker_id, now_ms=now)
        if not claimed:
            return 0
        self.stats.claims += 1
        self.stats.claimed += len(claimed)
        run.ready.extend(claimed)
        self._ready += len(claimed)
        self._send_ready()
        return len(claimed)

    def _send_ready(self) -> None:
        """Send claimed subtasks while this worker's window and each task's limit allow."""
        self._send_scheduled = False
        if not self._ready or self._closing:
            return
        runs = [r for r in self.runs.values() if r.ready]
        self._send_round += 1
        start = self._send_round % max(1, len(runs))
        for i, run in enumerate(runs[start:] + runs[:start]):
            if run.task.status is not T.PROCESSING:
                # stopped or finished meanwhile: its claimed subtasks were stopped with it
                self._drop_ready(run)
                continue
            free = self.config.max_in_flight - self._in_flight
            if free <= 0:
                break
            # a fair share of the free slots for each task that has subtasks ready
            share = -(-free // (len(runs) - i))
            count = min(share, run.room(), len(run.ready))
            if count <= 0:
                continue
            items = [run.ready.popleft() for _ in range(count)]
            self._ready -= count
            run.in_flight += count
            self._in_flight += count
            self.executors[run.task.task_type].dispatch(run, items, self.report)  # type: ignore[union-attr]

    def _drop_ready(self, run: TaskRun) -> None:
        """Forget a run's unsent subtasks (its task stopped or finished; in the store they
        were stopped with it, or are handed out again when this worker's lease ends)."""
        self._ready -= len(run.ready)
        run.ready.clear()

    async def _run_store_batch(self, run: TaskRun, executor: StoreExecutor, wanted: int) -> int:
        now = self.clock.now_ms()
        request = steps.ClaimRequest(
            task_pk=run.pk,
            limit=wanted,
            lease_until=now + int((run.timeout_s + LEASE_GRACE_S) * 1000),
            retries=run.retries,
        )
        async with self.store.write() as conn:
            claimed, deltas = await steps.claim_in(conn, request, self.worker_id, now)
            if not claimed:
                return 0
            await task_rows.add_counts(conn, run.pk, deltas)
            outcomes = await executor.execute(conn, run, claimed, now)
            progress = await steps.apply_in(conn, outcomes, now_ms=now)
        self.stats.claimed += len(claimed)
        self.stats.applied += len(outcomes)
        await executor.after_commit(run, claimed, outcomes)
        self._after_progress(progress)
        await self._settle()
        return len(claimed)

    # --- ingestor -------------------------------------------------------------------------

    def report(self, run: TaskRun | None, outcome: Outcome) -> None:
        """An attempt's outcome (called by executors, from callbacks; never blocks)."""
        if run is not None:
            run.in_flight -= 1
            self._in_flight -= 1
            if self._ready and not self._send_scheduled:
                # a slot is free: send what is claimed once this callback round is over
                # (never from inside an executor's own dispatch)
                self._send_scheduled = True
                asyncio.get_running_loop().call_soon(self._send_ready)
        self._outcomes.append((run, outcome))
        self._flush_wanted.set()
        self._wake.set()

    def phase_report(self, claimed: Claimed, phase: str) -> None:
        """A finer step of an attempt still in flight (from callbacks; never blocks).

        Written in batches by the ingestor, guarded on the attempt and on processing, so a
        step that arrives after its attempt's outcome changes nothing.
        """
        self._phases.append((claimed.id, claimed.attempt, phase))
        self._flush_wanted.set()

    async def _ingest_loop(self) -> None:
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            if self.config.flush_ms:
                # let a burst of answers gather into one transaction
                await asyncio.sleep(self.config.flush_ms / 1000)
            try:
                await self._flush()
                await self._settle()
            except (DBAPIError, OSError, FleetbatchError) as exc:
                self.stats.db_errors += 1
                log.warning("engine.apply_failed error=%s", exc)
                await asyncio.sleep(RETRY_DB_S)
                self._flush_wanted.set()

    async def _flush(self) -> None:
        if self._phases:
            await self._flush_phases()
        if self._late:
            late, self._late = self._late, []
            async with self.store.read() as conn:
                targets = await subtask_rows.targets_of(conn, [o.id for _, o in late])
            for device_id, outcome in late:
                if targets.get(outcome.id) == device_id:
                    self._outcomes.append((None, outcome))
        while self._outcomes:
            batch = self._outcomes[:MAX_APPLY]
            # late answers (no run) may belong to a task with a callback: the outbox checks
            notify = [o.id for run, o in batch if run is None or run.task.callback_url]
            progress = await steps.apply_outcomes(
                self.store, [o for _, o in batch], now_ms=self.clock.now_ms(), notify_ids=notify
            )
            # only once written: on a failure the batch stays queued and is tried again
            del self._outcomes[: len(batch)]
            self.stats.flushes += 1
            self.stats.applied += len(batch)
            self._after_progress(progress)

    async def _flush_phases(self) -> None:
        phases, self._phases = self._phases, []
        # an attempt whose outcome is gathered already skips the step: the outcome sets its phase
        finished = {(o.id, o.attempt) for _, o in self._outcomes}
        changes = [p for p in phases if (p[0], p[1]) not in finished]
        if not changes:
            return
        try:
            async with self.store.write() as conn:
                now = self.clock.now_ms()
                await subtask_rows.set_phase(conn, changes, now)
                # DELIVERED, for tasks with a callback URL (the outbox query picks those)
                await outbox_rows.enqueue_command_changes(conn, [c[0] for c in changes], now)
        except BaseException:
            self._phases = phases + self._phases  # tried again with the next flush
            raise

    def _after_progress(self, progress: dict[int, Progress]) -> None:
        for task_pk, now_progress in progress.items():
            run = self.runs.get(task_pk)
            if run is not None:
                run.retries = now_progress.fail_wait_retry > 0
            if not now_progress.unfinished or (
                run is not None and should_abort(now_progress, run.task.policy)
            ):
                self._finish_check.add(task_pk)
            elif now_progress.fail_wait_retry and run is not None:
                # a retry may be due at once (maxRetransmit has no interval)
                run.idle = False

    async def _settle(self) -> None:
        """Finalise, or abort, the tasks the last applied outcomes may have decided."""
        pending, self._finish_check = self._finish_check, set()
        now = self.clock.now_ms()
        for task_pk in sorted(pending):
            run = self.runs.get(task_pk)
            if run is None:
                continue
            if await steps.abort_if_failing(self.store, task_pk, now_ms=now):
                log.info("task.aborted task_id=%s", run.task.task_id)
                self._finished(run.task, T.STOPPED)
                continue
            status = await steps.finish_if_done(self.store, task_pk, now_ms=now)
            if status is not None:
                self._finished(run.task, status)

    def _on_uplink(self, uplink: Uplink) -> None:
        # an answer nobody waits for: a late one, or one for another worker's attempt
        # (broker mode, shared subscriptions); only a success is taken this way, a failure
        # is left to that attempt's own timeout and retry policy
        if not isinstance(uplink, CommandResponse) or uplink.result_code != 0:
            return
        parsed = parse_request_id(uplink.request_id)
        if parsed is None:
            return
        self.stats.late_answers += 1
        subtask_id, attempt = parsed
        body = uplink.body if isinstance(uplink.body, dict) else None
        output = orjson.dumps(body).decode() if body is not None else None
        # applied only after the subtask is checked to be this device's (see _flush): a
        # device must not finish another device's subtask by naming its request id
        self._late.append(
            (uplink.device_id, Outcome(subtask_id, attempt, steps.S.SUCCESS, output=output))
        )
        self._flush_wanted.set()

    def _on_presence(self, device_id: str, online: bool, at_ms: int) -> None:
        if online and any(
            r.task.task_type is TaskType.CREATE_ASYNC_COMMANDS for r in self.runs.values()
        ):
            # a device held commands for may have come: look again after presence is written
            for run in self.runs.values():
                run.idle = False

    # --- sweeper --------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.sweep_s):
                    await self._sweep_now.wait()
            self._sweep_now.clear()
            try:
                await self.sweep()
            except (DBAPIError, OSError, FleetbatchError) as exc:
                self.stats.db_errors += 1
                log.warning("engine.sweep_failed error=%s", exc)
                await asyncio.sleep(RETRY_DB_S)

    async def sweep(self) -> None:
        """One pass of the periodic duties (public for tests that drive time themselves)."""
        await self._heartbeat()
        await self._requeue_dead()
        await self._refresh()
        now = self.clock.now_ms()
        for run in list(self.runs.values()):
            task = run.task
            if task.status is T.WAITING and await steps.start_if_due(
                self.store, task.pk, now_ms=now
            ):
                log.info("task.started task_id=%s", task.task_id)
            deadline = task.deadline_at
            if (
                task.status in (T.PROCESSING, T.WAITING)
                and deadline is not None
                and deadline <= now
                and await steps.time_out_task(self.store, task.pk, now_ms=now)
            ):
                self._finished(task, T.TIMEOUT)
                continue
            if task.status is T.PROCESSING:
                progress = await steps.time_out_overdue(self.store, task, now_ms=now)
                if task.task_type is TaskType.CREATE_ASYNC_COMMANDS:
                    await self._expire_held(task, now)
                if progress:
                    self._after_progress(progress)
                if should_abort(task.progress, task.policy) and await steps.abort_if_failing(
                    self.store, task.pk, now_ms=now
                ):
                    log.info("task.aborted task_id=%s", task.task_id)
                    self._finished(task, T.STOPPED)
                    continue
            if task.status in (T.PROCESSING, T.STOPPING) and not task.progress.unfinished:
                status = await steps.finish_if_done(self.store, task.pk, now_ms=now)
                if status is not None:
                    self._finished(task, status)
            run.idle = False
            run.retries = True  # retries come due with time, and other workers make them
        await self._settle()
        await self._refresh()
        self._wake.set()
        if any(r.task.status is T.INITIALIZING for r in self.runs.values()):
            self._expand_wanted.set()

    async def _expire_held(self, task: Task, now: int) -> None:
        """Async commands still held when their expire_time passes are expired."""
        expire_s = int(task.document.get("expire_time", 0))
        if not is_delayed(task) or (task.created_at + expire_s * 1000) > now:
            return
        async with self.store.write() as conn:
            deltas = await subtask_rows.transition(
                conn,
                task.pk,
                (steps.S.WAITING, steps.S.FAIL_WAIT_RETRY),
                steps.S.TIMEOUT,
                now,
                phase="EXPIRED",
                error_code="command.expired",
                error_msg="the command expired before the device connected",
            )
            await steps.add_deltas(conn, {task.pk: deltas})

    def _finished(self, task: Task, status: TaskStatus) -> None:
        self.stats.finished_tasks += 1
        log.info("task.finished task_id=%s status=%s", task.task_id, status.value)
        run = self.runs.pop(task.pk, None)
        if run is not None:
            self._drop_ready(run)
        for listener in self._listeners:
            listener(task, status)

    async def _heartbeat(self) -> None:
        now = self.clock.now_ms()
        lease_until = now + int(self.config.lease_s * 1000)
        async with self.store.write() as conn:
            result = await conn.execute(
                update(engine_workers)
                .where(engine_workers.c.worker_id == self.worker_id)
                .values(lease_until=lease_until)
            )
            if not result.rowcount:
                await conn.execute(
                    engine_workers.insert().values(
                        worker_id=self.worker_id, started_at=now, lease_until=lease_until
                    )
                )

    async def _requeue_dead(self) -> None:
        now = self.clock.now_ms()
        async with self.store.read() as conn:
            dead = list(
                (
                    await conn.execute(
                        select(engine_workers.c.worker_id).where(
                            engine_workers.c.lease_until < now,
                            engine_workers.c.worker_id != self.worker_id,
                        )
                    )
                ).scalars()
            )
        if not dead:
            return
        progress = await steps.requeue_orphans(self.store, dead, now_ms=now)
        async with self.store.write() as conn:
            await conn.execute(delete(engine_workers).where(engine_workers.c.worker_id.in_(dead)))
        if progress:
            log.info("engine.requeued workers=%s tasks=%d", ",".join(dead), len(progress))
            for run in self.runs.values():
                run.idle = False

    async def _refresh(self) -> None:
        """Read the active tasks; keep each run's in-flight bookkeeping."""
        async with self.store.read() as conn:
            rows = await task_rows.list_task_rows(conn, task_rows.ACTIVE_TASK_STATUSES)
        fresh: dict[int, TaskRun] = {}
        for row in rows:
            task = task_rows.task_from_row(row)
            executor = self.executors.get(task.task_type)
            if executor is None:
                continue
            run = self.runs.get(task.pk)
            if run is None:
                timeout_s = task.policy.subtask_timeout_s or executor.default_timeout_s
                run = TaskRun(task=task, timeout_s=timeout_s)
            else:
                run.task = task
            fresh[task.pk] = run
        for pk, gone in self.runs.items():
            if pk not in fresh:
                self._drop_ready(gone)
        self.runs = fresh

    async def _listen_loop(self) -> None:
        """PostgreSQL: wake on the notification other processes send with each new task."""
        while True:
            try:
                async with self.store.engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    driver: Any = raw.driver_connection
                    await driver.add_listener(WAKE_CHANNEL, self._on_notify)
                    try:
                        await asyncio.Event().wait()  # until cancelled
                    finally:
                        with contextlib.suppress(Exception):
                            await driver.remove_listener(WAKE_CHANNEL, self._on_notify)
            except (DBAPIError, OSError) as exc:
                log.warning("engine.listen_failed error=%s", exc)
                await asyncio.sleep(RETRY_DB_S)
                self.wake()  # whatever was notified meanwhile

    def _on_notify(self, *_args: object) -> None:
        self.wake()

    # --- expander -------------------------------------------------------------------------

    async def _expand_loop(self) -> None:
        while True:
            await self._expand_wanted.wait()
            self._expand_wanted.clear()
            for run in [r for r in self.runs.values() if r.task.status is T.INITIALIZING]:
                try:
                    while not await expand_step(
                        self.store,
                        run.task,
                        chunk=self.config.expand_chunk,
                        now_ms=self.clock.now_ms(),
                    ):
                        self.stats.expanded += 1
                except (DBAPIError, OSError, FleetbatchError) as exc:
                    self.stats.db_errors += 1
                    log.warning("engine.expand_failed task_id=%s error=%s", run.task.task_id, exc)
                    await asyncio.sleep(RETRY_DB_S)
                    self._expand_wanted.set()
            self.wake()


def _low_mark(limit: int, batch: int) -> int:
    """The free slots worth a claim while work is in flight: a quarter of the limit."""
    return max(1, min(batch, limit // 4))


def runs_snapshot(engine: Engine) -> Sequence[TaskRun]:
    """The runs the engine currently drives (for status displays)."""
    return list(engine.runs.values())
