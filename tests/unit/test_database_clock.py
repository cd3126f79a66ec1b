"""DatabaseClock: the database's clock on this process's, from answers of varying
speed. The two clocks here are 1,000 s apart; the database reads its clock at a time
within the request that the estimate cannot know."""

from __future__ import annotations

import pytest

from notifier.dispatch.rate_limit import DatabaseClock

OFFSET = 1000.0


def _answer(clock: DatabaseClock, asked: float, trip: float, read_at: float) -> None:
    """A request asked at ``asked`` answered ``trip`` later; the database read its clock
    ``read_at`` of the way through."""
    clock.observe(asked, asked + trip, round((asked + read_at * trip + OFFSET) * 1_000_000))


def _error_ms(clock: DatabaseClock) -> float:
    return abs(clock.local(round((50.0 + OFFSET) * 1_000_000)) - 50.0) * 1000


def test_a_quick_answer_bounds_the_error_by_half_its_round_trip() -> None:
    clock = DatabaseClock()
    _answer(clock, 10.0, 0.001, read_at=0.0)
    assert _error_ms(clock) == pytest.approx(0.5, abs=0.001)


@pytest.mark.parametrize("read_at", [0.0, 1.0])
def test_slow_answers_after_a_quick_one_do_not_move_it(read_at: float) -> None:
    """Each slow answer alone would be off by up to 6 ms, one way or the other."""
    clock = DatabaseClock()
    _answer(clock, 10.0, 0.001, read_at=0.5)
    for i in range(40):  # a blocked loop: every answer 12 ms late, for 4 s
        _answer(clock, 10.1 + i / 10, 0.012, read_at=read_at)
    assert _error_ms(clock) < 0.01


def _local_ms(clock: DatabaseClock, at: float) -> float:
    return (clock.local(round((at + OFFSET) * 1_000_000)) - at) * 1000


@pytest.mark.parametrize("read_at", [0.0, 1.0])
def test_a_quicker_answer_replaces_a_slow_one_moving_slots_earlier_by_a_slew(
    read_at: float,
) -> None:
    """Off by 6 ms one way or the other, then quick answers: slots the estimate had
    placed early move later at once; slots placed late move earlier 1 ms a second at
    most (their partners a window before were placed late too)."""
    clock = DatabaseClock()
    _answer(clock, 10.0, 0.012, read_at=read_at)
    first = _local_ms(clock, 50.0)
    assert first == pytest.approx(6.0 - 12.0 * read_at, abs=0.01)
    for i in range(10):
        _answer(clock, 10.5 + i, 0.0004, read_at=0.5)
        got = _local_ms(clock, 50.0)
        assert got >= min(0.0, first) - 1e-6
        assert got == pytest.approx(max(0.0, first - (i + 0.5)), abs=0.05)
        assert got >= first - (10.5004 + i - 10.012) - 1e-3  # no faster than 1 ms a second


def test_an_old_estimate_gives_way_to_a_fresh_slower_one() -> None:
    """Clocks drift apart: a quick answer a minute old is trusted less than one just
    received that was 10 ms slower."""
    clock = DatabaseClock()
    _answer(clock, 10.0, 0.001, read_at=0.0)
    _answer(clock, 70.0, 0.011, read_at=0.5)
    _answer(clock, 71.0, 0.05, read_at=0.0)  # the slew: 0.5 ms in a second at most
    assert _error_ms(clock) < 0.01  # the fresh one (read at its middle) is exact here


def test_before_the_first_slot_the_best_answer_is_taken_at_once() -> None:
    """Calibrating: a slow first answer 6 ms off, then a quick one, before any slot is
    placed: nothing to keep consistent with yet, so no slew."""
    clock = DatabaseClock()
    _answer(clock, 10.0, 0.012, read_at=1.0)
    _answer(clock, 10.02, 0.0004, read_at=0.5)
    assert _error_ms(clock) < 0.01
