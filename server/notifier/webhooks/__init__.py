"""The webhook sidecar: Twilio's status callbacks and inbound messages, health, metrics."""
