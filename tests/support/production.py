"""A complete production configuration, and the secrets in it that must never be
printed."""

from __future__ import annotations

from notifier.api.auth import token_digest

AUTH_TOKEN = "f00dfeedf00dfeedf00dfeedf00dfeed"
API_SECRET = "apisecret-do-not-print-0123456789"
CALLER_TOKEN = "caller-token-do-not-print"
SECRETS = (AUTH_TOKEN, API_SECRET, CALLER_TOKEN)
SID = "AC" + "1" * 32
KEY = "SK" + "2" * 32
PRODUCTION = {
    "NOTIFIER_ENV": "production",
    "TWILIO_ACCOUNT_SID": SID,
    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
    "TWILIO_API_KEY": KEY,
    "TWILIO_API_SECRET": API_SECRET,
    "TWILIO_MESSAGING_SERVICE_SID": "MG" + "3" * 32,
    "NOTIFIER_API_TOKENS": token_digest(CALLER_TOKEN),
    "STATUS_CALLBACK_URL": "https://notify.example.com/api/v1/whatsapp/status",
    "WEBHOOK_URL": "https://notify.example.com/api/v1/whatsapp/webhook",
}
