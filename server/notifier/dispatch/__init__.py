"""The dispatcher: takes due messages from the outbox and hands them to Twilio."""
