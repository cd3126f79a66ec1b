"""The emulator's Content API: ``GET /v1/Content/{Sid}`` for a few fixed templates.

Notifier's template pre-flight (NOTIFIER_TEMPLATE_CHECK=twilio) fetches templates from
here in development and tests. An unknown SID answers 404 as Twilio does (code 20404).
Admin routes (no auth, like the others):

- ``GET /_emulator/content``: fetches per SID and the outage status, if any
- ``POST /_emulator/content``: ``{"outage": 503}`` answers every fetch with that HTTP
  status (a Content API outage, or 401 for refused credentials); ``{"outage": null}``
  ends it
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CONTENT_PATH = "/v1/Content/{Sid}"

# Three templates: plain text with two variables, a call-to-action with a variable in
# its button URL, and a greeting without variables.
ORDER_CONFIRMED = "HX" + "0c" * 16
APPOINTMENT = "HX" + "a9" * 16
WELCOME = "HX" + "3e" * 16

TEMPLATES: dict[str, dict[str, Any]] = {
    ORDER_CONFIRMED: {
        "friendly_name": "order_confirmed",
        "variables": {"1": "Ana", "2": "A-1001"},
        "types": {"twilio/text": {"body": "Hi {{1}}, your order {{2}} is confirmed."}},
    },
    APPOINTMENT: {
        "friendly_name": "appointment_reminder",
        "variables": {"1": "Dr. Ruiz", "2": "Mon 3 Aug, 10:00", "3": "b-42"},
        "types": {
            "twilio/call-to-action": {
                "body": "Your appointment with {{1}} is on {{2}}.",
                "actions": [
                    {"type": "URL", "title": "Manage", "url": "https://example.com/b/{{3}}"}
                ],
            },
            "twilio/text": {"body": "Your appointment with {{1}} is on {{2}}."},
        },
    },
    WELCOME: {
        "friendly_name": "welcome",
        "variables": {},
        "types": {"twilio/text": {"body": "Welcome! Reply HELP for options."}},
    },
}

_OUTAGE_MESSAGES = {401: "Authenticate", 403: "Forbidden"}


class ContentApi:
    """The templates' resources, what was fetched, and an optional outage."""

    def __init__(self, account_sid: str) -> None:
        self.account_sid = account_sid
        self.fetches: Counter[str] = Counter()
        self.outage: int | None = None

    def clear(self) -> None:
        self.fetches.clear()
        self.outage = None

    def resource(self, sid: str) -> dict[str, Any] | None:
        template = TEMPLATES.get(sid)
        if template is None:
            return None
        return {
            "sid": sid,
            "account_sid": self.account_sid,
            "language": "en",
            "date_created": "2026-01-05T10:00:00Z",
            "date_updated": "2026-01-05T10:00:00Z",
            "url": f"https://content.twilio.com/v1/Content/{sid}",
            "links": {},
            **template,
        }


def _error(status: int, code: int, message: str) -> JSONResponse:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status)


def content_routes(api: ContentApi, authorized: Callable[[Request], bool]) -> list[Route]:
    """The Content API route and its admin routes; ``authorized(request)`` checks HTTP
    Basic auth as the Messages API does."""

    async def fetch(request: Request) -> Response:
        sid = request.path_params["Sid"]
        api.fetches[sid] += 1  # as it arrives, answered or not
        if api.outage is not None:
            return _error(api.outage, 20500, _OUTAGE_MESSAGES.get(api.outage, "Internal error"))
        if not authorized(request):
            return _error(401, 20003, "Authenticate")
        found = api.resource(sid)
        if found is None:
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        return JSONResponse(found)

    async def show(request: Request) -> Response:
        return JSONResponse({"fetches": dict(api.fetches), "outage": api.outage})

    async def configure(request: Request) -> Response:
        try:
            outage = json.loads(await request.body()).get("outage")
        except (ValueError, AttributeError):
            return JSONResponse({"errors": ['expected {"outage": <HTTP status> or null}']}, 400)
        if outage is not None and not (isinstance(outage, int) and 400 <= outage <= 599):
            return JSONResponse({"errors": ["outage must be an HTTP error status or null"]}, 400)
        api.outage = outage
        return await show(request)

    return [
        Route(CONTENT_PATH, fetch, methods=["GET"]),
        Route("/_emulator/content", show, methods=["GET"]),
        Route("/_emulator/content", configure, methods=["POST"]),
    ]
