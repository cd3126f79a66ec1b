"""The poison-message guard: when a message claimed again and again stops being sent.

Every claim of a message is counted with the claim; recording an outcome (an attempt,
an expiry, a refusal) sets the count back to zero. A message whose claims keep running
out without an outcome is one whose send, or whose record of the send, fails every
time: a constraint the answer breaks, a value the schema cannot hold, a bug. Claiming
it again would POST it to Twilio again after every lease, so after ``max_claims``
claims without an outcome it is not sent again: it fails, as an ambiguous outcome,
since Twilio may have it.
"""

from __future__ import annotations

DEFAULT_MAX_CLAIMS = 5


def quarantines(claims_so_far: int, max_claims: int) -> bool:
    """Whether a message already claimed ``claims_so_far`` times without a recorded
    outcome must be failed instead of claimed (and sent) once more."""
    return max_claims > 0 and claims_so_far >= max_claims


def quarantine_reason(claims: int) -> str:
    """The error message a quarantined message ends with (shown to callers)."""
    return f"delivery outcome could not be recorded after {claims} claims; it may have been sent"
