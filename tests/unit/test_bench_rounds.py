"""How the benchmark turns interleaved rounds into one figure per leg (bench/common.py).

A ratio target compares two legs; with one leg each the ratio was of two moments of a
shared machine. The median round of each leg is what the table shows, failures in any
round still count, and every round's figure stays in the note.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.common import median_leg, rounds, rounds_note


def _leg(rate: float, errors: int = 0, p99: float = 10.0) -> dict[str, Any]:
    return {"rate": rate, "errors": errors, "p99_ms": p99}


@pytest.mark.parametrize(
    ("rates", "median"),
    [
        ([1_000.0], 1_000.0),
        ([900.0, 1_200.0, 1_000.0], 1_000.0),  # the middle, not the last or the best
        ([1_000.0, 1_200.0, 900.0], 1_000.0),
        ([3.0, 1.0, 2.0, 4.0, 5.0], 3.0),
    ],
)
def test_the_median_round_is_shown(rates: list[float], median: float) -> None:
    assert median_leg([_leg(r) for r in rates])["rate"] == median


def test_a_legs_figures_stay_together() -> None:
    """The p99 shown is the median round's own, not another round's."""
    legs = [_leg(900.0, p99=50.0), _leg(1_000.0, p99=70.0), _leg(1_100.0, p99=5.0)]
    chosen = median_leg(legs)
    assert (chosen["rate"], chosen["p99_ms"]) == (1_000.0, 70.0)
    assert median_leg(legs, "p99_ms")["p99_ms"] == 50.0  # its own median round


@pytest.mark.parametrize("count", [0, 2, 4])
def test_an_even_number_of_rounds_is_refused(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two middles: taking either one would favour the ceiling or the measured side."""
    monkeypatch.setenv("BENCH_ROUNDS", str(count))
    with pytest.raises(ValueError, match="odd number"):
        rounds()
    if count:
        with pytest.raises(ValueError, match="odd number"):
            median_leg([_leg(float(r)) for r in range(count)])


def test_the_rounds_asked_for_are_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_ROUNDS", "5")
    assert rounds() == 5


def test_a_failure_in_any_round_counts() -> None:
    legs = [_leg(900.0, errors=3), _leg(1_000.0), {**_leg(1_100.0), "unmoved": 2}]
    assert median_leg(legs)["errors"] == 3  # the median round had none
    chosen = median_leg(legs, counted=("errors", "unmoved"))  # only one round has unmoved
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
    p99s = [_leg(1.0, p99=2.34), _leg(1.0, p99=2.0), _leg(1.0, p99=3.0)]
    tails = {"echo": median_leg(p99s, "p99_ms")}
    assert rounds_note(tails, " ms") == "median of 3 interleaved rounds: echo 2.3 / 2.0 / 3.0 ms"
