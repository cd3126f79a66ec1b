"""What the dispatcher reports as it works, for metrics (``notifier.metrics``).

A protocol, so the dispatcher knows nothing of Prometheus; ``NO_OBSERVER`` when nobody
watches (tests, or metrics turned off).
"""

from __future__ import annotations

from typing import Protocol


class DispatchObserver(Protocol):
    def claimed(self, count: int, takeovers: int) -> None:
        """``count`` messages claimed, ``takeovers`` of them after a lease ran out."""

    def quarantine(self) -> None:
        """A message was failed by the poison guard."""

    def waited(self, seconds: float) -> None:
        """A send waited ``seconds`` for the sender's rate limit."""

    def send_started(self) -> None:
        """A request to Twilio began."""

    def send_finished(self, outcome: str, code: int | None, seconds: float) -> None:
        """A request to Twilio ended: its outcome (accepted, or the kind of error),
        Twilio's error code if any, and how long it took."""


class _Nobody:
    def claimed(self, count: int, takeovers: int) -> None:
        pass

    def quarantine(self) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass

    def send_started(self) -> None:
        pass

    def send_finished(self, outcome: str, code: int | None, seconds: float) -> None:
        pass


NO_OBSERVER: DispatchObserver = _Nobody()
