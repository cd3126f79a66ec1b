"""The gRPC API layer: protobuf to domain types and back, and error mapping."""
