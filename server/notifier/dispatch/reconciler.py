"""The reconciler: fetches from Twilio the messages whose status callbacks did not come.

Twilio does not retry a failed callback, so without this a message stays QUEUED or SENT
forever. Each round (one replica at a time on PostgreSQL) marks the messages past the
give-up time as unconfirmed, then fetches the waiting ones that are due, under a rate
budget of its own (it never takes the sending limiter's slots), and reports what Twilio
says through the callbacks' own path and rule (source ``reconcile``). The schedule, the
give-up and the meaning of errors are domain/reconcile.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Protocol

from notifier.dispatch.rate_limit import SlidingWindowLimiter
from notifier.dispatch.reconcile_metrics import FetchResult, ReconcileMetrics, backed_off
from notifier.domain.clock import Clock, now_ms
from notifier.domain.delivery import ProviderError
from notifier.domain.errors import StorageUnavailable
from notifier.domain.model import CallbackResult
from notifier.domain.ports import ReconcileStore
from notifier.domain.reconcile import (
    Candidate,
    FetchedMessage,
    FetchState,
    FetchVerdict,
    Unconfirmed,
    judge_fetch_error,
    next_fetch_at,
    reports_from,
)
from notifier.telemetry import untraced

log = logging.getLogger(__name__)

_NEWS = (CallbackResult.APPLIED, CallbackResult.RECORDED)


class Fetcher(Protocol):
    async def fetch(self, sid: str) -> FetchedMessage:
        """The message as Twilio shows it now; raises ProviderError."""


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    after_seconds: float  # NOTIFIER_RECONCILE_AFTER
    give_up_seconds: float  # NOTIFIER_RECONCILE_GIVE_UP
    rate_per_second: float = 5.0  # the fetches' own budget
    batch: int = 200  # messages looked at per round, at most

    @property
    def poll_seconds(self) -> float:
        """How often a round runs: often enough that a due fetch waits at most a quarter
        of the interval (at most 30 s)."""
        return max(0.05, min(self.after_seconds / 4, 30.0))

    @property
    def concurrency(self) -> int:
        """Fetches in flight: enough for the budget when each takes up to 200 ms (a GET
        to Twilio, then applying what it says), and at least 4."""
        return max(4, math.ceil(self.rate_per_second / 5))

    @property
    def round_size(self) -> int:
        """Messages taken per round: what the budget fetches in one poll period. A round
        picks its messages when it starts; a bigger one would fetch its last ones long
        after, when a callback may have come meanwhile (the fetch then only repeats it)."""
        return max(1, min(self.batch, math.ceil(self.rate_per_second * self.poll_seconds)))


class Reconciler:
    def __init__(
        self,
        store: ReconcileStore,
        fetcher: Fetcher,
        config: ReconcileConfig,
        metrics: ReconcileMetrics | None = None,
        clock: Clock = now_ms,
    ) -> None:
        self._store = store
        self._fetcher = fetcher
        self._config = config
        self.metrics = metrics if metrics is not None else ReconcileMetrics()
        self._clock = clock
        self._limiter = SlidingWindowLimiter(config.rate_per_second)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._task: asyncio.Task[None] | None = None
        self.stopped_by_twilio = False  # a 401 stopped it: credentials need fixing

    def start(self) -> None:
        # Background work, like the dispatcher's claim polls: no root span per query.
        with untraced():
            self._task = asyncio.create_task(self._run(), name="reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self.stopped_by_twilio:
            fetched = 0
            try:
                fetched = await self.run_round()
            except StorageUnavailable as exc:
                log.warning("reconciliation round skipped, storage unavailable: %s", exc)
            except Exception:  # a bug in one round must not end reconciliation for good
                log.exception("reconciliation round failed")
            if fetched < self._config.round_size:  # a full round: more are due, go on
                await asyncio.sleep(self._config.poll_seconds)

    async def run_round(self) -> int:
        """One round; returns how many messages were fetched (0 when not our turn)."""
        async with self._store.reconcile_turn() as ours:
            if not ours:
                return 0
            now = self._clock()
            cfg = self._config
            gave_up = await self._store.give_up_reconciling(
                now_ms=now, give_up_ms=int(cfg.give_up_seconds * 1000)
            )
            if gave_up:
                self.metrics.unconfirmed.labels(Unconfirmed.GAVE_UP.value).inc(gave_up)
                log.warning("%d message(s) unconfirmed: no final status from Twilio", gave_up)
            due = await self._store.reconcile_candidates(
                now_ms=now, after_ms=int(cfg.after_seconds * 1000), limit=cfg.round_size
            )
            outcomes = await asyncio.gather(
                *(self._reconcile(c) for c in due), return_exceptions=True
            )
            states = [o for o in outcomes if isinstance(o, FetchState)]
            await self._store.record_fetches(states)
            for failure in outcomes:
                if isinstance(failure, BaseException):
                    raise failure  # storage went away mid-round: the round is retried
            return len(states)

    async def _reconcile(self, candidate: Candidate) -> FetchState | None:
        """Fetch one message and apply what Twilio says; its new fetch state (None when
        the fetch did not happen because the reconciler stopped, or brought news)."""
        async with self._slots:
            if self.stopped_by_twilio:
                return None
            await self._limiter.acquire()
            try:
                fetched = await self._fetcher.fetch(candidate.twilio_sid)
            except ProviderError as exc:
                return self._failed(candidate, exc)
            except Exception:  # an answer we cannot read: back off, never loop on it
                log.exception("fetch of %s failed", candidate.message_id)
                self.metrics.fetched(FetchResult.TWILIO_ERROR)
                return self._later(candidate)
        # Submitted together, in order: one write applies them both, as it would apply
        # callbacks arriving together.
        applied = await asyncio.gather(
            *(self._store.apply_report(r) for r in reports_from(fetched, candidate.message_id))
        )
        results = [result for result, _ in applied]
        if any(r in _NEWS for r in results):
            self.metrics.fetched(FetchResult.UPDATED)
            return None  # applying the news started its schedule again
        self.metrics.fetched(FetchResult.UNCHANGED)
        return self._later(candidate)

    def _later(self, candidate: Candidate) -> FetchState:
        fetches = candidate.fetches + 1
        after_ms = int(self._config.after_seconds * 1000)
        news = candidate.last_news_ms
        return FetchState(
            candidate.message_id, news, fetches, next_fetch_at(news, fetches, after_ms)
        )

    def _failed(self, candidate: Candidate, exc: ProviderError) -> FetchState | None:
        verdict = judge_fetch_error(exc.http_status, exc.code)
        if verdict is FetchVerdict.NOT_FOUND:
            self.metrics.fetched(FetchResult.NOT_FOUND)
            self.metrics.unconfirmed.labels(Unconfirmed.NOT_FOUND.value).inc()
            log.warning(
                "message %s (%s) is no longer at Twilio: counted unconfirmed, not fetched again",
                candidate.message_id,
                candidate.twilio_sid,
            )
            gone = Unconfirmed.NOT_FOUND
            return FetchState(
                candidate.message_id, candidate.last_news_ms, candidate.fetches + 1, None, gone
            )
        if verdict is FetchVerdict.STOP:
            self.metrics.fetched(FetchResult.UNAUTHORIZED)
            if not self.stopped_by_twilio:
                self.stopped_by_twilio = True
                log.error(
                    "Twilio refused the reconciler (HTTP %s, code %s: %s): reconciliation "
                    "stopped; fix the credentials and restart",
                    exc.http_status,
                    exc.code,
                    exc,
                )
            return None
        self.metrics.fetched(backed_off(exc.http_status))
        log.info("fetch of %s backs off: %s", candidate.message_id, exc)
        return self._later(candidate)
