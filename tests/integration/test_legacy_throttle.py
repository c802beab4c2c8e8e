"""The legacy per-app call limit: a sliding 60 s window shared by every API process.

Time comes from a `FakeClock` shared by two runtimes over one store (two API processes);
nothing sleeps. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from fleetbatch.api import create_app
from fleetbatch.domain.errors import LimitExceeded
from fleetbatch.registry.tokens import TokenService
from fleetbatch.runtime import Runtime
from fleetbatch.settings import Settings
from support.legacy import BATCH, assert_error, headers, login
from support.tasks import START_MS, FakeClock

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

MINUTE_MS = 60_000
# the first minute boundary after START_MS
BOUNDARY_MS = START_MS - START_MS % MINUTE_MS + MINUTE_MS


@asynccontextmanager
async def two_processes(
    settings: Settings, clock: FakeClock
) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """Two runtimes (own store pools, own services) over one store and one fake clock."""
    async with (
        await Runtime.open(settings, clock=clock) as first,
        await Runtime.open(settings, clock=clock) as second,
    ):
        yield first, second


async def test_a_burst_across_a_minute_boundary_cannot_exceed_the_limit(
    settings: Settings,
) -> None:
    clock = FakeClock(BOUNDARY_MS - 100)
    async with two_processes(settings, clock) as (first, second):
        app = await first.registry.apps.create("bursty", throttle_per_min=5)
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(r)), base_url="http://x")
            for r in (first, second)
        ]
        async with clients[0] as a, clients[1] as b:
            sent = headers(app.app_id, await login(a, app.app_id, app.secret))
            call = f"{BATCH}/tasks/{'0' * 24}"

            async def answers(client: httpx.AsyncClient, n: int) -> list[str]:
                codes = []
                for _ in range(n):
                    codes.append((await client.get(call, headers=sent)).json()["error_code"])
                return codes

            # 100 ms before the minute turns: the whole limit, through both processes
            assert await answers(a, 3) + await answers(b, 2) == ["105005"] * 5
            # 100 ms after: fixed minute windows would admit 5 more here
            clock.advance(200)
            body = assert_error(await b.get(call, headers=sent), 403, "1010009")
            assert body["resultcode"] == "1010009"
            assert await answers(a, 2) == ["1010009"] * 2
            # the burst still counts 59.9 s after it...
            clock.ms = BOUNDARY_MS - 100 + 59_900
            assert await answers(b, 1) == ["1010009"]
            # ...and no longer once its one-second slot is 60 s old; refused calls never
            # counted, so the whole limit is available again
            clock.ms = BOUNDARY_MS + MINUTE_MS
            assert await answers(a, 3) + await answers(b, 3) == ["105005"] * 5 + ["1010009"]


async def test_no_60_second_span_holds_more_than_the_limit_and_refusals_are_justified(
    settings: Settings,
) -> None:
    limit = 7
    clock = FakeClock(BOUNDARY_MS - 5_000)
    rng = random.Random(20261202)
    async with two_processes(settings, clock) as (first, second):
        app = await first.registry.apps.create("steady", throttle_per_min=limit)
        services = [TokenService(r.store, r.vault, clock) for r in (first, second)]
        token = (await services[0].login(app.app_id, app.secret)).access_token
        admitted: list[int] = []
        refused: list[int] = []
        # bursts and pauses over three and a half minutes, alternating processes at random
        while clock.ms < BOUNDARY_MS + 3 * MINUTE_MS:
            for _ in range(rng.choice((1, 1, 2, 4))):
                try:
                    await rng.choice(services).admit(app.app_id, token)
                except LimitExceeded:
                    refused.append(clock.ms)
                else:
                    admitted.append(clock.ms)
            clock.advance(rng.choice((0, 150, 900, 1_000, 4_000, 11_000)))
    assert len(admitted) >= 3 * limit
    assert refused
    for t in admitted:
        # every 60 s span [t, t + 60 s) starting at an admitted call
        assert sum(t <= u < t + MINUTE_MS for u in admitted) <= limit, t
    for t in refused:
        # refused only when the limit's worth of calls was admitted in the last 61 s
        assert sum(t - MINUTE_MS - 1_000 < u <= t for u in admitted) >= limit, t


async def test_concurrent_calls_from_two_processes_share_one_budget(settings: Settings) -> None:
    clock = FakeClock()
    async with two_processes(settings, clock) as (first, second):
        app = await first.registry.apps.create("crowd", throttle_per_min=6)
        services = [TokenService(r.store, r.vault, clock) for r in (first, second)]
        token = (await services[0].login(app.app_id, app.secret)).access_token
        outcomes = await asyncio.gather(
            *(services[i % 2].admit(app.app_id, token) for i in range(24)),
            return_exceptions=True,
        )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 6
    assert all(isinstance(o, LimitExceeded) for o in outcomes if isinstance(o, BaseException))
