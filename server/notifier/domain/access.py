"""Who may do what (issue 16): token scopes, sender restrictions, per-caller visibility.

A caller token entry in ``NOTIFIER_API_TOKENS`` is either a bare SHA-256 hex digest (a
token with every scope, as before scopes existed) or ``name:scopes:digest`` with scopes
joined by ``+``, optionally followed by ``:sender1+sender2`` to restrict the sender
profiles the token may send from. The scope each RPC needs is a table, so a new RPC
(EraseRecipient) is one line. Nothing here knows of gRPC: the API layer maps method
names to RPC names and ``Caller`` to the domain's calls.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from notifier.domain.errors import DomainError


class Scope(enum.StrEnum):
    SEND = "send"
    READ = "read"
    MANAGE = "manage"
    ADMIN = "admin"  # every RPC, on every caller's messages


# The scope each RPC needs (admin has them all). Unlisted RPCs need admin.
SCOPE_OF_RPC: Mapping[str, Scope] = {
    "SendMessage": Scope.SEND,
    "SendBulk": Scope.SEND,
    "NotifyOrder": Scope.SEND,
    "NotifyAdmins": Scope.SEND,
    "GetDeliveryStatus": Scope.READ,
    "ListMessages": Scope.READ,
    "GetMetrics": Scope.READ,
    "WatchDeliveryStatus": Scope.READ,
    "CancelMessage": Scope.MANAGE,
    "RetryMessages": Scope.MANAGE,
    "EraseRecipient": Scope.ADMIN,
}

ALL_SCOPES = frozenset(Scope)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class MissingScope(DomainError):
    """The caller's token lacks the scope a call needs (nothing was done)."""

    def __init__(self, scope: Scope, what: str) -> None:
        super().__init__(f"this token lacks the '{scope}' scope needed for {what}")
        self.scope = scope
        self.what = what


class SenderNotAllowed(DomainError):
    """The caller's token may not send from this sender profile."""

    def __init__(self, sender: str) -> None:
        super().__init__(f"this token may not send from sender '{sender}'")
        self.sender = sender


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One accepted token: its digest, its name (shown in banners and histories, never
    the digest), its scopes and the senders it may use (None: any)."""

    digest: str
    name: str
    scopes: frozenset[Scope] = ALL_SCOPES
    senders: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as the use cases see it.

    ``owner`` is what messages are stored under (and idempotency keys scoped by); an
    admin sees every owner's messages. No authentication (development): one open
    caller with every scope, owner "".
    """

    owner: str
    name: str = ""
    scopes: frozenset[Scope] = ALL_SCOPES
    senders: frozenset[str] | None = None

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    @property
    def visible_owner(self) -> str | None:
        """The owner whose messages this caller may see: None for every owner."""
        return None if self.is_admin else self.owner

    def may(self, scope: Scope) -> bool:
        return self.is_admin or scope in self.scopes

    def require(self, rpc: str) -> None:
        """Raise MissingScope unless this caller may call ``rpc``."""
        needed = SCOPE_OF_RPC.get(rpc, Scope.ADMIN)
        if not self.may(needed):
            raise MissingScope(needed, rpc)

    def check_sender(self, sender: str) -> None:
        if self.senders is not None and sender not in self.senders:
            raise SenderNotAllowed(sender)


OPEN = Caller(owner="")


def owner_of(digest: str) -> str:
    """The stored owner of a token: a digest prefix, never the token (as before scopes,
    so messages and idempotency keys stored earlier keep their owner)."""
    return "token:" + digest[:16]


def caller_for(entry: TokenEntry) -> Caller:
    return Caller(
        owner=owner_of(entry.digest), name=entry.name, scopes=entry.scopes, senders=entry.senders
    )


def parse_token_entry(entry: str, position: int) -> TokenEntry:
    """One ``NOTIFIER_API_TOKENS`` entry; ValueError naming the entry by ``position``
    (1-based), never quoting it: a raw token pasted by mistake must not reach a log."""
    parts = entry.strip().split(":")
    where = f"entry {position}"
    if len(parts) == 1:
        digest = parts[0].lower()
        if not _SHA256_HEX.match(digest):
            raise ValueError(
                f"{where} is not a SHA-256 hex digest (64 hex characters: list sha256(token), "
                "never the token itself) nor name:scopes:digest"
            )
        # Named by position: a bare digest has no name, and the banner never shows digests.
        return TokenEntry(digest=digest, name=f"token-{position}")
    if len(parts) not in (3, 4):
        raise ValueError(f"{where} must be DIGEST or name:scopes:digest[:sender1+sender2]")
    name, scopes_text, digest = parts[0], parts[1], parts[2].lower()
    if not _NAME.match(name):
        raise ValueError(f"{where}: the name must be letters, digits, '_', '.' or '-'")
    scopes = _parse_set(scopes_text, where, "scopes")
    if any(s not in {v.value for v in Scope} for s in scopes):
        # Not echoed: a raw token with colons pasted here would show a piece of itself.
        raise ValueError(
            f"{where}: an unknown scope (choose from {', '.join(s.value for s in Scope)})"
        )
    if not _SHA256_HEX.match(digest):
        raise ValueError(f"{where}: the digest is not 64 hex characters (sha256 of the token)")
    senders = None
    if len(parts) == 4:
        senders = _parse_set(parts[3], where, "senders")
        if any(not _NAME.match(s) for s in senders):
            raise ValueError(f"{where}: sender names must be letters, digits, '_', '.' or '-'")
    return TokenEntry(
        digest=digest, name=name, scopes=frozenset(Scope(s) for s in scopes), senders=senders
    )


def _parse_set(text: str, where: str, what: str) -> frozenset[str]:
    items = [s.strip() for s in text.split("+")]
    if not text.strip() or any(not s for s in items):
        raise ValueError(f"{where}: {what} must be names joined by '+', none empty")
    return frozenset(items)


def parse_token_entries(entries: Sequence[str]) -> list[TokenEntry]:
    """Every entry, or one ValueError listing each bad entry by position."""
    parsed: list[TokenEntry] = []
    problems: list[str] = []
    for i, entry in enumerate(entries, 1):
        try:
            parsed.append(parse_token_entry(entry, i))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems) + f" (of {len(entries)} entries)")
    digests = [e.digest for e in parsed]
    repeated = [str(i) for i, d in enumerate(digests, 1) if digests.index(d) != i - 1]
    if repeated:
        raise ValueError(f"entry {', '.join(repeated)} repeats the digest of an earlier entry")
    return parsed


def duplicate_names(entries: Sequence[TokenEntry]) -> list[str]:
    """Names given to more than one entry (production refuses them: a history naming
    the actor would not say which token acted)."""
    names = [e.name for e in entries]
    return sorted({n for n in names if names.count(n) > 1})


def describe(entry: TokenEntry) -> str:
    """For the startup banner: name, scopes and senders, never the digest."""
    scopes = "+".join(sorted(s.value for s in entry.scopes))
    senders = "" if entry.senders is None else " senders=" + "+".join(sorted(entry.senders))
    return f"{entry.name} ({scopes}{senders})"
