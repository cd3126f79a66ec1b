"""Template pre-flight rules (domain/templates.py, domain/preflight.py): Meta's parameter
rules for template variables and their match with a template's placeholders."""

from __future__ import annotations

import pytest

from notifier.domain.errors import ValidationFailed, Violation
from notifier.domain.preflight import TemplatePreflight
from notifier.domain.templates import (
    Template,
    TemplateUnavailable,
    check_against,
    check_variables,
    placeholders,
)

SID = "HX" + "0123456789abcdef" * 2
EMPTY = "must not be empty (Meta refuses empty template parameters)"
BREAKS = "must not contain newlines or tabs (Meta's template parameter rules)"
SPACES = "must not have more than 4 spaces in a row"
NOT_A_NUMBER = 'keys are placeholder numbers "1", "2"… without gaps'


def problems(variables: dict[str, str]) -> list[tuple[str, str]]:
    bad: list[Violation] = []
    check_variables(variables, bad)
    return [(v.field, v.description) for v in bad]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, []),
        ({"1": "Ana"}, []),
        ({"1": "Ana", "2": "A-1001", "3": "4 spaces:    ok"}, []),
        ({"2": "b", "1": "a"}, []),  # order does not matter
        ({"1": "x" * 1600}, []),
        ({"1": "café ☕ «quoted»"}, []),
        ({"1": ""}, [('variables["1"]', EMPTY)]),
        ({"1": "   "}, [('variables["1"]', EMPTY)]),
        ({"1": "two\nlines"}, [('variables["1"]', BREAKS)]),
        ({"1": "a\r\nb"}, [('variables["1"]', BREAKS)]),
        ({"1": "tab\there"}, [('variables["1"]', BREAKS)]),
        ({"1": "five     spaces"}, [('variables["1"]', SPACES)]),
        ({"1": "x" * 1601}, [('variables["1"]', "has 1,601 characters; at most 1,600")]),
        (
            {"1": "a", "3": "c"},
            [('variables["2"]', 'is missing: keys run from "1" to "3" without gaps')],
        ),
        (
            {"4": "d"},
            [
                ('variables["1"]', 'is missing: keys run from "1" to "4" without gaps'),
                ('variables["2"]', 'is missing: keys run from "1" to "4" without gaps'),
                ('variables["3"]', 'is missing: keys run from "1" to "4" without gaps'),
            ],
        ),
        ({"name": "Ana"}, [('variables["name"]', NOT_A_NUMBER)]),
        ({"0": "a"}, [('variables["0"]', NOT_A_NUMBER)]),
        ({"01": "a"}, [('variables["01"]', NOT_A_NUMBER)]),
        ({"¹": "a"}, [('variables["¹"]', NOT_A_NUMBER)]),  # a digit to isdigit(), not to int()
        ({"1": "a", "101": "b"}, [('variables["101"]', "placeholders go up to 100")]),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_meta_parameter_rules(variables: dict[str, str], expected: list[tuple[str, str]]) -> None:
    assert problems(variables) == expected


def test_every_violation_is_reported_at_once() -> None:
    """One value can break several rules; every variable's problems are named."""
    found = problems({"1": "", "2": "a\tb     c" + "x" * 1600, "5": "ok", "x": "a\nb"})
    assert found == [
        ('variables["1"]', EMPTY),
        ('variables["2"]', BREAKS),
        ('variables["2"]', SPACES),
        ('variables["2"]', "has 1,609 characters; at most 1,600"),
        ('variables["x"]', NOT_A_NUMBER),
        ('variables["x"]', BREAKS),
        ('variables["3"]', 'is missing: keys run from "1" to "5" without gaps'),
        ('variables["4"]', 'is missing: keys run from "1" to "5" without gaps'),
    ]


def test_more_than_a_hundred_variables_is_one_violation() -> None:
    assert problems({str(i): "v" for i in range(1, 102)}) == [("variables", "at most 100 entries")]


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ({"twilio/text": {"body": "Welcome!"}}, set()),
        ({"twilio/text": {"body": "Hi {{1}}, order {{2}}; again {{1}}"}}, {"1", "2"}),
        ({"twilio/text": {"body": "spaced {{ 3 }}"}}, {"3"}),
        (
            {
                "twilio/call-to-action": {
                    "body": "With {{1}} on {{2}}",
                    "actions": [{"type": "URL", "title": "Go", "url": "https://e.com/{{3}}"}],
                },
                "twilio/media": {"body": "{{1}}", "media": ["https://e.com/{{4}}.jpg"]},
            },
            {"1", "2", "3", "4"},
        ),
        ({"twilio/text": {"body": "{single} {{}} {{a b}}"}}, set()),
    ],
)
def test_placeholders_are_found_in_every_field_of_every_type(
    types: dict[str, object], expected: set[str]
) -> None:
    assert placeholders(types) == expected


@pytest.mark.parametrize(
    ("variables", "wanted", "expected"),
    [
        ({"1": "a", "2": "b"}, {"1", "2"}, []),
        ({}, set(), []),
        ({"1": "a"}, {"1", "2"}, [('variables["2"]', "is missing: the template uses {{2}}")]),
        (
            {"1": "a", "2": "b", "3": "c"},
            {"1", "2"},
            [('variables["3"]', "the template has no {{3}}")],
        ),
        ({"1": "a"}, set(), [('variables["1"]', "the template has no {{1}}")]),
        (
            {"2": "b", "10": "j"},
            {"1", "2", "3"},
            [
                ('variables["1"]', "is missing: the template uses {{1}}"),
                ('variables["3"]', "is missing: the template uses {{3}}"),
                ('variables["10"]', "the template has no {{10}}"),
            ],
        ),
    ],
)
def test_variables_must_fill_exactly_the_placeholders(
    variables: dict[str, str], wanted: set[str], expected: list[tuple[str, str]]
) -> None:
    bad: list[Violation] = []
    check_against(variables, frozenset(wanted), bad)
    assert [(v.field, v.description) for v in bad] == expected


class Source:
    """A template source answering from a table; ``down`` makes it unavailable."""

    def __init__(self, templates: dict[str, Template], down: bool = False) -> None:
        self.templates, self.down = templates, down
        self.asked: list[str] = []

    async def template(self, content_sid: str) -> Template | None:
        self.asked.append(content_sid)
        if self.down:
            raise TemplateUnavailable("HTTP 503")
        return self.templates.get(content_sid)


def _valid() -> str:
    return "ok"


def _invalid() -> str:
    raise ValidationFailed([Violation('variables["2"]', "local"), Violation("to", "bad")])


@pytest.mark.parametrize(
    ("source", "sid", "variables", "validate", "expected"),
    [
        # Without a source only the local rules speak.
        (None, SID, {"9": "x"}, _valid, None),
        # The template fits.
        (
            Source({SID: Template(SID, frozenset({"1", "2"}))}),
            SID,
            {"1": "a", "2": "b"},
            _valid,
            None,
        ),
        # Unknown template: INVALID_ARGUMENT on content_sid.
        (Source({}), SID, {}, _valid, [("content_sid", "no such template in the Twilio account")]),
        # Extra variable named by the template check.
        (
            Source({SID: Template(SID, frozenset({"1"}))}),
            SID,
            {"1": "a", "2": "b"},
            _valid,
            [('variables["2"]', "the template has no {{2}}")],
        ),
        # Both sides report; a variable the local rules named is not named twice.
        (
            Source({SID: Template(SID, frozenset({"1"}))}),
            SID,
            {"1": "a", "2": "b", "3": "c"},
            _invalid,
            [
                ('variables["2"]', "local"),
                ("to", "bad"),
                ('variables["3"]', "the template has no {{3}}"),
            ],
        ),
        # The source is down: the local rules alone decide.
        (Source({}, down=True), SID, {"1": "a"}, _valid, None),
        (
            Source({}, down=True),
            SID,
            {"1": "a"},
            _invalid,
            [('variables["2"]', "local"), ("to", "bad")],
        ),
    ],
)
async def test_preflight_combines_local_rules_and_the_template(
    source: Source | None,
    sid: str,
    variables: dict[str, str],
    validate: object,
    expected: list[tuple[str, str]] | None,
) -> None:
    preflight = TemplatePreflight(source)
    assert callable(validate)
    if expected is None:
        assert await preflight.checked(validate, sid, variables) == "ok"
        return
    with pytest.raises(ValidationFailed) as info:
        await preflight.checked(validate, sid, variables)
    assert [(v.field, v.description) for v in info.value.violations] == expected


@pytest.mark.parametrize("sid", [None, "", "HX123", "MG" + "0" * 32])
async def test_no_template_lookup_without_a_well_formed_sid(sid: str | None) -> None:
    """The local rules name a malformed SID; the source is not asked about it."""
    source = Source({})
    assert await TemplatePreflight(source).violations(sid, {"1": "a"}) == []
    assert source.asked == []
