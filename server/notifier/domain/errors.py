"""What can go wrong, in domain words; the API layer maps each to a gRPC status."""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    """Base of every error a caller can cause or needs to know about."""


@dataclass(frozen=True, slots=True)
class Violation:
    field: str
    description: str


class ValidationFailed(DomainError):
    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        fields = ", ".join(v.field for v in violations)
        super().__init__(f"invalid request: {len(violations)} bad field(s): {fields}")


class NotFound(DomainError):
    def __init__(self, kind: str, ref: str) -> None:
        self.kind = kind
        self.ref = ref
        super().__init__(f"{kind} {ref!r} not found")


class IdempotencyConflict(DomainError):
    def __init__(self, key: str, message_id: str) -> None:
        self.key = key
        self.message_id = message_id
        super().__init__(
            f"idempotency_key {key!r} was already used for message {message_id} "
            "with a different payload"
        )


class PreconditionFailed(DomainError):
    def __init__(self, subject: str, kind: str, description: str) -> None:
        self.subject = subject
        self.kind = kind
        self.description = description
        super().__init__(description)


class StorageUnavailable(DomainError):
    """Storage could not be reached; the caller may retry."""


class Unsupported(DomainError):
    """A feature this server does not offer (yet, or in this configuration)."""

    def __init__(self, feature: str, why: str) -> None:
        self.feature = feature
        super().__init__(f"{feature} is not supported: {why}")
