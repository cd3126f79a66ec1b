"""The template pre-flight of a send: the local rules always, and with a template source
(NOTIFIER_TEMPLATE_CHECK=twilio) the variables against the template's placeholders.

When the source cannot answer, the send is checked by the local rules alone: a Content
API outage must not stop valid sends (Twilio itself would still refuse a bad template),
so the pre-flight degrades to what it can check and the source counts the fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from notifier.domain.errors import ValidationFailed, Violation
from notifier.domain.ports import TemplateSource
from notifier.domain.templates import TemplateUnavailable, check_against
from notifier.domain.validation import CONTENT_SID

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TemplatePreflight:
    source: TemplateSource | None = None  # None: local rules only (the default)

    async def violations(
        self, content_sid: str | None, variables: Mapping[str, str]
    ) -> list[Violation]:
        """What the template source says is wrong; nothing without a source, without a
        well-formed SID (the local rules name that one) or when the source is down."""
        if self.source is None or not content_sid or not CONTENT_SID.match(content_sid):
            return []
        try:
            template = await self.source.template(content_sid)
        except TemplateUnavailable as exc:
            log.warning("template check by local rules only: %s", exc)
            return []
        if template is None:
            return [Violation("content_sid", "no such template in the Twilio account")]
        bad: list[Violation] = []
        check_against(variables, template.placeholders, bad)
        return bad

    async def checked(
        self, validate: Callable[[], T], content_sid: str | None, variables: Mapping[str, str]
    ) -> T:
        """``validate()``'s result, or ValidationFailed with its violations and the
        template's together (a variable already named by the local rules is not named
        twice)."""
        remote = await self.violations(content_sid, variables)
        try:
            result = validate()
        except ValidationFailed as exc:
            named = {v.field for v in exc.violations}
            raise ValidationFailed(
                [*exc.violations, *(v for v in remote if v.field not in named)]
            ) from None
        if remote:
            raise ValidationFailed(remote)
        return result
