"""Token entries, scopes and sender restrictions as pure rules (domain/access.py):
what each NOTIFIER_API_TOKENS entry means, which scope each RPC needs, and that an
error names the entry by position and never quotes it."""

from __future__ import annotations

import pytest

from notifier.domain.access import (
    ALL_SCOPES,
    SCOPE_OF_RPC,
    Caller,
    MissingScope,
    Scope,
    SenderNotAllowed,
    TokenEntry,
    describe,
    duplicate_names,
    parse_token_entries,
    parse_token_entry,
)

D = "ab" * 32  # a well-formed digest
E = "cd" * 32


@pytest.mark.parametrize(
    ("entry", "name", "scopes", "senders"),
    [
        (D, "token-1", ALL_SCOPES, None),
        (D.upper(), "token-1", ALL_SCOPES, None),
        (f"billing:send:{D}", "billing", {Scope.SEND}, None),
        (f"ops:read+manage:{D}", "ops", {Scope.READ, Scope.MANAGE}, None),
        (f"root:admin:{D.upper()}", "root", {Scope.ADMIN}, None),
        (f"mkt:send+read:{D}:brand-a", "mkt", {Scope.SEND, Scope.READ}, {"brand-a"}),
        (f"mkt:send:{D}:brand-a+sms", "mkt", {Scope.SEND}, {"brand-a", "sms"}),
    ],
)
def test_good_entries(entry: str, name: str, scopes: set[Scope], senders: set[str] | None) -> None:
    parsed = parse_token_entry(entry, 1)
    assert parsed.digest == D
    assert parsed.name == name
    assert parsed.scopes == frozenset(scopes)
    assert parsed.senders == (None if senders is None else frozenset(senders))


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("my-raw-token", "is not a SHA-256 hex digest"),
        ("f" * 63, "is not a SHA-256 hex digest"),
        (f"a:{D}", "must be DIGEST or name:scopes:digest"),
        (f"a:send:{D}:x:y", "must be DIGEST or name:scopes:digest"),
        (f"a:write:{D}", "an unknown scope (choose from send, read, manage, admin)"),
        ("my:raw-token:with-colons", "an unknown scope"),
        (f"a::{D}", "scopes must be names joined by '+'"),
        (f"a:send++read:{D}", "scopes must be names joined by '+'"),
        ("a:send:my-raw-token", "the digest is not 64 hex characters"),
        (f"bad name:send:{D}", "the name must be letters"),
        (f":send:{D}", "the name must be letters"),
        (f"a:send:{D}:", "senders must be names joined by '+'"),
        (f"a:send:{D}:x y", "sender names must be letters"),
    ],
)
def test_bad_entries_are_named_by_position_never_quoted(entry: str, problem: str) -> None:
    with pytest.raises(ValueError, match="entry 3") as info:
        parse_token_entry(entry, 3)
    assert problem in str(info.value)
    for piece in entry.split(":"):  # no part of an entry is echoed (but names we print)
        assert len(piece) < 5 or piece not in str(info.value), piece
    assert D not in str(info.value)


def test_every_bad_entry_is_listed_at_once() -> None:
    with pytest.raises(ValueError, match="entry 2") as info:
        parse_token_entries([D, "raw-one", f"a:nope:{E}"])
    text = str(info.value)
    assert "entry 3" in text
    assert "(of 3 entries)" in text
    assert "raw-one" not in text


def test_a_digest_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="entry 2 repeats the digest"):
        parse_token_entries([f"a:send:{D}", f"b:read:{D}"])


def test_duplicate_names() -> None:
    entries = parse_token_entries([f"a:send:{D}", f"a:read:{E}"])
    assert duplicate_names(entries) == ["a"]
    assert duplicate_names(parse_token_entries([f"a:send:{D}", f"b:read:{E}"])) == []


def test_the_banner_text_names_scopes_and_never_the_digest() -> None:
    text = describe(parse_token_entry(f"mkt:send+read:{D}:brand-a", 1))
    assert text == "mkt (read+send senders=brand-a)"
    assert describe(parse_token_entry(D, 4)) == "token-4 (admin+manage+read+send)"


RPCS = sorted(SCOPE_OF_RPC)


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("scope", list(Scope))
def test_each_scope_against_each_rpc(scope: Scope, rpc: str) -> None:
    caller = Caller(owner="o", name="n", scopes=frozenset({scope}))
    allowed = scope is Scope.ADMIN or SCOPE_OF_RPC[rpc] is scope
    if allowed:
        caller.require(rpc)
    else:
        with pytest.raises(MissingScope) as info:
            caller.require(rpc)
        assert info.value.scope is SCOPE_OF_RPC[rpc]


def test_an_rpc_missing_from_the_table_needs_admin() -> None:
    with pytest.raises(MissingScope) as info:
        Caller(owner="o", scopes=frozenset({Scope.SEND, Scope.READ, Scope.MANAGE})).require("New")
    assert info.value.scope is Scope.ADMIN


@pytest.mark.parametrize(
    ("scopes", "visible"),
    [({Scope.ADMIN}, None), ({Scope.READ}, "token:x"), (set(Scope), None)],
)
def test_only_admin_sees_every_callers_messages(scopes: set[Scope], visible: str | None) -> None:
    assert Caller(owner="token:x", scopes=frozenset(scopes)).visible_owner == visible


@pytest.mark.parametrize(
    ("senders", "sender", "allowed"),
    [(None, "any", True), ({"a"}, "a", True), ({"a"}, "default", False), ({"a", "b"}, "b", True)],
)
def test_sender_restriction(senders: set[str] | None, sender: str, allowed: bool) -> None:
    entry = TokenEntry(digest=D, name="t", senders=None if senders is None else frozenset(senders))
    caller = Caller(owner="o", senders=entry.senders)
    if allowed:
        caller.check_sender(sender)
    else:
        with pytest.raises(SenderNotAllowed):
            caller.check_sender(sender)
