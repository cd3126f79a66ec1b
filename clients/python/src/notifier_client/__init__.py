"""Typed asyncio client for the Notifier gRPC service."""
