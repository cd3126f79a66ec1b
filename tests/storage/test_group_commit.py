"""SQLite's group commit on a real file: writes queued behind a commit share the next
one, and one piece of work that fails fails alone and leaves nothing behind."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection

from notifier.storage.engine import Database
from notifier.storage.group_commit import GroupCommit

pytestmark = pytest.mark.backends("sqlite")


@pytest.fixture
async def scratch(db: Database) -> Database:
    async with db.writer.begin() as conn:
        await conn.execute(text("CREATE TABLE scratch (k TEXT PRIMARY KEY)"))
    return db


def count_commits(db: Database) -> list[int]:
    commits = [0]

    @event.listens_for(db.writer.sync_engine, "commit")
    def _on_commit(_conn: object) -> None:
        commits[0] += 1

    return commits


async def keys(db: Database) -> set[str]:
    async with db.reader.connect() as conn:
        return {str(k) for (k,) in await conn.execute(text("SELECT k FROM scratch"))}


def put(key: str, gate: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
    async def work(conn: AsyncConnection) -> str:
        await conn.execute(text("INSERT INTO scratch (k) VALUES (:k)"), {"k": key})
        if gate is not None:
            await gate.wait()
        return key

    return work


async def test_writes_queued_behind_a_commit_share_the_next_one(scratch: Database) -> None:
    group, commits = GroupCommit(scratch.writer), count_commits(scratch)
    gate = asyncio.Event()
    first = asyncio.create_task(group.run(put("a", gate)))
    await asyncio.sleep(0.05)  # "a" is being written
    queued = [asyncio.create_task(group.run(put(k))) for k in ("b", "c", "d")]
    await asyncio.sleep(0.05)
    gate.set()
    assert await first == "a"
    assert await asyncio.gather(*queued) == ["b", "c", "d"]
    assert commits[0] == 2
    assert await keys(scratch) == {"a", "b", "c", "d"}


async def test_a_batch_submitted_as_the_last_commit_returns_joins_the_write_waiting(
    scratch: Database,
) -> None:
    """The recorder submits its next batch the moment its last one is committed; a
    claim already waiting shares that commit instead of taking one of its own."""
    group, commits = GroupCommit(scratch.writer), count_commits(scratch)
    gate = asyncio.Event()

    async def recorder() -> list[str]:
        done = [await group.run(put("batch-1", gate))]
        done.append(await group.run(put("batch-2")))  # at once, as a Coalescer does
        return done

    recording = asyncio.create_task(recorder())
    await asyncio.sleep(0.05)
    claim = asyncio.create_task(group.run(put("claim")))
    await asyncio.sleep(0.05)
    gate.set()
    assert await recording == ["batch-1", "batch-2"]
    assert await claim == "claim"
    assert commits[0] == 2  # batch-1; then the claim and batch-2 together


async def test_work_that_fails_fails_alone_and_leaves_nothing(scratch: Database) -> None:
    group = GroupCommit(scratch.writer)
    gate = asyncio.Event()

    async def broken(conn: AsyncConnection) -> str:
        await conn.execute(text("INSERT INTO scratch (k) VALUES ('half-written')"))
        raise ValueError("the work's own bug")

    first = asyncio.create_task(group.run(put("a", gate)))
    await asyncio.sleep(0.05)
    batch = [
        asyncio.create_task(group.run(put("b"))),
        asyncio.create_task(group.run(broken)),
        asyncio.create_task(group.run(put("c"))),
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await first
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert results[0] == "b"
    assert results[2] == "c"
    assert isinstance(results[1], ValueError)
    assert await keys(scratch) == {"a", "b", "c"}


async def test_a_writer_given_back_inside_its_transaction_is_rolled_back(
    scratch: Database,
) -> None:
    """The pool skips the rollback of a writer with no transaction open; one given back
    with its transaction open (its work cancelled, say) is still rolled back, and the
    next write can begin."""
    async with scratch.writer.connect() as conn:  # begins on its first statement
        await conn.execute(text("INSERT INTO scratch (k) VALUES ('never committed')"))
    async with scratch.writer.begin() as conn:
        await conn.execute(text("INSERT INTO scratch (k) VALUES ('next')"))
    assert await keys(scratch) == {"next"}
