"""Delivery-time slots and percentiles from them: the error bound the proto states."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from notifier.domain.histogram import LOWS, RELATIVE_ERROR, Slot, percentile, slot_of


@pytest.mark.parametrize(
    ("ms", "slot"), [(-5, 0), (0, 0), (1, 1), (9, 9), (10, 10), (11, 10), (12, 11)]
)
def test_slot_of(ms: int, slot: int) -> None:
    assert slot_of(ms) == slot


def test_each_slot_spans_at_most_ten_percent() -> None:
    for low, high in itertools.pairwise(LOWS[1:]):
        assert (high - 1) / low <= 1.1
    assert RELATIVE_ERROR < 0.05


def _slots(values: list[int]) -> list[Slot]:
    by: dict[int, list[int]] = {}
    for v in values:
        by.setdefault(slot_of(v), []).append(v)
    return [Slot(i, len(vs), min(vs), max(vs)) for i, vs in by.items()]


@pytest.mark.parametrize("seed", range(20))
def test_percentiles_within_the_bound_of_nearest_rank(seed: int) -> None:
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(8, 2)) for _ in range(rng.randint(1, 500))]
    for pct in (50, 95, 99):
        exact = sorted(values)[math.ceil(pct * len(values) / 100) - 1]
        assert percentile(_slots(values), pct) == pytest.approx(exact, rel=RELATIVE_ERROR, abs=0)


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([], 50, 0.0),  # nothing delivered
        ([1234], 95, 1234.0),  # one value: exact
        ([0, 0, 4000], 50, 0.0),  # rank 2 of 3 is 0
        ([1000, 2000, 3000, 4000], 50, 2000.0),  # rank 2; alone in its slot: exact
    ],
)
def test_percentile_table(values: list[int], pct: int, expected: float) -> None:
    assert percentile(_slots(values), pct) == expected
