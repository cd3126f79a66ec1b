"""settle_heap: what the start built leaves the collector's walks; garbage made later
is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from notifier.heap import settle_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the suite runs on a heap as Python left it


@pytest.mark.usefixtures("unfrozen")
def test_the_objects_alive_at_start_are_frozen() -> None:
    kept = _Node()
    gc.collect()
    tracked = len(gc.get_objects())  # all alive
    settle_heap()
    assert gc.get_freeze_count() >= tracked * 0.9  # what a full collection no longer walks
    assert not any(o is kept for o in gc.get_objects())
    assert kept.me is kept  # alive all the same


@pytest.mark.usefixtures("unfrozen")
def test_garbage_made_after_it_is_still_collected() -> None:
    settle_heap()
    later = _Node()
    gone = weakref.ref(later)
    del later
    gc.collect()
    assert gone() is None
