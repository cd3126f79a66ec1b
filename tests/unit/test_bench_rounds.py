"""How the benchmark turns interleaved rounds into one figure per leg (bench/common.py).

A ratio target compares two legs; with one leg each the ratio was of two moments of a
shared machine. The median round of each leg is what the table shows, failures in any
round still count, and every round's figure stays in the note.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.common import median_leg, rounds_note


def _leg(rate: float, errors: int = 0, p99: float = 10.0) -> dict[str, Any]:
    return {"rate": rate, "errors": errors, "p99_ms": p99}


@pytest.mark.parametrize(
    ("rates", "median"),
    [
        ([1_000.0], 1_000.0),
        ([900.0, 1_200.0, 1_000.0], 1_000.0),  # the middle, not the last or the best
        ([1_200.0, 800.0], 800.0),  # even count: the lower middle, never flattering
        ([3.0, 1.0, 2.0, 4.0, 5.0], 3.0),
    ],
)
def test_the_median_round_is_shown(rates: list[float], median: float) -> None:
    assert median_leg([_leg(r) for r in rates])["rate"] == median


def test_a_legs_figures_stay_together() -> None:
    """The p99 shown is the median round's own, not another round's."""
    chosen = median_leg([_leg(900.0, p99=50.0), _leg(1_000.0, p99=70.0), _leg(1_100.0, p99=5.0)])
    assert (chosen["rate"], chosen["p99_ms"]) == (1_000.0, 70.0)
    by_tail = median_leg([_leg(900.0, p99=50.0), _leg(1_000.0, p99=70.0)], "p99_ms")
    assert by_tail["p99_ms"] == 50.0


def test_a_failure_in_any_round_counts() -> None:
    legs = [_leg(900.0, errors=3), _leg(1_000.0), {**_leg(1_100.0), "unmoved": 2}]
    assert median_leg(legs)["errors"] == 3  # the median round had none
    chosen = median_leg(
        [{**leg, "unmoved": leg.get("unmoved", 0)} for leg in legs], counted=("errors", "unmoved")
    )
    assert (chosen["errors"], chosen["unmoved"]) == (3, 2)


def test_every_round_is_in_the_note_in_the_order_run() -> None:
    legs = {
        "echo": median_leg([_leg(4_252.0), _leg(2_563.0), _leg(4_269.0)]),
        "sqlite": median_leg([_leg(1_183.0), _leg(1_033.0), _leg(1_095.0)]),
    }
    assert rounds_note(legs) == (
        "median of 3 interleaved rounds: echo 4,252 / 2,563 / 4,269/s; "
        "sqlite 1,183 / 1,033 / 1,095/s"
    )
    assert rounds_note({"echo": median_leg([_leg(4_000.0)])}) == ""  # one round: no note
