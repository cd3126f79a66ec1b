"""A SendBulk stream as a busy caller sends it: numbered items, one in ten with a bad
number and one in twenty-five with a body over the limit, 100 items a request."""

from __future__ import annotations

from collections.abc import Iterator

from notifier_proto.v1 import notifier_pb2 as pb


def bulk_item(i: int) -> pb.BulkItem:
    if i % 10 == 3:
        return pb.BulkItem(correlation_id=f"c{i}", to="12345", body=f"m{i}")  # bad number
    if i % 25 == 7:
        return pb.BulkItem(correlation_id=f"c{i}", to="+14155550100", body="x" * 1601)
    return pb.BulkItem(correlation_id=f"c{i}", to="+14155550100", body=f"m{i}")


def bulk_requests(total: int, per_request: int = 100) -> Iterator[pb.SendBulkRequest]:
    for start in range(0, total, per_request):
        yield pb.SendBulkRequest(items=[bulk_item(i) for i in range(start, start + per_request)])
