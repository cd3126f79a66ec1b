"""The claim reads due messages in claim order from an index and stops at its LIMIT,
on both backends: over an index that could not give that order, every claim read and
sorted the whole due backlog (35 ms a claim on PostgreSQL at 100,000 queued)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from notifier.storage.engine import Database
from notifier.storage.outbox import _CLAIM_ANY, DUE_LOCKED, DUE_SQLITE
from notifier.storage.tables import CLAIM_INDEX

pytestmark = pytest.mark.backends("sqlite", "postgresql")


def _sql(stmt: Any, dialect: Any) -> str:
    bound = stmt.params(now=1_800_000_000_000, limit=64, owner="w", lease=1_800_000_060_000)
    return str(bound.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


async def test_the_claim_walks_the_outbox_index_in_order_without_a_sort(db: Database) -> None:
    async with db.writer.connect() as conn:
        if db.is_sqlite:
            rows = await conn.execute(text("EXPLAIN QUERY PLAN " + _sql(DUE_SQLITE, conn.dialect)))
            plan = " / ".join(str(r[-1]) for r in rows)
        else:
            # Tiny tables make a scan and a sort the cheaper plan; with both priced out,
            # only an index that gives the order and matches the outbox avoids them.
            await conn.execute(text("SET LOCAL enable_seqscan = off"))
            await conn.execute(text("SET LOCAL enable_sort = off"))
            rows = await conn.execute(text("EXPLAIN " + _sql(DUE_LOCKED, conn.dialect)))
            plan = " / ".join(str(r[0]) for r in rows)
    assert CLAIM_INDEX in plan, plan
    assert "Sort" not in plan, plan  # PostgreSQL
    assert "TEMP B-TREE" not in plan, plan  # SQLite


@pytest.mark.backends("postgresql")
async def test_the_one_statement_claim_keeps_that_walk(db: Database) -> None:
    """PostgreSQL's claim leases what the scan above finds in the same statement; only
    the rows it leased are sorted (back into claim order), never the backlog."""
    async with db.writer.connect() as conn:
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        rows = await conn.execute(text("EXPLAIN " + _sql(_CLAIM_ANY, conn.dialect)))
        plan = [str(r[0]) for r in rows]
    assert any(CLAIM_INDEX in line for line in plan), plan
    sorts = [line for line in plan if "Sort" in line and "Key" not in line]
    assert len(sorts) == 1, plan  # the leased rows', above the UPDATE
