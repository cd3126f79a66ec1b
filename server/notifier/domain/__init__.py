"""The domain: messages, statuses, validation. Knows nothing of gRPC, HTTP or SQL."""
