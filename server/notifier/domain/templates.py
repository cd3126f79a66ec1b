"""Template pre-flight: Meta's parameter rules for template variables, and the match of
the variables against a template's placeholders.

Twilio accepts a template send whose variables break Meta's rules and the message fails
later (after Notifier acknowledged it, so the caller learns only from a status). These
checks run before anything is stored and report every problem at once, each on its
variable (``variables["3"]``), so a caller fixes a request in one round.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from notifier.domain.errors import DomainError, Violation

MAX_VARIABLE = 1600  # characters of one value, as Twilio's Body
MAX_VARIABLES = 100
MAX_SPACES = 4  # Meta refuses a parameter with more spaces in a row

# Twilio's templates number their placeholders {{1}}, {{2}}…; a key like "01" or "0" is
# not one of them, so it would never fill a placeholder.
_NUMBER = re.compile(r"^[1-9][0-9]*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_TOO_MANY_SPACES = re.compile(" " * (MAX_SPACES + 1))
_LINE_BREAKS_AND_TABS = frozenset("\n\r\t\v\f\u2028\u2029")


def variable_field(key: object) -> str:
    """The field path of one variable, quoted so a key with spaces stays readable."""
    return f'variables["{key}"]'


def value_problems(value: str) -> list[str]:
    """What Meta's parameter rules say is wrong with one value (empty: nothing)."""
    if not value.strip():
        return ["must not be empty (Meta refuses empty template parameters)"]
    problems = []
    if any(c in _LINE_BREAKS_AND_TABS for c in value):
        problems.append("must not contain newlines or tabs (Meta's template parameter rules)")
    if _TOO_MANY_SPACES.search(value):
        problems.append(f"must not have more than {MAX_SPACES} spaces in a row")
    if len(value) > MAX_VARIABLE:
        problems.append(f"has {len(value):,} characters; at most {MAX_VARIABLE:,}")
    return problems


def check_variables(variables: Mapping[str, str], bad: list[Violation]) -> None:
    """Keys "1"…"N" without gaps, every value within Meta's rules; all problems in
    ``bad``, in key order (a protobuf map has none of its own)."""
    if len(variables) > MAX_VARIABLES:
        bad.append(Violation("variables", f"at most {MAX_VARIABLES} entries"))
        return
    numbers: set[int] = set()
    for key, value in sorted(variables.items(), key=lambda item: _natural(item[0])):
        where = variable_field(key)
        if not _NUMBER.match(key):
            bad.append(Violation(where, 'keys are placeholder numbers "1", "2"… without gaps'))
        elif int(key) > MAX_VARIABLES:
            bad.append(Violation(where, f"placeholders go up to {MAX_VARIABLES}"))
        else:
            numbers.add(int(key))
        bad.extend(Violation(where, problem) for problem in value_problems(value))
    last = max(numbers, default=0)
    for missing in sorted(set(range(1, last)) - numbers):
        bad.append(
            Violation(
                variable_field(missing),
                f'is missing: keys run from "1" to "{last}" without gaps',
            )
        )


def placeholders(fields: object) -> frozenset[str]:
    """Every ``{{n}}`` in a template's content, at any depth (body, title, buttons, media
    URLs… of every type it has), as the variable keys that fill them."""
    found: set[str] = set()
    for text in _strings(fields):
        found.update(match.group(1) for match in _PLACEHOLDER.finditer(text))
    return frozenset(found)


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def check_against(
    variables: Mapping[str, str], wanted: frozenset[str], bad: list[Violation]
) -> None:
    """The variables must fill exactly the template's placeholders: each missing and each
    extra key is named."""
    for key in sorted(wanted - variables.keys(), key=_natural):
        bad.append(Violation(variable_field(key), f"is missing: the template uses {{{{{key}}}}}"))
    for key in sorted(variables.keys() - wanted, key=_natural):
        bad.append(Violation(variable_field(key), f"the template has no {{{{{key}}}}}"))


def _natural(key: str) -> tuple[int, str]:
    # isdigit() alone takes "¹" and other Unicode digits, which int() refuses.
    return (int(key), "") if key.isascii() and key.isdigit() else (1 << 30, key)


@dataclass(frozen=True, slots=True)
class Template:
    """What the pre-flight needs of a Content API template."""

    sid: str
    placeholders: frozenset[str]


class TemplateUnavailable(DomainError):
    """The template source could not answer (unreachable, 5xx, refused credentials):
    not the caller's fault, so the send is checked by the local rules alone."""
