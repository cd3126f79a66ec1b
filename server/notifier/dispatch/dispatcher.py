"""Claims due messages under leases and sends them with bounded concurrency.

Every send is recorded (attempt and effect in one transaction) before the lease is
given up, so a crash at any point leaves either a recorded outcome or a lease that
runs out and lets the message be claimed again: nothing is lost, and only messages
in flight at the crash can go out twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from ulid import ULID

from notifier.dispatch.observer import NO_OBSERVER, DispatchObserver
from notifier.dispatch.provider import Provider
from notifier.dispatch.rate_limit import RateLimiters
from notifier.dispatch.recorder import AttemptRecorder
from notifier.domain.clock import Clock, now_ms
from notifier.domain.delivery import (
    ErrorKind,
    OutgoingMessage,
    ProviderError,
    meaning,
)
from notifier.domain.errors import StorageUnavailable
from notifier.domain.model import AttemptRecord, MessageRecord, Status, Transition
from notifier.domain.poison import DEFAULT_MAX_CLAIMS
from notifier.domain.ports import OutboxStore
from notifier.domain.retry import RetryPolicy, after_failure
from notifier.telemetry import (
    SEND_KIND,
    continuing,
    send_attributes,
    send_span_name,
    untraced,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    concurrency: int = 32
    lease_seconds: float = 60.0
    poll_seconds: float = 0.5
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ambiguous_policy: str = "retry"
    twilio_timeout_seconds: float = 10.0
    max_claims: int = DEFAULT_MAX_CLAIMS  # the poison guard (domain/poison.py)


def _worker_id() -> str:
    return f"{socket.gethostname()[:24]}:{os.getpid()}:{str(ULID())[-8:]}"


CLAIM_GATHER_SECONDS = 0.01
CLAIM_STOP_SECONDS = 5.0  # how long stop() lets a claim in progress finish
OPTED_OUT_CODE = 21610  # Twilio's code for "recipient unsubscribed", which it is
_TWILIO_STATUS = {"queued": Status.QUEUED, "accepted": Status.ACCEPTED, "scheduled": Status.QUEUED}


class Dispatcher:
    def __init__(
        self,
        store: OutboxStore,
        provider: Provider,
        limiters: RateLimiters,
        config: DispatchConfig,
        clock: Clock = now_ms,
        tracer: trace.Tracer | None = None,
        observer: DispatchObserver = NO_OBSERVER,
    ) -> None:
        self.owner = _worker_id()
        self._observer = observer
        self._tracer = tracer or trace.NoOpTracer()
        self._store = store
        self._recorder = AttemptRecorder(store)  # results of many sends, one commit
        self._provider = provider
        self._limiters = limiters
        self._config = config
        self._clock = clock
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._slot_freed = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._waiting = 0  # claimed messages waiting for the rate limiter
        self._started: set[str] = set()  # messages whose request to Twilio has begun
        # Messages whose request is over and whose result is being written: no longer
        # counted against claiming ahead. They keep their send slot until the write is
        # committed, so no more than ``concurrency`` messages are ever sent but not yet
        # recorded: all that a crash can make go out twice.
        self._recording: set[str] = set()
        # The cap on requests in flight to Twilio; claims run ahead of it (see _ahead).
        self._send_slots = asyncio.Semaphore(config.concurrency)
        self._holding: set[str] = set()  # messages holding one of those slots
        self._left_unsent: set[str] = set()  # claimed, then given up on stopping: release
        self._timeout_seconds = config.twilio_timeout_seconds

    def start(self) -> None:
        # Claim polls are not traced; each send is, in the trace stored with its message.
        with untraced():
            self._loop_task = asyncio.create_task(self._run(), name="dispatcher")

    def wake(self) -> None:
        """A message became due now (e.g. just accepted, or a PostgreSQL notification from
        another process): look without waiting for the poll."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                claimed = await self._claim()
            except StorageUnavailable as exc:
                log.warning("dispatcher cannot reach storage: %s", exc)
                claimed = 0
            except Exception:  # a bad row must not stop all sending: log, back off, go on
                log.exception("dispatcher claim failed")
                claimed = 0
            if claimed == 0:
                await self._idle()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._config.poll_seconds)
        self._wake.clear()

    async def _claim(self) -> int:
        while self._busy() >= self._ahead or len(self._inflight) >= self._most:
            self._slot_freed.clear()
            if self._stopping:
                return 0
            await self._slot_freed.wait()
        await self._gather_slots()
        free = self._ahead - self._busy()
        # Claim no more than the limiter can grant well within a lease, counting the
        # claimed messages still waiting for it; else leases run out in the queue.
        limiter = self._limiters.for_sender(self._provider.sender)
        grantable = int(limiter.rate * self._config.lease_seconds / 4) - self._waiting
        if grantable < 1:
            return 0
        batch = await self._store.claim_due(
            self.owner,
            limit=min(free, grantable),
            lease_ms=int(self._config.lease_seconds * 1000),
            max_claims=self._config.max_claims,
        )
        batch = self._without_poisoned(batch)
        # One read for the batch: recipients who opted out since these were queued.
        opted_out = await self._store.opted_out_among([(m.channel.value, m.to) for m in batch])
        for msg in batch:
            if msg.id in self._inflight:
                continue  # still ours from an earlier claim (its lease was renewed)
            refused = (msg.channel.value, msg.to) in opted_out
            task = asyncio.create_task(self._deliver(msg, refused), name=f"deliver-{msg.id}")
            self._inflight[msg.id] = task
            task.add_done_callback(self._done)
        return len(batch)

    def _without_poisoned(self, batch: list[MessageRecord]) -> list[MessageRecord]:
        """The claimed messages; those the claim failed instead (the poison guard) are
        reported, loudly: one of them may have reached its recipient many times."""
        claimed = [m for m in batch if m.status is not Status.FAILED]
        for msg in batch:
            if msg.status is Status.FAILED:
                self._observer.quarantine()
                log.error("message %s quarantined: %s", msg.id, msg.error_message)
        self._observer.claimed(len(claimed), sum(1 for m in claimed if m.claims > 1))
        return claimed

    async def _gather_slots(self) -> None:
        """With sends in flight, let a few more finish before claiming.

        Every claim is a write transaction (one fsync on SQLite): claiming one message
        each time one slot frees up would cost a commit per message on top of its
        record. Waiting until half a claim's worth is free (at most a few ms: sends in
        flight end all the time) makes one claim serve many sends.
        """
        wanted = max(1, self._ahead // 2)
        deadline = asyncio.get_running_loop().time() + CLAIM_GATHER_SECONDS
        while self._busy() and self._ahead - self._busy() < wanted:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), left)

    def _done(self, task: asyncio.Task[None]) -> None:
        message_id = task.get_name().removeprefix("deliver-")
        self._inflight.pop(message_id, None)
        self._started.discard(message_id)
        self._recording.discard(message_id)
        self._slot_freed.set()

    def _busy(self) -> int:
        """Claimed messages not yet past their request to Twilio (sending or queued)."""
        return len(self._inflight) - len(self._recording)

    @property
    def _ahead(self) -> int:
        """Claimed messages before their request, at most: every send slot busy and as
        many again ready to go, so a slot that frees up never waits for a claim."""
        return 2 * self._config.concurrency

    @property
    def _most(self) -> int:
        """Claimed messages at most, recording included (bounds memory if writes lag)."""
        return 4 * self._config.concurrency

    async def _deliver(self, msg: MessageRecord, opted_out: bool = False) -> None:
        try:
            if (expired := self._expired(msg)) is not None:
                await self._record(msg, None, expired)
                return
            if opted_out:
                # Queued, scheduled or retrying before the recipient sent STOP: not sent.
                refused = Transition(
                    Status.FAILED,
                    error_code=OPTED_OUT_CODE,
                    error_message="the recipient opted out before it was sent",
                )
                await self._record(msg, None, refused)
                return
            # A sender's messages hold at most its share of the send slots (about a
            # second of its rate), so a slow sender's backlog, waiting for its own
            # limit, never keeps another sender's messages from their slots.
            async with self._limiters.share_of(msg.sender, self._provider.sender):
                await self._send_in_turn(msg)
        except StorageUnavailable as exc:
            # The lease runs out and the message is claimed again: at-least-once.
            log.warning("could not record the attempt for %s: %s", msg.id, exc)
        except Exception:
            log.exception("unexpected error delivering %s", msg.id)
        finally:
            self._free_slot(msg.id)

    async def _send_in_turn(self, msg: MessageRecord) -> None:
        """Take a send slot, wait for the sender's rate limit, then make the attempt."""
        lease_ends = self._clock() + int(self._config.lease_seconds * 1000)
        self._waiting += 1
        try:
            await self._send_slots.acquire()
            self._holding.add(msg.id)
            waiting_since = time.monotonic()
            # Each sender profile has its own limit (its own Twilio throughput).
            await self._limiters.for_profile(msg.sender, self._provider.sender).acquire()
            self._observer.waited(time.monotonic() - waiting_since)
        finally:
            self._waiting -= 1
        if self._stopping:
            # Never sent: stop() releases the lease. The task ends before the grace
            # period does, so stop() cannot tell it from a finished send by itself,
            # and the message stayed leased (a lease-length delay) after a restart.
            self._left_unsent.add(msg.id)
            return
        if self._clock() > lease_ends - self._lease_margin_ms():
            log.warning("lease of %s ran low while waiting to send; leaving it", msg.id)
            return  # another claim takes it: never two sends under one lease
        if (expired := self._expired(msg)) is not None:
            # Its validity ended while it waited for its turn: never sent after it.
            await self._record(msg, None, expired)
            return
        self._started.add(msg.id)
        await self._attempt(msg)

    def _expired(self, msg: MessageRecord) -> Transition | None:
        """EXPIRED, when the message's validity has ended (None while it may be sent)."""
        if msg.expires_at_ms is None or self._clock() < msg.expires_at_ms:
            return None
        return Transition(
            Status.EXPIRED,
            error_code=msg.error_code,  # keep the last failure: it says why it is late
            error_message=msg.error_message or "validity ended before it could be sent",
        )

    def _free_slot(self, message_id: str) -> None:
        """The message is done (its result committed) or never sent: another may start."""
        if message_id in self._holding:
            self._holding.discard(message_id)
            self._send_slots.release()

    def _lease_margin_ms(self) -> int:
        """Time a send may still need once started: its request must end within the lease."""
        return int(self._timeout_seconds * 1000)

    async def _attempt(self, msg: MessageRecord) -> None:
        """One request to Twilio, traced as a messaging ``send`` span that continues the
        trace stored with the message (the caller's), so the HTTP request to Twilio and
        the recording of its outcome appear under the call that asked for the message."""
        with (
            continuing(msg.traceparent),
            self._tracer.start_as_current_span(
                send_span_name(msg.channel.value),
                kind=SEND_KIND,
                attributes=send_attributes(msg.id, msg.channel.value, msg.attempts + 1),
                record_exception=False,  # exception texts may quote what Twilio said about a number
                set_status_on_exception=False,
            ) as span,
        ):
            await self._traced_attempt(msg, span)

    async def _traced_attempt(self, msg: MessageRecord, span: Span) -> None:
        started = self._clock()
        clock = time.monotonic()
        self._observer.send_started()
        try:
            receipt = await self._provider.send(_outgoing(msg, started))
        except ProviderError as err:
            self._observer.send_finished(err.kind.value, err.code, time.monotonic() - clock)
            span.set_attribute("error.type", str(err.code or err.kind.value))
            span.set_status(StatusCode.ERROR, f"{err.kind.value} ({err.code or err.http_status})")
            await _to_the_end(self._failed(msg, started, err))
            return
        except asyncio.CancelledError:
            self._observer.send_finished(ErrorKind.AMBIGUOUS.value, None, time.monotonic() - clock)
            # Stopped after the grace period with the request out: Twilio may have it.
            # Record that as an ambiguous outcome, so the configured policy decides.
            cut = ProviderError(ErrorKind.AMBIGUOUS, "shutdown interrupted the request to Twilio")
            span.set_status(StatusCode.ERROR, "ambiguous (shutdown)")
            with contextlib.suppress(Exception):
                await asyncio.shield(self._failed(msg, started, cut))
            raise
        except BaseException:
            self._observer.send_finished(ErrorKind.AMBIGUOUS.value, None, time.monotonic() - clock)
            raise
        self._observer.send_finished("accepted", None, time.monotonic() - clock)
        attempt = AttemptRecord(
            started_at_ms=started,
            finished_at_ms=self._clock(),
            outcome="accepted",
            http_status=201,
            twilio_sid=receipt.sid,
        )
        span.set_attribute("notifier.twilio.sid", receipt.sid)
        status = _TWILIO_STATUS.get(receipt.status, Status.QUEUED)
        await _to_the_end(self._record(msg, attempt, Transition(status, twilio_sid=receipt.sid)))

    async def _failed(self, msg: MessageRecord, started: int, err: ProviderError) -> None:
        finished = self._clock()
        attempt = AttemptRecord(
            started_at_ms=started,
            finished_at_ms=finished,
            outcome=err.kind.value,
            http_status=err.http_status,
            error_code=err.code,
            error_message=str(err),
        )
        plan = after_failure(
            kind=err.kind.value,
            attempt=msg.attempts + 1,
            now_ms=finished,
            expires_at_ms=msg.expires_at_ms,
            policy=self._config.retry,
            ambiguous_policy=self._config.ambiguous_policy,
            retry_after=err.retry_after if err.kind is ErrorKind.RATE_LIMITED else None,
        )
        detail = meaning(err.code) if err.code else str(err)
        if plan.retry_at_ms is not None:
            transition = Transition(
                Status.PENDING,
                retry_at_ms=plan.retry_at_ms,
                error_code=err.code,
                error_message=detail,
            )
        else:
            final = Status.EXPIRED if plan.final_status == "expired" else Status.FAILED
            transition = Transition(final, error_code=err.code, error_message=detail)
        log.info(
            "attempt %d for %s: %s (code %s): %s",
            msg.attempts + 1,
            msg.id,
            err.kind.value,
            err.code,
            plan.reason,
        )
        await self._record(msg, attempt, transition)

    async def _record(
        self, msg: MessageRecord, attempt: AttemptRecord | None, transition: Transition
    ) -> None:
        # What Twilio answered must not be lost to a short storage hiccup: losing it
        # means sending again when the lease runs out.
        self._recording.add(msg.id)
        self._slot_freed.set()
        for pause in (0.1, 0.3, 1.0, 2.0, 4.0):
            try:
                await self._recorder.record(msg.id, attempt, transition)
                break
            except StorageUnavailable:
                if self._stopping:
                    raise
                await asyncio.sleep(pause)
        else:
            await self._recorder.record(msg.id, attempt, transition)
        if transition.status is Status.PENDING and transition.retry_at_ms is not None:
            # Look again when the retry falls due, rather than at the next fallback
            # poll (slow when wake-ups come from LISTEN/NOTIFY).
            delay = max(0.0, (transition.retry_at_ms - self._clock()) / 1000)
            asyncio.get_running_loop().call_later(delay, self.wake)
        for waiter in self._waiters.pop(msg.id, []):
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until_handed_over(self, message_id: str) -> None:
        """Return after the first attempt on the message was recorded (here or elsewhere).

        Resolved at once when this process records it; polling covers another replica.
        """
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(message_id, []).append(waiter)
        self.wake()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter), self._config.poll_seconds)
                    return
                status, attempts = await self._store.attempts_of(message_id)
                if attempts > 0 or status not in (Status.PENDING, Status.SCHEDULED):
                    return
        finally:
            waiters = self._waiters.get(message_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(message_id, None)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let sends in flight finish within ``grace``; release the rest."""
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()
        started = asyncio.get_running_loop().time()
        if self._loop_task is not None:
            # The loop ends by itself once it sees the stop. Cancelled between a claim's
            # commit and its return, it left the claimed messages leased with no task to
            # send or release them (a lease-length delay after a restart); so it is only
            # cancelled if a claim hangs (storage gone).
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._loop_task), max(grace, CLAIM_STOP_SECONDS)
                )
            except TimeoutError:
                self._loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop_task
        grace = max(0.0, grace - (asyncio.get_running_loop().time() - started))
        tasks = list(self._inflight.values())
        unsent: set[str] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            unsent = {t.get_name().removeprefix("deliver-") for t in pending} - self._started
            for task in pending:
                task.cancel()  # a request already out is recorded as ambiguous
            if pending:
                await asyncio.wait(pending)
        ids = sorted(unsent | self._left_unsent)
        if ids:
            # Only messages whose request never began: they go to another worker at once.
            with contextlib.suppress(StorageUnavailable):
                released = await self._store.release(self.owner, ids)
                if released:
                    log.info("released %d leased messages for other workers", released)


async def _to_the_end(recording: Coroutine[Any, Any, None]) -> None:
    """Record what Twilio answered even if stop() cancels the send meanwhile.

    Cancelled in the middle of this write, the transaction rolled back: Twilio had the
    message, Notifier had no attempt and kept the lease, and the message went out again
    once the lease ran out, with nothing on record to say why.
    """
    task = asyncio.ensure_future(recording)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


def _outgoing(msg: MessageRecord, now: int) -> OutgoingMessage:
    validity = None
    if msg.expires_at_ms is not None:
        validity = max(1, (msg.expires_at_ms - now) // 1000)
    return OutgoingMessage(
        message_id=msg.id,
        to=msg.to,
        channel=msg.channel.value,
        body=msg.body,
        content_sid=msg.content_sid,
        variables=dict(msg.variables),
        media_urls=msg.media_urls,
        validity_seconds=validity,
        sender=msg.sender,
    )
