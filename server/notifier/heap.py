"""The heap of a long-running process, once it has started."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def settle_heap() -> None:
    """Put what the start built out of the garbage collector's reach, once serving.

    Modules, SQLAlchemy's metadata, phonenumbers' tables and the gRPC and OpenTelemetry
    machinery: about 140,000 objects once a gRPC server has started, which live as long
    as the process. Left in the oldest generation, every full collection walks them all
    with the event loop stopped: 90 ms on the 2-core bench machine, 100-250 ms when it
    was busy. Those showed as holes in the send rate (a shared 80/s limit fell to 73 in
    that second) and, in the emulator, as bursts of arrivals stamped at once after a
    pause. Frozen, a full collection took 2-4 ms, and the sidecar under callback load
    spent 3 % of its CPU in the collector instead of 11 %. Objects made later are
    collected as before. Called by the process's entry point (``notifier serve``, the
    emulator, ``make bench``), not by the servers, which tests build by the dozen.
    """
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def paused_collection() -> Iterator[None]:
    """No garbage collection in this process inside the block (one full collection
    first): a process that stamps arrivals on its event loop (the emulator of a rate
    test or benchmark, which in a test run shares its process with a heap the whole
    suite built) stamps each request as it comes instead of several at once after a
    full collection's pause. Twilio's counter does not pause for our collector."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
