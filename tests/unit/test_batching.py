"""notifier.batching.Coalescer on its own: batches, per-item outcomes, fallback, give-ups."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from notifier.batching import Coalescer, Failed


class Doubler(Coalescer[int, int]):
    """Doubles numbers; a batch holding ``poison`` fails as a whole, ``odd_fails`` makes
    odd numbers fail on their own."""

    def __init__(self, *, poison: int | None = None, odd_fails: bool = False, alone: bool = True):
        super().__init__("doubler", max_batch=4)
        self.batches: list[list[int]] = []
        self.poison, self.odd_fails, self.alone = poison, odd_fails, alone
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush(self, items: list[int]) -> Sequence[int | Failed]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.poison in items and len(items) > 1:
            raise RuntimeError("batch refused")
        if self.poison in items:
            raise ValueError(f"{self.poison} refused")
        return [
            Failed(ValueError(f"odd {i}")) if self.odd_fails and i % 2 else i * 2 for i in items
        ]

    def retry_alone(self, error: Exception) -> bool:
        return self.alone


async def test_a_lone_item_is_flushed_at_once() -> None:
    doubler = Doubler()
    assert await doubler.submit(21) == 42
    assert doubler.batches == [[21]]


async def test_items_arriving_during_a_flush_share_the_next_one_up_to_max_batch() -> None:
    doubler = Doubler()
    doubler.gate.clear()
    first = asyncio.ensure_future(doubler.submit(0))
    await asyncio.sleep(0)  # the first batch is now being flushed
    rest = [asyncio.ensure_future(doubler.submit(i)) for i in range(1, 7)]
    await asyncio.sleep(0)
    doubler.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 2, 4, 6, 8, 10, 12]
    assert doubler.batches == [[0], [1, 2, 3, 4], [5, 6]]


async def test_each_item_gets_its_own_failure() -> None:
    doubler = Doubler(odd_fails=True)
    doubler.gate.clear()
    futures = [asyncio.ensure_future(doubler.submit(i)) for i in range(4)]
    await asyncio.sleep(0)
    doubler.gate.set()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[::2] == [0, 4]
    assert [str(r) for r in results[1::2]] == ["odd 1", "odd 3"]


async def test_a_failed_batch_is_retried_one_by_one_so_only_the_bad_item_fails() -> None:
    doubler = Doubler(poison=3)
    doubler.gate.clear()
    futures = [asyncio.ensure_future(doubler.submit(i)) for i in range(1, 5)]
    await asyncio.sleep(0)
    doubler.gate.set()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [results[0], results[1], results[3]] == [2, 4, 8]
    assert isinstance(results[2], ValueError)
    assert sorted(map(tuple, doubler.batches)) == sorted([(1,), (1, 2, 3, 4), (2,), (3,), (4,)])


async def test_without_retry_alone_the_whole_batch_gets_the_error() -> None:
    doubler = Doubler(poison=3, alone=False)
    doubler.gate.clear()
    futures = [asyncio.ensure_future(doubler.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    doubler.gate.set()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert [str(r) for r in results] == ["batch refused", "batch refused"]
    assert doubler.batches == [[2, 3]]


async def test_a_caller_that_gives_up_does_not_cancel_the_flush_of_the_others() -> None:
    doubler = Doubler()
    doubler.gate.clear()
    impatient = asyncio.ensure_future(doubler.submit(1))
    patient = asyncio.ensure_future(doubler.submit(2))
    await asyncio.sleep(0)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    doubler.gate.set()
    assert await patient == 4
    assert doubler.batches == [[1, 2]]  # the given-up item was flushed all the same
