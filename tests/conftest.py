"""Fixtures every tier shares: real PostgreSQL and Mosquitto servers, settings, a runtime.

- `postgres_server` (session): a throwaway PostgreSQL cluster (`support.postgres`).
- `mosquitto_broker` (session): a throwaway broker with `.host`, `.port`, `.url`.
- `database_kind` / `settings`: a test taking `settings` runs twice, on SQLite and on a
  fresh PostgreSQL database that is dropped afterwards.
- `module_settings`: the same for a store that one module's tests share (a server started
  once per module and database, for tests that each use their own devices).
- `runtime`: `Runtime.open(settings)`, closed after the test.

A missing server binary fails the tests that need it, never skips them: CI installs the
servers (`scripts/test.sh`), so a skip would only hide a broken install.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from fleetbatch.settings import Settings
from support.mosquitto import MosquittoBroker, MosquittoUnavailable
from support.postgres import PostgresServer, PostgresUnavailable

if TYPE_CHECKING:
    from fleetbatch.runtime import Runtime

DATABASE_KINDS = ["sqlite", "postgresql"]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own FLEETBATCH_* variables must not change what a test sees."""
    for name in list(os.environ):
        if name.startswith("FLEETBATCH_"):
            monkeypatch.delenv(name)


def _throwaway(start: Callable[[], Any], unavailable: type[Exception], name: str) -> Iterator[Any]:
    """Start a server for the session; fail (never skip) the tests needing it when it cannot."""
    try:
        server = start()
    except unavailable as exc:
        pytest.fail(f"{name} is needed by this test: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session."""
    yield from _throwaway(PostgresServer.start, PostgresUnavailable, "PostgreSQL")


@pytest.fixture(scope="session")
def mosquitto_broker() -> Iterator[MosquittoBroker]:
    """One throwaway MQTT broker for the whole session: `.host`, `.port`, `.url`."""
    yield from _throwaway(MosquittoBroker.start, MosquittoUnavailable, "Mosquitto")


@pytest.fixture(params=DATABASE_KINDS, ids=DATABASE_KINDS)
def database_kind(request: pytest.FixtureRequest) -> str:
    """Which database the `settings` fixture points at: "sqlite" or "postgresql"."""
    kind: str = request.param
    return kind


@pytest.fixture
def settings(
    database_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """Settings for a fresh store: the SQLite file in a temp data dir, or a new PostgreSQL db."""
    yield from _fresh_store(database_kind, tmp_path / "data", request)


@pytest.fixture(scope="module", params=DATABASE_KINDS, ids=DATABASE_KINDS)
def module_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """`settings` for one store shared by a module's tests (a module-scoped server), run on
    both databases like `settings`; the tests must not depend on what the others stored."""
    yield from _fresh_store(request.param, tmp_path_factory.mktemp("module") / "data", request)


def _fresh_store(kind: str, data_dir: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    if kind == "sqlite":
        yield Settings(data_dir=data_dir, database=None)
        return
    # asked for here, not as a parameter, so SQLite-only runs never start PostgreSQL
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    try:
        yield Settings(data_dir=data_dir, database=url)
    finally:
        server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """An opened (migrated) runtime over `settings`, closed after the test."""
    # imported here: the services behind Runtime change often, and a broken import there
    # should fail the tests that use a runtime, not the collection of every test
    from fleetbatch.runtime import Runtime

    opened = await Runtime.open(settings)
    try:
        yield opened
    finally:
        await opened.close()
