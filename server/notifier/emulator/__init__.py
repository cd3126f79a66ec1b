"""A local stand-in for Twilio's Messages API.

It speaks the Messages create call the way Twilio does (form-encoded request, HTTP Basic
auth, Twilio's error JSON, the message resource, signed status callbacks), so the
official ``twilio`` SDK works against it unchanged. Development (``make run`` without
credentials) and the tests use it instead of the real service; faults can be switched on
at runtime to rehearse what Twilio does on a bad day.

Modules: ``faults`` (what can go wrong, seeded), ``state`` (what was received and sent),
``callbacks`` (signed status callbacks), ``app`` (the HTTP API), ``server`` (run it).
This module only holds the development credentials, so importing it is cheap.
"""

from __future__ import annotations

DEV_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEV_AUTH_TOKEN = "e" * 32
DEV_FROM = "whatsapp:+14155238886"
DEV_MESSAGING_SERVICE_SID = "MG" + "0123456789abcdef" * 2
