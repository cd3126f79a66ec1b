"""Shared fixtures: a real grpc.aio server on an ephemeral port over a real database.

Tests sit in one directory per layer (unit, storage, api, e2e, process: see
``LAYERS``), and every test is marked with its directory's name, so ``-m unit`` or
``-m "api and not postgresql"`` select by layer. Helpers shared by test modules are in
tests/support; no test module imports another.

The database is a fresh SQLite file per test. A module (or a test) that marks itself
``@pytest.mark.backends("sqlite", "postgresql")`` runs once per backend; its PostgreSQL
variants carry the ``postgresql`` mark (deselect with ``-m "not postgresql"``) and fail,
not skip, when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from notifier.config import Settings, load_settings
from notifier.emulator.server import EmulatorServer
from notifier.server import NotifierServer, create_server, prepare_storage
from notifier.storage.engine import Database
from notifier_proto.v1 import notifier_pb2_grpc
from tests.support.databases import PgDatabases, TestDb, sqlite_db
from tests.support.engine import Engine, engine_settings, start_engine

# Every server a test starts (here or in a subprocess) serves no /metrics unless the test
# asks for it: the default port (9464) would collide between servers running at once.
os.environ.setdefault("NOTIFIER_METRICS_ADDR", "")

LAYERS = ("unit", "storage", "api", "e2e", "process")  # markers described in pyproject.toml
HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer, the directory it sits in (before ``-m`` selects)."""
    for item in items:
        if not item.path.is_relative_to(HERE):
            continue
        layer = item.path.relative_to(HERE).parts[0]
        if layer not in LAYERS:
            raise pytest.UsageError(
                f"{item.nodeid}: a test module belongs in one of tests/{{{','.join(LAYERS)}}}/"
            )
        item.add_marker(layer)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``backend`` from the closest ``backends`` mark (default: SQLite only,
    left unparametrized so those test ids do not change)."""
    if "backend" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("backends")
    names = mark.args if mark is not None else ("sqlite",)
    if tuple(names) == ("sqlite",):
        return
    metafunc.parametrize(
        "backend",
        [
            pytest.param(
                name, id=name, marks=[pytest.mark.postgresql] if name == "postgresql" else []
            )
            for name in names
        ],
    )


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    pg = PgDatabases()
    yield pg
    pg.close()


@pytest.fixture
def database(backend: str, db_path: Path, request: pytest.FixtureRequest) -> Iterator[TestDb]:
    """This test's database on its backend: a new SQLite file, or a new PostgreSQL
    database copied from the session's migrated template."""
    if backend == "sqlite":
        yield sqlite_db(db_path)
        return
    pg: PgDatabases = request.getfixturevalue("pg_databases")
    db = pg.create()
    try:
        yield db
    finally:
        pg.drop(db)


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    """The Twilio emulator on an ephemeral port, standing in for Twilio."""
    async with EmulatorServer() as emu:
        yield emu


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "notifier.db"


@pytest.fixture
def settings(database: TestDb) -> Settings:
    return load_settings(
        NOTIFIER_DATABASE_URL=database.url,
        NOTIFIER_GRPC_ADDR="127.0.0.1:0",
        NOTIFIER_HEALTH_INTERVAL_SECONDS=0.2,
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """The migrated database of ``settings``, for tests of storage without a server."""
    database = await prepare_storage(settings)
    yield database
    await database.dispose()


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[NotifierServer]:
    notifier = await create_server(settings)
    await notifier.start()
    yield notifier
    await notifier.stop(grace=1)


@pytest.fixture
def address(server: NotifierServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(address) as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> notifier_pb2_grpc.NotifierAsyncStub:
    return notifier_pb2_grpc.NotifierStub(channel)


@pytest.fixture
def engine_env() -> dict[str, Any]:
    """Per-test overrides of engine_settings; tests parametrize this indirectly."""
    return {}


@pytest.fixture
async def engine(
    database: TestDb, emulator: EmulatorServer, engine_env: dict[str, Any]
) -> AsyncIterator[Engine]:
    server, channel = await start_engine(engine_settings(database, emulator, **engine_env))
    yield Engine(server, channel)
    await channel.close()
    await server.stop(grace=1)
