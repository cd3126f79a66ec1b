"""The outbox capacity's cached count, on a fake clock and a fake count."""

from __future__ import annotations

import asyncio

import pytest

from notifier.domain.capacity import OutboxCapacity, OutboxFull


async def test_the_count_is_cached_and_never_runs_low() -> None:
    counts = []
    unsent = 0
    now = [0.0]

    async def count() -> int:
        counts.append(unsent)
        return unsent

    capacity = OutboxCapacity(count, 10, refresh_seconds=1.0, clock=lambda: now[0])
    async with capacity.reserve(4, partial=True) as granted:
        assert granted == 4
        unsent = 4  # inserted
    for _ in range(100):
        async with capacity.reserve(0):
            pass
    assert len(counts) == 1  # one count for 101 admissions within a second
    assert capacity.estimate == 4
    now[0] = 1.5
    async with capacity.reserve(10, partial=True) as granted:
        assert granted == 6  # on the cached estimate; a count starts meanwhile
        await asyncio.sleep(0)  # the count runs before these six are inserted
        assert len(counts) == 2
        assert capacity.estimate == 10  # 4 counted + 6 being inserted
        unsent = 10
    assert capacity.estimate == 10
    with pytest.raises(OutboxFull):
        async with capacity.reserve(1):
            pass
    async with capacity.reserve(5, partial=True) as granted:
        assert granted == 0
    unsent = 2  # the dispatcher sent some
    now[0] = 3.0
    with pytest.raises(OutboxFull):  # still on the old estimate; a count starts
        async with capacity.reserve(1):
            pass
    await asyncio.sleep(0)
    assert capacity.estimate == 2
    async with capacity.reserve(1):
        pass
    assert capacity.estimate == 3
    assert len(counts) == 3
    await capacity.close()
