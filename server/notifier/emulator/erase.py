"""Twilio's DELETE of a message and its redaction (POST Body=""), as EraseRecipient
(issue 15) uses them; apart from app.py so the emulator's other work merges cleanly."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from notifier.emulator.state import AcceptedMessage, EmulatorState

# Statuses in which Twilio still works on a message: it may not be deleted, only redacted.
IN_FLIGHT = ("queued", "accepted", "sending", "scheduled")


# app.py's twilio_error(code, message=None): Twilio's error body, passed in (app.py imports
# this module).
ErrorAnswer = Callable[..., Response]


class _EraseHandlers:
    def __init__(
        self, state: EmulatorState, authorized: Callable[[Request], bool], error: ErrorAnswer
    ) -> None:
        self._state = state
        self._authorized = authorized
        self._error = error

    def _target(self, request: Request) -> AcceptedMessage | Response:
        """The message the path names, or Twilio's error answer."""
        if not self._authorized(request):
            return self._error(20003)
        message = self._state.message(request.path_params["MessageSid"])
        if message is None or message.account_sid != request.path_params["AccountSid"]:
            return self._error(20404, f"The requested resource {request.url.path} was not found")
        return message

    async def delete_message(self, request: Request) -> Response:
        """DELETE .../Messages/{Sid}.json: 204, or 404 for an unknown message. Twilio
        refuses a message still in flight (queued, accepted, sending): error 20009."""
        message = self._target(request)
        if isinstance(message, Response):
            return message
        if message.status in IN_FLIGHT:
            return self._error(20009, "Cannot delete message because delivery has not completed")
        self._state.forget(message.sid)
        return Response(status_code=204)

    async def update_message(self, request: Request) -> Response:
        """POST .../Messages/{Sid}.json with Body="": the body redacted (the only update
        this emulator takes, the one Notifier's EraseRecipient makes)."""
        message = self._target(request)
        if isinstance(message, Response):
            return message
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        if form.get("Body") != "":
            return self._error(21218, 'Only Body="" (redaction) is supported')
        message.body = ""
        return JSONResponse(message.to_resource())


def erase_routes(
    path: str, state: EmulatorState, authorized: Callable[[Request], bool], error: ErrorAnswer
) -> list[Route]:
    """DELETE and POST on one message's ``path``."""
    handlers = _EraseHandlers(state, authorized, error)
    return [
        Route(path, handlers.delete_message, methods=["DELETE"]),
        Route(path, handlers.update_message, methods=["POST"]),
    ]
